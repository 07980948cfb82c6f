//! The real `minicrm` binary as a child process.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use minicrm::proto::{
    contact_service_client::ContactServiceClient, operator_service_client::OperatorServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The binary under test, copied once per test process: with a target
/// directory shared between checkouts, `target/debug/minicrm` may be
/// replaced by another checkout's build while these tests run.
pub fn binary() -> &'static Path {
    static COPY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("minicrm");
        std::fs::copy(env!("CARGO_BIN_EXE_minicrm"), &path).expect("copy the binary");
        (dir, path)
    });
    path
}

/// Runs `minicrm ARGS` (a tool: check, backup) to completion.
pub fn tool(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run minicrm")
}

pub struct Server {
    child: Child,
    pub channel: Channel,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `minicrm --listen 127.0.0.1:0 --database-url URL ARGS` and
    /// waits until it answers SERVING.
    pub async fn start(database_url: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start minicrm");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if line.contains("serving gRPC")
                        && let Some(address) = line
                            .split_whitespace()
                            .find_map(|word| word.strip_prefix("address="))
                    {
                        let _ = found.send(address.to_owned());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let address: SocketAddr =
            tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(60)))
                .await
                .unwrap()
                .unwrap_or_else(|_| {
                    panic!("minicrm did not start: {}", log.lock().unwrap().join("\n"))
                })
                .parse()
                .expect("address");
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let server = Self {
            child,
            channel,
            log,
        };
        server
            .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
            .await;
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn contacts(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel.clone())
    }

    pub fn operators(&self) -> OperatorServiceClient<Channel> {
        OperatorServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// The overall health ("" service), or the error of asking.
    pub async fn health_status(&self) -> Result<i32, tonic::Code> {
        self.health()
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status)
            .map_err(|status| status.code())
    }

    pub async fn wait_for_health(&self, wanted: ServingStatus, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.health_status().await == Ok(wanted as i32) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "no {wanted:?} within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -TERM`.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if started.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn ansi_codes_are_stripped() {
    assert_eq!(
        strip_ansi(
            "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m address\u{1b}[2m=\u{1b}[0m1.2.3.4:5"
        ),
        "2026  INFO address=1.2.3.4:5"
    );
}
