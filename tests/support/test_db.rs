//! A database of one's own for a test or a benchmark run: a temp-file SQLite,
//! or a fresh PostgreSQL database created for it and dropped after it.
//!
//! Shared by the integration tests (`tests/api/main.rs`) and the load
//! benchmark (`benches/load/main.rs`), each including this file with
//! `#[path = …] mod test_db;`. Each uses only part of it.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use diesel::{Connection, PgConnection, RunQueryDsl};

pub const POSTGRES_URL_VAR: &str = "MINICRM_TEST_POSTGRES_URL";

/// The test's database (`$db`, an `Option<TestDb>`), or a `skipped` line
/// and a return from the test when it is `None`: a PostgreSQL database
/// without `MINICRM_TEST_POSTGRES_URL`.
#[allow(unused_macros)]
macro_rules! or_skip {
    ($db:expr) => {
        match $db {
            Some(db) => db,
            None => {
                eprintln!("skipped: set MINICRM_TEST_POSTGRES_URL to run this test on PostgreSQL");
                return;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use or_skip;

/// The SQLite file's name inside its temp directory.
const SQLITE_FILE: &str = "minicrm.db";

/// A database only one test uses: a temp-file SQLite, or a fresh PostgreSQL
/// database created for the test and dropped after it.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    /// `None` when `MINICRM_TEST_POSTGRES_URL` is not set.
    pub fn postgres() -> Option<Self> {
        let admin_url = std::env::var(POSTGRES_URL_VAR).ok()?;
        Some(Self::postgres_on(admin_url, "minicrm_test"))
    }

    /// A new database named `{prefix}_{pid}_{n}_{random}` on the server that
    /// `admin_url` points at (it names any database one may connect to).
    pub fn postgres_on(admin_url: String, prefix: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = PgConnection::establish(&admin_url).expect("connect to PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create test database");
        Self::Postgres { admin_url, name }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(_) => format!("sqlite://{}", self.sqlite_path().unwrap().display()),
            Self::Postgres { admin_url, name } => with_database(admin_url, name),
        }
    }

    /// The SQLite database file (its `-wal` and `-shm` files lie beside it).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            Self::Sqlite(dir) => Some(dir.path().join(SQLITE_FILE)),
            Self::Postgres { .. } => None,
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin);
        }
    }
}

/// The same server URL, naming another database.
pub fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = without_query.find("://").map_or(0, |i| i + 3);
    let server = match without_query[authority_start..].find('/') {
        Some(slash) => &without_query[..authority_start + slash],
        None => without_query,
    };
    format!("{server}/{database}{query}")
}
