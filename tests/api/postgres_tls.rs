//! PostgreSQL over TLS (`sslmode=require`, `verify-full`) with the bundled
//! libpq, against a private throwaway cluster: `initdb` and `pg_ctl` from the
//! PostgreSQL server binaries on this machine, on a free port, with `ssl = on`,
//! a certificate made for the test and `hostnossl … reject`, so a connection
//! that is not TLS is refused. The shared server is not touched. Without the
//! binaries (or, as root, without a `postgres` user to run them as) the test
//! prints why and passes; a cluster that is there but fails to start fails it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use diesel::{Connection, PgConnection, RunQueryDsl, sql_types::Bool};
use minicrm::{config::Settings, proto as pb};

use crate::{
    helpers::TestServer,
    security::{ApiProcess, ServerProcess},
    tls::{TestCa, write},
};

/// `MINICRM_PG_BIN`, or the newest `/usr/lib/postgresql/*/bin` with initdb.
fn server_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MINICRM_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists(),
            "MINICRM_PG_BIN={} has no initdb",
            dir.display()
        );
        return Some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A PostgreSQL cluster of this test's own, stopped and deleted when dropped.
struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// initdb and postgres refuse to run as root: run them as this user.
    run_as: Option<String>,
}

impl PrivateCluster {
    /// `Err(why)` when it cannot be run on this machine.
    fn start(ca: &TestCa) -> Result<Self, String> {
        let bin = server_binaries()
            .ok_or("no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin; set MINICRM_PG_BIN")?;
        let root = command_output("id", &["-u"]).as_deref() == Some("0");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let run_as = if root {
            let uid = command_output("id", &["-u", "postgres"])
                .ok_or("running as root and there is no postgres user to run initdb as")?;
            let gid = command_output("id", &["-g", "postgres"]).unwrap();
            if command_output("runuser", &["--help"]).is_none() {
                return Err("running as root and runuser is missing".into());
            }
            std::os::unix::fs::chown(dir.path(), uid.parse().ok(), gid.parse().ok())
                .map_err(|e| e.to_string())?;
            Some("postgres".to_owned())
        } else {
            None
        };

        let server = ca.server();
        let cert = write(dir.path(), "server.crt", &server.cert_pem);
        let key = write(dir.path(), "server.key", &server.key_pem);
        for file in [&cert, &key] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
            if root {
                let uid = command_output("id", &["-u", "postgres"]).unwrap();
                std::os::unix::fs::chown(file, uid.parse().ok(), None).unwrap();
            }
        }

        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            run_as,
        };
        let data = cluster.data();
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
            )
            .unwrap_or_else(|error| panic!("initdb failed: {error}"));
        // TLS only over TCP: `hostnossl … reject`. 127.0.0.2 is served too,
        // a name the certificate does not carry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.0/8 trust\n\
             hostnossl all all 127.0.0.0/8 reject\n",
        )
        .unwrap();

        let mut last_error = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            let settings = format!(
                "\n# minicrm test\n\
                 listen_addresses = '127.0.0.1,127.0.0.2'\n\
                 port = {port}\n\
                 unix_socket_directories = '{dir}'\n\
                 ssl = on\n\
                 ssl_cert_file = '{cert}'\n\
                 ssl_key_file = '{key}'\n\
                 max_connections = 50\n\
                 shared_buffers = 16MB\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n",
                port = cluster.port,
                dir = cluster.dir.path().display(),
                cert = cert.display(),
                key = key.display(),
            );
            let conf = data.join("postgresql.auto.conf");
            std::fs::write(&conf, settings).unwrap();
            let log = cluster.dir.path().join("postgres.log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(_) => return Ok(cluster),
                Err(error) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = format!("{error}\n{log}");
                }
            }
        }
        panic!("the private PostgreSQL cluster did not start: {last_error}");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(format!(
                "{} {args:?}: {}\n{}{}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(diesel::QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Connects with the bundled libpq; `Ok(true)` when the session is TLS.
fn connect(url: &str) -> Result<bool, String> {
    let mut connection = PgConnection::establish(url).map_err(|e| e.to_string())?;
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut connection)
        .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_sslmode_require_and_verify_full() {
    let ca = TestCa::new("minicrm test PostgreSQL CA");
    let cluster = match PrivateCluster::start(&ca) {
        Ok(cluster) => cluster,
        Err(why) => {
            eprintln!("skipped: PostgreSQL over TLS needs a private cluster: {why}");
            return;
        }
    };
    let dir = cluster.dir.path().to_owned();
    let ca_file = write(&dir, "ca.crt", &ca.cert_pem);
    let stranger_file = write(&dir, "stranger.crt", &TestCa::new("another CA").cert_pem);
    let root_cert = |file: &Path| format!("sslrootcert={}", file.display());

    // Not TLS: refused by the cluster (hostnossl reject), so every success
    // below is over TLS.
    let refused = connect(&cluster.url("127.0.0.1", "sslmode=disable")).unwrap_err();
    assert!(refused.contains("no encryption"), "{refused}");

    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=require")),
        Ok(true)
    );
    let verify_full = |host: &str, ca: &Path| {
        connect(&cluster.url(host, &format!("sslmode=verify-full&{}", root_cert(ca))))
    };
    assert_eq!(verify_full("127.0.0.1", &ca_file), Ok(true));
    assert_eq!(verify_full("localhost", &ca_file), Ok(true));
    // verify-full checks the chain and the name.
    let refused = verify_full("127.0.0.1", &stranger_file).unwrap_err();
    assert!(refused.contains("certificate verify failed"), "{refused}");
    let refused = verify_full("127.0.0.2", &ca_file).unwrap_err();
    assert!(refused.contains("does not match host name"), "{refused}");
    let verify_ca = format!("sslmode=verify-ca&{}", root_cert(&ca_file));
    assert_eq!(connect(&cluster.url("127.0.0.2", &verify_ca)), Ok(true));

    // minicrm itself over each: migrates, serves, writes and reads.
    for url in [
        cluster.url("127.0.0.1", "sslmode=require"),
        cluster.url(
            "localhost",
            &format!("sslmode=verify-full&{}", root_cert(&ca_file)),
        ),
    ] {
        let server = TestServer::start(&Settings {
            listen: "127.0.0.1:0".into(),
            database_url: url.clone(),
            ..Settings::default()
        })
        .await;
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut operators = pb::operator_service_client::OperatorServiceClient::new(channel);
        let created = operators
            .create_operator(pb::CreateOperatorRequest {
                name: "Ann".into(),
                max_load: 1,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("{url}: {status:?}"))
            .into_inner();
        let read = operators
            .get_operator(pb::GetOperatorRequest { id: created.id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.name, "Ann");
        server.stop().await;
    }

    // The binary, with libpq's `sslrootcert=system`: the vendored OpenSSL's
    // default trust store is /usr/local/ssl, so SSL_CERT_FILE names the CAs.
    let url = cluster.url("localhost", "sslmode=verify-full&sslrootcert=system");
    let mut process = ServerProcess::start_with_env(
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &dir,
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    process.wait_until_serving();
    process.signal("TERM");
    let status = process.exited_within(Duration::from_secs(15));
    assert!(
        status.success(),
        "minicrm exited with {status} after SIGTERM; the log:\n{}",
        process.log()
    );
}
