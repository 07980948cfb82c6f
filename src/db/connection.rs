use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use diesel::{
    Connection, PgConnection, RunQueryDsl, SqliteConnection,
    connection::SimpleConnection,
    r2d2::{CustomizeConnection, R2D2Connection},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Replicas starting together take this PostgreSQL advisory lock so that
/// only one of them runs the migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6d69_6e69_6372_6d00;

const POSTGRES_POOL_SIZE: u32 = 16;
const SQLITE_READ_POOL_SIZE: u32 = 8;
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

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
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        let connection = match &self.url {
            DatabaseUrl::Postgres(url) => PgConnection::establish(url).map(DbConnection::Postgres),
            DatabaseUrl::Sqlite(path) => {
                SqliteConnection::establish(path).map(DbConnection::Sqlite)
            }
        };
        connection.map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, connection: &mut DbConnection) -> Result<(), Self::Error> {
        connection.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, connection: &mut DbConnection) -> bool {
        std::thread::panicking() || connection.is_broken()
    }
}

/// Session settings each new connection needs.
#[derive(Debug)]
struct SessionSettings;

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, connection: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        let settings = match connection {
            // busy_timeout first: switching to WAL itself needs the lock that
            // concurrent openers contend for. synchronous=NORMAL in WAL mode
            // survives a process crash; only power loss can drop the last commits.
            // wal_autocheckpoint = 0: the checkpointer thread does it, so a
            // checkpoint's fsyncs never stall the writer thread mid-batch.
            DbConnection::Sqlite(_) => {
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = 0;"
            }
            DbConnection::Postgres(_) => "SET lock_timeout = '10s'",
        };
        connection
            .batch_execute(settings)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub(crate) type Pool = r2d2::Pool<Manager>;

/// The connection pools. SQLite takes one writer at a time anyway, so writes
/// queue for a single connection in-process instead of spinning on the file
/// lock; PostgreSQL writers share the one pool.
#[derive(Clone)]
pub struct Database {
    backend: Backend,
    read: Pool,
    write: Pool,
    /// SQLite only; stops when the last clone of the database is dropped.
    _checkpointer: Option<Arc<Checkpointer>>,
}

impl Database {
    /// Connects and brings the schema up to date. Blocking.
    pub fn open(url: &DatabaseUrl) -> Result<Self, StartupError> {
        let backend = url.backend();
        let pool = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(CHECKOUT_TIMEOUT)
                // A checkout ping costs a round trip per call; broken
                // connections are caught by `has_broken` instead.
                .test_on_check_out(false)
                .connection_customizer(Box::new(SessionSettings))
                .build(Manager { url: url.clone() })
        };
        let (read, write, checkpointer) = match url {
            DatabaseUrl::Postgres(_) => {
                let shared = pool(POSTGRES_POOL_SIZE)?;
                (shared.clone(), shared, None)
            }
            DatabaseUrl::Sqlite(path) => {
                // The writer opens first so that it creates the file and turns WAL on.
                let write = pool(1)?;
                let checkpointer = Checkpointer::start(path)?;
                (
                    pool(SQLITE_READ_POOL_SIZE)?,
                    write,
                    Some(Arc::new(checkpointer)),
                )
            }
        };
        let database = Self {
            backend,
            read,
            write,
            _checkpointer: checkpointer,
        };
        database.migrate()?;
        Ok(database)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn read_pool(&self) -> &Pool {
        &self.read
    }

    pub(crate) fn write_pool(&self) -> &Pool {
        &self.write
    }

    fn migrate(&self) -> Result<(), StartupError> {
        let mut connection = self.write.get()?;
        let failed = |error: &dyn std::fmt::Display| StartupError::Migrate(error.to_string());
        match &mut *connection {
            DbConnection::Sqlite(sqlite) => {
                sqlite
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| failed(&e))?;
            }
            DbConnection::Postgres(pg) => {
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
}

/// Copies committed pages from the SQLite WAL into the database file in the
/// background (PASSIVE: it never blocks the writer or readers).
struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    const INTERVAL: Duration = Duration::from_millis(200);

    fn start(path: &str) -> Result<Self, StartupError> {
        let mut connection = SqliteConnection::establish(path)
            .map_err(|error| StartupError::Connect(error.to_string()))?;
        connection
            .batch_execute("PRAGMA busy_timeout = 10000")
            .map_err(|error| StartupError::Connect(error.to_string()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("minicrm-checkpoint".into())
            .spawn(move || {
                // Dropping the sender (the last Database clone) ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::INTERVAL)
                {
                    if let Err(error) = connection.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                }
            })?;
        Ok(Self { _stop: stop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
