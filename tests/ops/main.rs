//! Operations, seen from outside: the real binary in a child process, its
//! Prometheus metrics (`--metrics-listen`), its logs (`--log-format`, no
//! colour codes in files, no personal data at any level) and `minicrm health`.
//! On SQLite, and on PostgreSQL with `MINICRM_TEST_POSTGRES_URL`.

// Each suite uses its part of it.
#[allow(dead_code)]
#[path = "../support/child.rs"]
mod child;
#[path = "../support/test_db.rs"]
mod test_db;

mod health;
mod logs;
mod metrics;
mod server;

use test_db::{POSTGRES_URL_VAR, TestDb};

/// Runs the test on SQLite, then on PostgreSQL when configured.
pub async fn on_each_backend<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    test(TestDb::sqlite()).await;
    match TestDb::postgres() {
        Some(db) => test(db).await,
        None => eprintln!("skipped on PostgreSQL: set {POSTGRES_URL_VAR} to run it there"),
    }
}
