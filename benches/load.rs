//! Load benchmark: starts the real `minicrm` binary (release build) on a fresh
//! database, seeds it, drives it with N concurrent in-flight calls over a few
//! HTTP/2 connections, and prints one table. Then checks the invariant.
//!
//! ```text
//! cargo bench --bench load -- [--concurrency 1,16,64] [--seconds 5] [--warmup 1]
//!     [--postgres URL] [--leads N] [--contacts N] [--connections 4] [--scenarios a,b]
//! ```

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use diesel::{
    Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection,
    connection::SimpleConnection, sql_types::BigInt,
};
use minicrm::{
    domain::page_token_after,
    proto::{
        self as pb, contact_service_client::ContactServiceClient,
        operator_service_client::OperatorServiceClient, source_service_client::SourceServiceClient,
    },
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SCENARIOS: &[&str] = &[
    "noop",
    "register",
    "register-full",
    "close+dispatch",
    "stats",
    "list",
];
/// Phones of leads the benchmark creates up front, for "existing lead" calls
/// when `--leads` is 0.
const WARM_LEADS: u64 = 1_000;
const SEED_PHONE_BASE: u64 = 2_000_000_000;
const NEW_PHONE_BASE: u64 = 5_000_000_000;
const CLOSE_OPERATOR_LOAD: i64 = 100;

struct Args {
    concurrency: Vec<usize>,
    seconds: f64,
    warmup: f64,
    postgres: Option<String>,
    leads: u64,
    contacts: u64,
    connections: usize,
    scenarios: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        concurrency: vec![1, 16, 64],
        seconds: 5.0,
        warmup: 1.0,
        postgres: None,
        leads: 0,
        contacts: 0,
        connections: 4,
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--concurrency" => {
                args.concurrency = value()
                    .split(',')
                    .map(|n| n.trim().parse().expect("--concurrency: numbers"))
                    .collect()
            }
            "--seconds" => args.seconds = value().parse().expect("--seconds: a number"),
            "--warmup" => args.warmup = value().parse().expect("--warmup: a number"),
            "--postgres" => args.postgres = Some(value()),
            "--leads" => args.leads = value().parse().expect("--leads: a number"),
            "--contacts" => args.contacts = value().parse().expect("--contacts: a number"),
            "--connections" => args.connections = value().parse().expect("--connections"),
            "--scenarios" => args.scenarios = value().split(',').map(str::to_owned).collect(),
            // cargo bench passes --bench to every benchmark binary.
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The database the server under test uses, removed afterwards.
enum BenchDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl BenchDb {
    fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("bench.db").display()),
            Self::Postgres { admin_url, name } => {
                let (server, _) = admin_url
                    .rsplit_once('/')
                    .expect("postgres url with a database");
                format!("{server}/{name}")
            }
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    fn connect(&self) -> Sql {
        match self {
            Self::Sqlite(dir) => {
                let mut c =
                    SqliteConnection::establish(&dir.path().join("bench.db").to_string_lossy())
                        .expect("open the SQLite file");
                c.batch_execute("PRAGMA busy_timeout = 30000").unwrap();
                Sql::Sqlite(c)
            }
            Self::Postgres { .. } => {
                Sql::Postgres(PgConnection::establish(&self.url()).expect("connect"))
            }
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin);
        }
    }
}

enum Sql {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Sql {
    fn run(&mut self, sql: &str) {
        match self {
            Self::Sqlite(c) => c.batch_execute(sql),
            Self::Postgres(c) => c.batch_execute(sql),
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    fn count(&mut self, sql: &str) -> i64 {
        let rows: Vec<Count> = match self {
            Self::Sqlite(c) => diesel::sql_query(sql).load(c),
            Self::Postgres(c) => diesel::sql_query(sql).load(c),
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
        rows.first().map_or(0, |row| row.n)
    }

    fn ids(&mut self, sql: &str) -> Vec<i64> {
        let rows: Vec<Count> = match self {
            Self::Sqlite(c) => diesel::sql_query(sql).load(c),
            Self::Postgres(c) => diesel::sql_query(sql).load(c),
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
        rows.into_iter().map(|row| row.n).collect()
    }

    /// Whether the schema keeps stats counters (it does from the second migration on).
    fn has_counters(&mut self) -> bool {
        let sql = match self {
            Self::Sqlite(_) => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'contact_counts'"
            }
            Self::Postgres(_) => {
                "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'contact_counts'"
            }
        };
        self.count(sql) > 0
    }

    /// `SELECT expr FROM numbers(1..=n)` in each dialect, as an INSERT source.
    fn series(&self, n: u64, columns: &str) -> String {
        match self {
            Self::Sqlite(_) => format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 SELECT {columns} FROM s"
            ),
            Self::Postgres(_) => format!("SELECT {columns} FROM generate_series(1, {n}) AS s(i)"),
        }
    }
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(db: &BenchDb) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        // For profiling: MINICRM_BENCH_WRAPPER="valgrind --tool=callgrind" runs
        // the server under that command (figures are then meaningless).
        let wrapper = std::env::var("MINICRM_BENCH_WRAPPER").unwrap_or_default();
        let mut words = wrapper
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        words.push(env!("CARGO_BIN_EXE_minicrm").to_owned());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["--listen", &address, "--database-url", &db.url()])
            .env(
                "RUST_LOG",
                std::env::var("MINICRM_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start minicrm");
        Self { child, address }
    }

    /// Peak resident set since the last reset, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    fn reset_peak_rss(&self) {
        // "5" resets the peak RSS (VmHWM) to the current RSS.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
struct Clients {
    channels: Vec<Channel>,
}

impl Clients {
    async fn connect(address: &str, connections: usize) -> Self {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(
                Channel::from_shared(format!("http://{address}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        Self { channels }
    }

    fn channel(&self, worker: usize) -> Channel {
        self.channels[worker % self.channels.len()].clone()
    }

    fn contacts(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel(0))
    }
}

/// What the scenarios work on, created before the timed runs.
struct Fixture {
    register_source: i64,
    full_source: i64,
    close_ids: Arc<Vec<i64>>,
    close_next: Arc<AtomicUsize>,
    deep_token: String,
    existing_leads: u64,
    existing_phone_base: u64,
}

async fn wait_until_serving(address: &str) {
    for _ in 0..1200 {
        if let Ok(channel) = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            && HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("minicrm did not start on {address}");
}

async fn operators_for(
    clients: &Clients,
    bot_id: &str,
    count: i32,
    max_load: i32,
    weight: impl Fn(i32) -> i32,
) -> (i64, Vec<i64>) {
    let mut operators = OperatorServiceClient::new(clients.channel(0));
    let mut sources = SourceServiceClient::new(clients.channel(0));
    let source = sources
        .create_source(pb::CreateSourceRequest {
            bot_id: bot_id.into(),
            name: bot_id.into(),
        })
        .await
        .expect("create source")
        .into_inner();
    let mut ids = Vec::new();
    let mut table = Vec::new();
    for index in 1..=count {
        let op = operators
            .create_operator(pb::CreateOperatorRequest {
                name: format!("{bot_id}-{index}"),
                is_active: Some(true),
                max_load,
            })
            .await
            .expect("create operator")
            .into_inner();
        table.push(pb::OperatorWeight {
            operator_id: op.id,
            weight: weight(index),
        });
        ids.push(op.id);
    }
    sources
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: table,
        })
        .await
        .expect("set weights");
    (source.id, ids)
}

/// Rebuilds the counters the server keeps for GetOperatorStats after rows
/// were inserted behind its back.
fn recount(sql: &mut Sql) {
    if !sql.has_counters() {
        return;
    }
    sql.run(
        "DELETE FROM contact_counts; DELETE FROM pending_counts;
         INSERT INTO contact_counts (operator_id, source_id, active, closed, total)
           SELECT so.operator_id, so.source_id,
                  (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id AND c.status = 1),
                  (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id AND c.status = 3),
                  (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id)
           FROM source_operators so;
         INSERT INTO pending_counts (source_id, pending)
           SELECT s.id, (SELECT COUNT(*) FROM contacts c WHERE c.source_id = s.id AND c.status = 2) FROM sources s;",
    );
}

async fn prepare(args: &Args, db: &BenchDb, clients: &Clients) -> Fixture {
    let started = Instant::now();
    let ample = 1_000_000_000;
    let (register_source, register_ops) =
        operators_for(clients, "bench-register", 10, ample, |i| i).await;
    let (full_source, _) = operators_for(clients, "bench-full", 10, 0, |i| i).await;
    let (close_source, close_ops) = operators_for(
        clients,
        "bench-close",
        10,
        CLOSE_OPERATOR_LOAD as i32,
        |_| 1,
    )
    .await;

    let mut sql = db.connect();
    let now = "1700000000000000";
    // Pre-existing leads (and the warm pool when none are asked for).
    let leads = if args.leads > 0 {
        args.leads
    } else {
        WARM_LEADS
    };
    sql.run(&format!(
        "INSERT INTO leads (phone, name, created_at) {}",
        sql.series(leads, &format!("'+' || ({SEED_PHONE_BASE} + i), '', {now}"))
    ));
    let first_lead = sql.count("SELECT MIN(id) AS n FROM leads");
    // Pre-existing contacts: closed, spread over the register source's operators.
    if args.contacts > 0 {
        let ops = register_ops.len() as u64;
        let first_op = register_ops[0];
        sql.run(&format!(
            "INSERT INTO contacts (lead_id, source_id, operator_id, status, created_at, assigned_at, closed_at, lead_created) {}",
            sql.series(
                args.contacts,
                &format!(
                    "{first_lead} + (i % {leads}), {register_source}, {first_op} + (i % {ops}), 3, {now}, {now}, {now}, false"
                )
            )
        ));
    }
    // close+dispatch: every slot of the close source is taken, and enough
    // contacts wait that each close in the run hands its slot on.
    let slots = close_ops.len() as u64 * CLOSE_OPERATOR_LOAD as u64;
    let levels = args.concurrency.len() as u64;
    let waiting = (25_000.0 * (args.seconds + args.warmup)) as u64 * levels;
    let first_close_op = close_ops[0];
    let ops = close_ops.len() as u64;
    sql.run(&format!(
        "INSERT INTO contacts (lead_id, source_id, operator_id, status, created_at, assigned_at, lead_created) {}",
        sql.series(
            slots,
            &format!("{first_lead} + (i % {leads}), {close_source}, {first_close_op} + (i % {ops}), 1, {now}, {now}, false")
        )
    ));
    sql.run(&format!(
        "INSERT INTO contacts (lead_id, source_id, status, created_at, lead_created) {}",
        sql.series(
            waiting,
            &format!("{first_lead} + (i % {leads}), {close_source}, 2, {now}, false")
        )
    ));
    sql.run(&format!(
        "UPDATE operators SET active_load = {CLOSE_OPERATOR_LOAD} WHERE id BETWEEN {} AND {}",
        close_ops[0],
        close_ops[close_ops.len() - 1]
    ));
    recount(&mut sql);
    if let Sql::Postgres(_) = sql {
        // Vacuum now, or autovacuum does it on the seeded rows during the run.
        sql.run("VACUUM ANALYZE");
    }
    let close_ids = sql.ids(&format!(
        "SELECT id AS n FROM contacts WHERE source_id = {close_source} ORDER BY id"
    ));
    let max_id = sql.count("SELECT COALESCE(MAX(id), 0) AS n FROM contacts");
    eprintln!(
        "seeded in {:.1}s: {leads} leads, {} closed contacts, {slots} active + {waiting} pending for close+dispatch",
        started.elapsed().as_secs_f64(),
        args.contacts
    );
    Fixture {
        register_source,
        full_source,
        close_ids: Arc::new(close_ids),
        close_next: Arc::new(AtomicUsize::new(0)),
        deep_token: page_token_after(max_id / 2),
        existing_leads: leads,
        existing_phone_base: SEED_PHONE_BASE + 1,
    }
}

#[derive(Default)]
struct Measured {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// One call of the scenario; `n` numbers the calls of the whole run.
async fn call(
    scenario: &str,
    channel: Channel,
    fixture: &Fixture,
    n: u64,
    run: u64,
) -> Result<(), String> {
    let register = |source_id: i64| {
        // Half the calls come from new people, half from known ones.
        let phone = if n.is_multiple_of(2) {
            NEW_PHONE_BASE + run * 100_000_000 + n
        } else {
            fixture.existing_phone_base + (n / 2) % fixture.existing_leads
        };
        pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source_id)),
            lead: Some(pb::LeadIdentity {
                phone: format!("+{phone}"),
                ..Default::default()
            }),
            request_id: format!("bench-{run}-{n}"),
        }
    };
    let outcome = match scenario {
        "noop" => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop),
        "register" => ContactServiceClient::new(channel)
            .register_contact(register(fixture.register_source))
            .await
            .map(drop),
        "register-full" => ContactServiceClient::new(channel)
            .register_contact(register(fixture.full_source))
            .await
            .map(drop),
        "close+dispatch" => {
            let index = fixture.close_next.fetch_add(1, Ordering::Relaxed);
            let Some(&id) = fixture.close_ids.get(index) else {
                return Err("ran out of contacts to close".into());
            };
            ContactServiceClient::new(channel)
                .close_contact(pb::CloseContactRequest { id })
                .await
                .map(drop)
        }
        "stats" => ContactServiceClient::new(channel)
            .get_operator_stats(pb::GetOperatorStatsRequest {})
            .await
            .map(drop),
        "list" => ContactServiceClient::new(channel)
            .list_contacts(pb::ListContactsRequest {
                page_size: 100,
                page_token: fixture.deep_token.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        other => panic!("unknown scenario {other}"),
    };
    outcome.map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

async fn run_scenario(
    scenario: &'static str,
    concurrency: usize,
    args: &Args,
    clients: &Clients,
    fixture: &Arc<Fixture>,
    run: u64,
) -> (Measured, f64) {
    let counter = Arc::new(AtomicU64::new(0));
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.seconds);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let channel = clients.channel(worker);
        let fixture = Arc::clone(fixture);
        let counter = Arc::clone(&counter);
        workers.push(tokio::spawn(async move {
            let mut measured = Measured::default();
            loop {
                let started = Instant::now();
                if started >= end {
                    return measured;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let outcome = call(scenario, channel.clone(), &fixture, n, run).await;
                if started < warm_end {
                    continue;
                }
                match outcome {
                    Ok(()) => measured
                        .latencies_us
                        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(error) => {
                        measured.errors += 1;
                        measured.first_error.get_or_insert(error);
                        // A failing call would otherwise spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }));
    }
    let mut total = Measured::default();
    for worker in workers {
        let measured = worker.await.expect("worker");
        total.latencies_us.extend(measured.latencies_us);
        total.errors += measured.errors;
        if total.first_error.is_none() {
            total.first_error = measured.first_error;
        }
    }
    total.latencies_us.sort_unstable();
    let per_second = total.latencies_us.len() as f64 / args.seconds;
    (total, per_second)
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
}

/// The invariant, from the database itself: every operator's `active_load`
/// equals its ACTIVE contacts, none is over `max_load`, and the stats
/// counters agree with the rows they count.
fn check_invariant(sql: &mut Sql) -> Result<String, String> {
    let operators = sql.count("SELECT COUNT(*) AS n FROM operators");
    let wrong_load = sql.count(
        "SELECT COUNT(*) AS n FROM operators o WHERE o.active_load <> \
         (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = o.id AND c.status = 1)",
    );
    let over = sql.count("SELECT COUNT(*) AS n FROM operators WHERE active_load > max_load");
    let counters = sql.has_counters();
    let wrong_counts = if !counters {
        0
    } else {
        sql.count(
        "SELECT COUNT(*) AS n FROM contact_counts k WHERE k.active <> \
         (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = k.operator_id AND c.source_id = k.source_id AND c.status = 1) \
         OR k.total <> (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = k.operator_id AND c.source_id = k.source_id)",
    )
    };
    let wrong_pending = if !counters {
        0
    } else {
        sql.count(
            "SELECT COUNT(*) AS n FROM pending_counts p WHERE p.pending <> \
         (SELECT COUNT(*) FROM contacts c WHERE c.source_id = p.source_id AND c.status = 2)",
        )
    };
    let contacts = sql.count("SELECT COUNT(*) AS n FROM contacts");
    if wrong_load == 0 && over == 0 && wrong_counts == 0 && wrong_pending == 0 {
        Ok(format!(
            "OK: {operators} operators, {contacts} contacts; every active_load equals its ACTIVE count, none over max_load, stats counters exact"
        ))
    } else {
        Err(format!(
            "VIOLATED: {wrong_load} operators with a wrong active_load, {over} over max_load, \
             {wrong_counts} wrong pair counters, {wrong_pending} wrong pending counters"
        ))
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = match &args.postgres {
        Some(url) => {
            let name = format!("minicrm_bench_{}", std::process::id());
            let mut admin = PgConnection::establish(url).expect("connect to --postgres");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .unwrap();
            BenchDb::Postgres {
                admin_url: url.clone(),
                name,
            }
        }
        None => BenchDb::Sqlite(tempfile::tempdir().expect("temp dir")),
    };
    let server = Server::start(&db);
    let violated = runtime.block_on(async {
        wait_until_serving(&server.address).await;
        let clients = Clients::connect(&server.address, args.connections).await;
        let fixture = Arc::new(prepare(&args, &db, &clients).await);
        let _ = clients.contacts();

        let mut table = String::new();
        writeln!(
            table,
            "| scenario | backend | concurrency | calls/s | p50 ms | p99 ms | p99.9 ms | errors | server peak RSS MiB |"
        )
        .unwrap();
        writeln!(table, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |").unwrap();
        let mut run = 0;
        let scenarios: Vec<&'static str> = SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.scenarios.iter().any(|wanted| wanted == s))
            .collect();
        for scenario in scenarios {
            for &concurrency in &args.concurrency {
                run += 1;
                server.reset_peak_rss();
                let (measured, per_second) =
                    run_scenario(scenario, concurrency, &args, &clients, &fixture, run).await;
                let row = format!(
                    "| {scenario} | {} | {concurrency} | {per_second:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
                    db.backend(),
                    percentile_ms(&measured.latencies_us, 0.50),
                    percentile_ms(&measured.latencies_us, 0.99),
                    percentile_ms(&measured.latencies_us, 0.999),
                    measured.errors,
                    server.peak_rss_mib(),
                );
                eprintln!("{row}");
                if let Some(error) = measured.first_error {
                    eprintln!("  first error: {error}");
                }
                writeln!(table, "{row}").unwrap();
            }
        }
        println!("\n{table}");
        let verdict = check_invariant(&mut db.connect());
        match &verdict {
            Ok(message) => println!("invariant: {message}"),
            Err(message) => println!("invariant: {message}"),
        }
        verdict.is_err()
    });
    drop(server);
    drop(db);
    if violated {
        std::process::exit(1);
    }
}
