use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use diesel::{
    Connection, PgConnection, QueryResult, QueryableByName, RunQueryDsl, SqliteConnection,
    connection::SimpleConnection,
    r2d2::{CustomizeConnection, R2D2Connection},
    sql_types::Integer,
};

use super::faults::{self, ConnectionWatch};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub(super) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub(super) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Replicas starting together take this PostgreSQL advisory lock so that
/// only one of them runs the migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6d69_6e69_6372_6d00;

/// PostgreSQL's readers.
const POSTGRES_READ_POOL_SIZE: u32 = 16;
/// PostgreSQL's writer pool: the one writer thread's connection (`WRITERS`
/// in `repository.rs`), and a spare that the pool keeps open meanwhile, so
/// that the writer never waits for a new connection when its own is retired
/// after [`POSTGRES_CONNECTION_LIFETIME`].
const POSTGRES_WRITE_POOL_SIZE: u32 = 2;
/// How long a PostgreSQL connection serves before its pool replaces it. Its
/// prepared statements may run on generic plans, made once for the tables
/// as they were then: a plan made while a table was small scans all of it
/// once it has grown, until an ANALYZE of that table (autovacuum's, within
/// a minute or so) makes PostgreSQL plan again (measured: 37 ms to find 3
/// contacts by id among 200,000, 0.06 ms with a new plan). A new connection
/// plans from the tables' present sizes, so no stale plan outlives this.
pub(super) const POSTGRES_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
const SQLITE_READ_POOL_SIZE: u32 = 8;
/// How long migrations wait for SQLite's write lock: another process may be
/// migrating the same file.
const SQLITE_MIGRATION_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the data lives: `postgres://…` / `postgresql://…`, or else a SQLite
/// file given as `sqlite://PATH`, `sqlite:PATH` or a bare path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(String),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, StartupError> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() || path == ":memory:" {
            return Err(StartupError::Config(format!(
                "database url {raw:?}: give a SQLite file path or a postgres:// url"
            )));
        }
        Ok(Self::Sqlite(path.to_owned()))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the database: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error("cannot migrate the database: {0}")]
    Migrate(String),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens connections itself rather than through `DbConnection::establish`,
/// which would replace the backend's error with a generic one.
#[derive(Debug)]
pub(crate) struct Manager {
    /// For PostgreSQL, with the connection timeouts added (see [`postgres_url`]).
    url: DatabaseUrl,
    /// PostgreSQL: [`POSTGRES_CONNECTION_LIFETIME`] but in tests.
    lifetime: Duration,
}

impl Manager {
    fn new(url: &DatabaseUrl, timeout: Duration) -> Self {
        let url = match url {
            DatabaseUrl::Postgres(url) => DatabaseUrl::Postgres(postgres_url(url, timeout)),
            sqlite => sqlite.clone(),
        };
        Self {
            url,
            lifetime: POSTGRES_CONNECTION_LIFETIME,
        }
    }

    /// A connection of its own, outside any pool.
    fn establish(&self) -> Result<DbConnection, diesel::ConnectionError> {
        match &self.url {
            DatabaseUrl::Postgres(url) => {
                let mut pg = PgConnection::establish(url)?;
                pg.set_instrumentation(ConnectionWatch::new());
                Ok(DbConnection::Postgres(pg))
            }
            DatabaseUrl::Sqlite(path) => {
                SqliteConnection::establish(path).map(DbConnection::Sqlite)
            }
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.establish()
            .map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, connection: &mut DbConnection) -> Result<(), Self::Error> {
        connection.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    /// Also a PostgreSQL connection that lost its server (diesel's own check
    /// looks only at the transaction state), or that has served
    /// [`POSTGRES_CONNECTION_LIFETIME`]: it is dropped as it comes back to
    /// the pool, and the pool opens another when one is needed.
    fn has_broken(&self, connection: &mut DbConnection) -> bool {
        std::thread::panicking()
            || connection.is_broken()
            || watch(connection).is_some_and(|watch| watch.lost() || watch.age() >= self.lifetime)
    }
}

/// What a PostgreSQL connection's [`ConnectionWatch`] saw.
fn watch(connection: &mut DbConnection) -> Option<&ConnectionWatch> {
    match connection {
        DbConnection::Postgres(pg) => pg.instrumentation().downcast_ref::<ConnectionWatch>(),
        DbConnection::Sqlite(_) => None,
    }
}

/// The PostgreSQL URL with libpq's timeouts set from `--db-timeout`, unless
/// the URL sets them itself: `connect_timeout` (whole seconds, at least 2 in
/// libpq), `tcp_user_timeout` (a statement whose packets go unacknowledged
/// that long fails instead of hanging on a dead network), and TCP
/// keepalives, which find idle pooled connections to a host that vanished.
fn postgres_url(url: &str, timeout: Duration) -> String {
    let present: Vec<&str> = url
        .split_once('?')
        .map(|(_, query)| {
            query
                .split('&')
                .filter_map(|pair| pair.split('=').next())
                .collect()
        })
        .unwrap_or_default();
    let millis = timeout.as_millis().max(1);
    let wanted = [
        (
            "connect_timeout",
            timeout.as_secs_f64().ceil().max(2.0).to_string(),
        ),
        ("tcp_user_timeout", millis.to_string()),
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", "30".to_owned()),
        ("keepalives_interval", "10".to_owned()),
        ("keepalives_count", "3".to_owned()),
    ];
    let mut url = url.to_owned();
    for (key, value) in wanted {
        if present.contains(&key) {
            continue;
        }
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("{key}={value}"));
    }
    url
}

/// Failed attempts of a pool to open a connection, at debug level: while
/// the database is down a pool retries every second or so, and the health
/// probe reports the outage once.
#[derive(Debug)]
struct LogConnectError;

impl r2d2::HandleError<diesel::r2d2::Error> for LogConnectError {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::debug!(%error, "cannot open a database connection");
    }
}

/// The `random_page_cost` minicrm's PostgreSQL sessions plan with, unless
/// the server, database or role sets one: the value PostgreSQL's manual
/// suggests where the data is mostly cached, as the rows a write batch
/// touches are. With the default (4, a disk's random read) the planner
/// judged a sequential scan of a table of a few thousand rows cheaper than
/// 20–60 lookups by key, for the lead read and the guarded update of
/// contacts (measured in the `mix` bench: 1–3 ms a statement, against
/// 0.05–0.5 ms by the index).
const CACHED_RANDOM_PAGE_COST: &str = "1.1";

/// The `plan_cache_mode` of PostgreSQL's writer sessions, unless the server,
/// database or role sets one. Every statement the writer prepares looks its
/// rows up by key or by a partial index, and a generic plan does that as a
/// plan for the values would; so it is made once per connection. Under the
/// default (`auto`), PostgreSQL planned three of a batch's statements for
/// their values on every call (the two of [`super::locks`] and the pending
/// read, whose keys come as arrays): 120–164 µs of each one's bind, against
/// about 30 µs on the generic plan (a statement log of the `mix` bench). The
/// readers keep `auto`: a list filtered by status, say, is better planned
/// for the status asked for.
const WRITER_PLAN_CACHE_MODE: &str = "force_generic_plan";

/// What a pool's connections are for, where their settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolRole {
    /// SQLite's one writer connection.
    SqliteWriter,
    /// PostgreSQL's writer pool.
    PostgresWriter,
    /// The readers and the health probe.
    Other,
}

/// Session settings each new pooled connection needs.
#[derive(Debug)]
struct SessionSettings {
    /// `--db-timeout`.
    timeout: Duration,
    /// Which pool the connection is for.
    role: PoolRole,
}

/// SQLite's writer keeps its statement journals in memory. Inside a
/// transaction, SQLite copies each existing page a multi-row write
/// changes to that statement's journal first, so that the statement alone
/// can be undone. For the bulk inserts at commit that journal passed 64 KiB
/// and spilled to a new temporary file (created, written and deleted in
/// `/var/tmp`) on most batches of the `register` bench. In memory it is
/// bounded by the pages one statement of a batch changes (every bulk
/// statement is bounded by the batch, retention's deletes by their own
/// batches). Only the writer: for reads, `temp_store = MEMORY` would also
/// keep large sorts in memory.
const SQLITE_WRITER_TEMP_STORE: &str = "PRAGMA temp_store = MEMORY;";

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, connection: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        let millis = self.timeout.as_millis().max(1);
        let settings = match connection {
            // busy_timeout first: switching to WAL itself needs the lock that
            // concurrent openers contend for. synchronous=NORMAL in WAL mode
            // survives a process crash; only power loss can drop the last commits.
            // wal_autocheckpoint = 0: the checkpointer thread does it, so a
            // checkpoint's fsyncs never stall the writer thread mid-batch.
            // temp_store: see [`SQLITE_WRITER_TEMP_STORE`].
            DbConnection::Sqlite(_) => format!(
                "PRAGMA busy_timeout = {millis}; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = 0; \
                 PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}; {}",
                match self.role {
                    PoolRole::SqliteWriter => SQLITE_WRITER_TEMP_STORE,
                    PoolRole::PostgresWriter | PoolRole::Other => "",
                }
            ),
            // A lock wait gives up after half the timeout (55P03): the writer
            // runs the transaction again once, within --db-timeout. No
            // statement of the service takes longer than the timeout on a
            // healthy server. The planner settings hold where the server,
            // database and role leave them at their defaults: see
            // [`CACHED_RANDOM_PAGE_COST`] and [`WRITER_PLAN_CACHE_MODE`].
            DbConnection::Postgres(_) => {
                let writer_only = match self.role {
                    PoolRole::PostgresWriter => {
                        format!(", ('plan_cache_mode', '{WRITER_PLAN_CACHE_MODE}')")
                    }
                    PoolRole::SqliteWriter | PoolRole::Other => String::new(),
                };
                format!(
                    "SET lock_timeout = '{}ms'; SET statement_timeout = '{millis}ms'; \
                     SELECT set_config(name, wanted.value, false) \
                     FROM (VALUES ('random_page_cost', '{CACHED_RANDOM_PAGE_COST}'){writer_only}) \
                          AS wanted (name, value) \
                     JOIN pg_settings USING (name) WHERE source = 'default'",
                    (millis / 2).max(1)
                )
            }
        };
        connection
            .batch_execute(&settings)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub(crate) type Pool = r2d2::Pool<Manager>;

/// The connection pools. SQLite takes one writer at a time anyway, so writes
/// queue for a single connection in-process instead of spinning on the file
/// lock. PostgreSQL's writer has a pool of its own, whose sessions plan
/// differently (see [`WRITER_PLAN_CACHE_MODE`]).
#[derive(Clone)]
pub struct Database {
    backend: Backend,
    read: Pool,
    write: Pool,
    /// One connection for the health probe, so that a busy read pool never
    /// makes the database look down.
    probe: Pool,
    /// `--db-timeout`: how long a checkout waits, and more (see [`SessionSettings`]).
    timeout: Duration,
    /// SQLite only; stops when the last clone of the database is dropped.
    _checkpointer: Option<Arc<Checkpointer>>,
    /// SQLite: the checkpointer's requests to the writer thread.
    wal: Option<Arc<WalRestart>>,
}

impl Database {
    /// Connects and brings the schema up to date, with the default
    /// `--db-timeout`. Blocking.
    #[cfg(test)]
    pub fn open(url: &DatabaseUrl) -> Result<Self, StartupError> {
        Self::open_with(url, crate::config::Limits::DB_TIMEOUT)
    }

    /// Connects and brings the schema up to date; `timeout` bounds every
    /// wait for the database (`--db-timeout`). Blocking.
    pub fn open_with(url: &DatabaseUrl, timeout: Duration) -> Result<Self, StartupError> {
        let backend = url.backend();
        if let DatabaseUrl::Sqlite(path) = url {
            create_private_file(path)?;
        }
        // Migrations first, on a connection of their own: no pool keeps a
        // connection with a schema cache from before them.
        migrate(url, timeout)?;
        let pool = |size: u32, min_idle: u32, role: PoolRole| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(min_idle))
                .connection_timeout(timeout)
                // A checkout ping costs a round trip per call; broken
                // connections are caught by `has_broken` instead.
                .test_on_check_out(false)
                .connection_customizer(Box::new(SessionSettings { timeout, role }))
                .error_handler(Box::new(LogConnectError))
                .build(Manager::new(url, timeout))
        };
        let probe = pool(1, 0, PoolRole::Other)?;
        let (read, write, checkpointer, wal) = match url {
            DatabaseUrl::Postgres(_) => {
                let read = pool(POSTGRES_READ_POOL_SIZE, 1, PoolRole::Other)?;
                let write = pool(POSTGRES_WRITE_POOL_SIZE, 1, PoolRole::PostgresWriter)?;
                (read, write, None, None)
            }
            DatabaseUrl::Sqlite(path) => {
                // The writer opens first so that it turns WAL on.
                let write = pool(1, 1, PoolRole::SqliteWriter)?;
                let wal = Arc::new(WalRestart::new(timeout));
                let checkpointer = Checkpointer::start(path, Arc::clone(&wal))?;
                (
                    pool(SQLITE_READ_POOL_SIZE, 1, PoolRole::Other)?,
                    write,
                    Some(Arc::new(checkpointer)),
                    Some(wal),
                )
            }
        };
        Ok(Self {
            backend,
            read,
            write,
            probe,
            timeout,
            _checkpointer: checkpointer,
            wal,
        })
    }

    /// `--db-timeout`.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the database answers a query now, within the timeout.
    /// Blocking.
    pub(crate) fn probe(&self) -> crate::Result<()> {
        let mut connection = self.probe.get()?;
        connection.batch_execute("SELECT 1")?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn read_pool(&self) -> &Pool {
        &self.read
    }

    /// SQLite: where the checkpointer asks the writer thread to restart the WAL.
    pub(crate) fn wal_restart(&self) -> Option<Arc<WalRestart>> {
        self.wal.clone()
    }

    pub(crate) fn write_pool(&self) -> &Pool {
        &self.write
    }
}

/// Brings the schema up to date on a connection of its own, which waits for
/// locks as long as it takes: a replica that migrates holds the advisory
/// lock (or SQLite's write lock) for as long as the migrations run, and the
/// others must wait for it rather than fail after `lock_timeout`.
fn migrate(url: &DatabaseUrl, timeout: Duration) -> Result<(), StartupError> {
    let failed = |error: &dyn std::fmt::Display| StartupError::Migrate(error.to_string());
    let mut connection = Manager::new(url, timeout)
        .establish()
        .map_err(|error| StartupError::Connect(error.to_string()))?;
    match &mut connection {
        DbConnection::Sqlite(sqlite) => {
            sqlite
                .batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                     PRAGMA foreign_keys = ON;",
                    SQLITE_MIGRATION_BUSY_TIMEOUT.as_millis()
                ))
                .map_err(|e| failed(&e))?;
            sqlite
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(|e| failed(&e))?;
        }
        DbConnection::Postgres(pg) => {
            // Whatever the role or database sets by default.
            pg.batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
                .map_err(|e| failed(&e))?;
            verify_sqlstates(pg);
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(pg)
                .map_err(|e| failed(&e))?;
            let migrated = pg.run_pending_migrations(POSTGRES_MIGRATIONS).map(drop);
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(pg)
                .map_err(|e| failed(&e))?;
            migrated.map_err(|e| failed(&e))?;
        }
    }
    Ok(())
}

/// A connection for the `check` and `backup` tools: it waits for locks as
/// long as it takes (a repair waits for the servers' writes), but gives up
/// connecting after the default `--db-timeout`.
pub(super) fn establish_for_tool(url: &DatabaseUrl) -> Result<DbConnection, String> {
    let mut connection = Manager::new(url, crate::config::Limits::DB_TIMEOUT)
        .establish()
        .map_err(|error| error.to_string())?;
    let settings = match &mut connection {
        DbConnection::Sqlite(_) => "PRAGMA busy_timeout = 60000; PRAGMA foreign_keys = ON;",
        DbConnection::Postgres(pg) => {
            verify_sqlstates(pg);
            "SET lock_timeout = 0; SET statement_timeout = 0"
        }
    };
    connection
        .batch_execute(settings)
        .map_err(|error| error.to_string())?;
    Ok(connection)
}

/// Turns on reading SQLSTATEs (see [`faults::sqlstate`]) after checking it
/// on a real error.
fn verify_sqlstates(pg: &mut PgConnection) {
    if let Err(error) = pg.batch_execute("SELECT 1/0") {
        faults::verify_with(&error);
    }
}

/// Creates the SQLite file, empty and readable by its owner only, unless it
/// exists: SQLite gives its `-wal` and `-shm` files the database file's
/// permissions, whatever the umask.
fn create_private_file(path: &str) -> Result<(), StartupError> {
    if path.starts_with("file:") {
        // A URI filename: SQLite opens (and creates) it as it says.
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StartupError::Connect(format!("{path}: {error}"))),
    }
}

/// Keeps the SQLite write-ahead log short without stalling the writer thread
/// mid-batch.
///
/// Every [`Checkpointer::INTERVAL`] it copies committed pages from the WAL
/// into the database file (PASSIVE: it blocks neither the writer nor
/// readers), so that the writer thread pays no checkpoint's copying and
/// fsyncs, as it did with `wal_autocheckpoint`.
///
/// That alone never lets the log start over while writes keep coming: SQLite
/// rewinds the WAL only when a write transaction begins with every frame
/// copied back and no reader on the log, and a writer that never pauses has
/// always appended more by then. With nothing else, 60 s of 64 calls in
/// flight (registrations, each followed by a close) left a 4.4-5.3 GiB WAL
/// that stayed after the load, and a 10 MiB `-shm` index.
///
/// So once the log passes [`RESTART_AT`], the checkpointer copies once more
/// what the writer added meanwhile and asks the writer thread to restart the
/// log between two batches ([`WalRestart::restart_if_due`]): a RESTART checkpoint
/// there has only a few milliseconds of frames left to copy, but it fsyncs
/// the WAL and the database file and waits for the readers still on the log;
/// the next commit then writes from the start of the file. Once commits stop,
/// the checkpointer empties the file (TRUNCATE).
///
/// Measured over the same 60 s on a shared 2-core machine: the WAL at most
/// 49-63 MiB and empty 0.2 s after the load, `-shm` 0.12 MiB, a restart
/// every 0.3-0.6 s stalling the writer 5-15 ms (median; the fsyncs; 1-3% of
/// its time), throughput level with the unbounded WAL in interleaved runs
/// and 35-45% above `wal_autocheckpoint`'s. The other way tried, the
/// checkpointer pausing the writer by taking the write connection out of its
/// pool and restarting the log itself, cost more: 4% fewer calls and a p99
/// of 28 ms against 22 ms, as the hand-over between threads waits for a core.
struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

/// The WAL size past which the writer thread restarts the log.
const RESTART_AT: u64 = 32 << 20;
/// The WAL is cut back to this size when it restarts, should readers have
/// held a restart off for long (`journal_size_limit`).
const JOURNAL_SIZE_LIMIT: u64 = 2 * RESTART_AT;
/// How long a restart waits for the readers still on the log, while writes
/// wait too. Reads take a few milliseconds; should one outlast it, the
/// checkpointer asks again at its next tick.
const RESTART_BUSY_TIMEOUT_MS: u32 = 10;

/// A checkpointer's request to its database's writer thread: restart the log.
#[derive(Debug)]
pub(crate) struct WalRestart {
    due: AtomicBool,
    /// The write connection's busy timeout (`--db-timeout`), put back after
    /// a restart.
    busy_timeout: Duration,
}

impl WalRestart {
    fn new(busy_timeout: Duration) -> Self {
        Self {
            due: AtomicBool::new(false),
            busy_timeout,
        }
    }

    /// Restarts the WAL if the checkpointer asked for it (almost always a
    /// no-op). The writer thread calls it after each committed batch, once
    /// the batch's callers are answered, with the write connection (outside
    /// any transaction).
    pub(crate) fn restart_if_due(&self, connection: &mut DbConnection) {
        let DbConnection::Sqlite(sqlite) = connection else {
            return;
        };
        if !self.due.swap(false, Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        // Wait briefly for readers: the writes wait meanwhile. If they outlast
        // it, the checkpointer asks again.
        let restarted = sqlite
            .batch_execute(&format!("PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}"))
            .and_then(|()| checkpoint(sqlite, "RESTART"));
        let restored = sqlite.batch_execute(&format!(
            "PRAGMA busy_timeout = {}",
            self.busy_timeout.as_millis().max(1)
        ));
        match restarted.and_then(|outcome| restored.map(|()| outcome)) {
            Ok(outcome) => tracing::debug!(
                busy = outcome.busy,
                stalled_us = started.elapsed().as_micros() as u64,
                "WAL restarted"
            ),
            Err(error) => tracing::warn!(%error, "WAL restart failed"),
        }
    }
}

/// A row of `PRAGMA wal_checkpoint`.
#[derive(Debug, QueryableByName)]
struct CheckpointOutcome {
    /// 1 when readers (or another checkpoint) kept it from finishing.
    #[diesel(sql_type = Integer)]
    busy: i32,
    /// Frames in the WAL.
    #[diesel(sql_type = Integer)]
    log: i32,
    /// Frames copied back to the database file.
    #[diesel(sql_type = Integer)]
    checkpointed: i32,
}

fn checkpoint(connection: &mut SqliteConnection, mode: &str) -> QueryResult<CheckpointOutcome> {
    diesel::sql_query(format!("PRAGMA wal_checkpoint({mode})")).get_result(connection)
}

#[derive(QueryableByName)]
struct PageSize {
    #[diesel(sql_type = Integer)]
    page_size: i32,
}

impl Checkpointer {
    const INTERVAL: Duration = Duration::from_millis(100);

    fn start(path: &str, request: Arc<WalRestart>) -> Result<Self, StartupError> {
        let failed = |error: &dyn std::fmt::Display| StartupError::Connect(error.to_string());
        let mut connection = SqliteConnection::establish(path).map_err(|e| failed(&e))?;
        connection
            .batch_execute(&format!("PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}"))
            .map_err(|e| failed(&e))?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("minicrm-checkpoint".into())
            .spawn(move || {
                let mut last_log = 0;
                // Dropping the sender (the last Database clone) ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::INTERVAL)
                {
                    if let Err(error) = Self::tick(&mut connection, &request, &mut last_log) {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                }
            })?;
        Ok(Self { _stop: stop })
    }

    /// `last_log`: the frames in the WAL at the previous tick.
    fn tick(
        connection: &mut SqliteConnection,
        request: &WalRestart,
        last_log: &mut i32,
    ) -> QueryResult<()> {
        let passive = checkpoint(connection, "PASSIVE")?;
        let stopped =
            passive.log > 0 && passive.log == *last_log && passive.checkpointed == passive.log;
        *last_log = passive.log;
        if stopped {
            // No commit since the last tick: empty the file.
            request.due.store(false, Ordering::Relaxed);
            *last_log = checkpoint(connection, "TRUNCATE")?.log;
            return Ok(());
        }
        let page_size = diesel::sql_query("PRAGMA page_size")
            .get_result::<PageSize>(connection)?
            .page_size;
        // A frame is a page and a 24-byte header.
        let frame = u64::try_from(page_size).unwrap_or(0) + 24;
        if u64::try_from(passive.log).unwrap_or(0) * frame >= RESTART_AT {
            // Copy what was committed meanwhile, so that little is left for
            // the writer thread to copy while writes wait.
            checkpoint(connection, "PASSIVE")?;
            request.due.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db::{TestDb, or_skip};

    #[test]
    fn urls_pick_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").unwrap(),
            DatabaseUrl::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://h/db").unwrap().backend(),
            Backend::Postgres
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://minicrm.db").unwrap(),
            DatabaseUrl::Sqlite("minicrm.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("data/minicrm.db").unwrap(),
            DatabaseUrl::Sqlite("data/minicrm.db".into())
        );
        assert!(DatabaseUrl::parse("").is_err());
        assert!(DatabaseUrl::parse(":memory:").is_err());
    }

    #[test]
    fn postgres_urls_get_the_timeouts_they_lack() {
        let url = postgres_url("postgres://u@h/db", Duration::from_millis(1500));
        assert_eq!(
            url,
            "postgres://u@h/db?connect_timeout=2&tcp_user_timeout=1500&keepalives=1\
             &keepalives_idle=30&keepalives_interval=10&keepalives_count=3"
        );
        let url = postgres_url(
            "postgres://u@h/db?sslmode=require&connect_timeout=9",
            Duration::from_secs(5),
        );
        assert!(
            url.starts_with(
                "postgres://u@h/db?sslmode=require&connect_timeout=9&tcp_user_timeout=5000&"
            ),
            "{url}"
        );
        assert_eq!(url.matches("connect_timeout").count(), 1, "{url}");
    }

    /// A PostgreSQL connection that has served its lifetime is replaced as
    /// it comes back to the pool (a new server process); a younger one is
    /// handed out again.
    #[test]
    fn postgres_connections_are_replaced_after_their_lifetime() {
        let db = or_skip!(TestDb::postgres());
        let url = DatabaseUrl::Postgres(db.url());
        // The pid of a connection from the pool, held `held` before it goes back.
        let pid = |pool: &Pool, held: Duration| -> i32 {
            let mut connection = pool.get().unwrap();
            std::thread::sleep(held);
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ))
            .get_result(&mut *connection)
            .unwrap()
        };
        for (lifetime, replaced) in [
            (Duration::from_millis(50), true),
            (Duration::from_secs(600), false),
        ] {
            let manager = Manager {
                lifetime,
                ..Manager::new(&url, crate::config::Limits::DB_TIMEOUT)
            };
            let pool = r2d2::Pool::builder().max_size(1).build(manager).unwrap();
            let first = pid(&pool, Duration::from_millis(100));
            let second = pid(&pool, Duration::ZERO);
            assert_eq!(first != second, replaced, "lifetime {lifetime:?}");
        }
    }

    /// A PostgreSQL setting as a session sees it, and where its value came from.
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        setting: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        source: String,
    }

    fn setting(connection: &mut DbConnection, name: &str) -> Setting {
        diesel::sql_query("SELECT setting, source FROM pg_settings WHERE name = $1")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(connection)
            .unwrap()
    }

    /// A session outside minicrm's pools, and the name of its database.
    fn plain_session(url: &DatabaseUrl) -> (DbConnection, String) {
        let mut plain = Manager::new(url, crate::config::Limits::DB_TIMEOUT)
            .establish()
            .unwrap();
        let name: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_database()",
        ))
        .get_result(&mut plain)
        .unwrap();
        (plain, name)
    }

    /// minicrm's sessions plan with [`CACHED_RANDOM_PAGE_COST`] where the
    /// server leaves `random_page_cost` at its default, and keep the value a
    /// database (or the server, or a role) sets.
    #[test]
    fn postgres_sessions_plan_for_cached_data_unless_told_otherwise() {
        let db = or_skip!(TestDb::postgres());
        let url = DatabaseUrl::Postgres(db.url());
        let (mut plain, name) = plain_session(&url);
        let server = setting(&mut plain, "random_page_cost");
        let pooled = || {
            let database = Database::open(&url).unwrap();
            let mut connection = database.read_pool().get().unwrap();
            setting(&mut connection, "random_page_cost")
        };
        let expected = if server.source == "default" {
            CACHED_RANDOM_PAGE_COST.to_owned()
        } else {
            server.setting.clone()
        };
        assert_eq!(pooled().setting, expected, "server's: {}", server.source);

        plain
            .batch_execute(&format!(
                "ALTER DATABASE \"{name}\" SET random_page_cost = 2.5"
            ))
            .unwrap();
        assert_eq!(pooled().setting, "2.5");
    }

    /// See [`WRITER_PLAN_CACHE_MODE`]: the writer's sessions run generic
    /// plans where the server leaves `plan_cache_mode` at its default, and
    /// keep the value a database sets; the readers keep the server's. Both
    /// plan with the same `random_page_cost`.
    #[test]
    fn only_the_postgres_writer_runs_generic_plans_unless_told_otherwise() {
        let db = or_skip!(TestDb::postgres());
        let url = DatabaseUrl::Postgres(db.url());
        let (mut plain, name) = plain_session(&url);
        let server = setting(&mut plain, "plan_cache_mode");
        let pooled = |name: &str| {
            let database = Database::open(&url).unwrap();
            let writer = setting(&mut database.write_pool().get().unwrap(), name).setting;
            let reader = setting(&mut database.read_pool().get().unwrap(), name).setting;
            (writer, reader)
        };
        let expected = if server.source == "default" {
            WRITER_PLAN_CACHE_MODE.to_owned()
        } else {
            server.setting.clone()
        };
        assert_eq!(
            pooled("plan_cache_mode"),
            (expected, server.setting.clone()),
            "server's: {}",
            server.source
        );
        let (writer, reader) = pooled("random_page_cost");
        assert_eq!(writer, reader);

        plain
            .batch_execute(&format!(
                "ALTER DATABASE \"{name}\" SET plan_cache_mode = force_custom_plan"
            ))
            .unwrap();
        let custom = "force_custom_plan".to_owned();
        assert_eq!(pooled("plan_cache_mode"), (custom.clone(), custom));
    }

    /// See [`SQLITE_WRITER_TEMP_STORE`]: the writer's statement journals
    /// stay in memory (2, MEMORY); the readers keep SQLite's default (0).
    #[test]
    fn only_the_sqlite_writer_keeps_its_temporary_data_in_memory() {
        #[derive(QueryableByName)]
        struct TempStore {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            temp_store: i32,
        }
        let temp_store = |pool: &Pool| {
            diesel::sql_query("PRAGMA temp_store")
                .get_result::<TempStore>(&mut *pool.get().unwrap())
                .unwrap()
                .temp_store
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("temp_store.db");
        let database = Database::open(&DatabaseUrl::Sqlite(path.display().to_string())).unwrap();
        assert_eq!(temp_store(database.write_pool()), 2);
        assert_eq!(temp_store(database.read_pool()), 0);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_sqlite_database_and_its_wal_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.db");
        let database = Database::open(&DatabaseUrl::Sqlite(path.display().to_string())).unwrap();
        drop(database.write_pool().get().unwrap());
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
    }
}
