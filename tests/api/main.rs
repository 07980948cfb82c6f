//! Integration tests: the real server on port 0, called through the generated
//! tonic clients, on SQLite and (with `MINICRM_TEST_POSTGRES_URL`) PostgreSQL.

// Each suite uses its part of it.
#[allow(dead_code)]
#[path = "../support/child.rs"]
mod child;
mod helpers;
#[path = "../support/test_db.rs"]
mod test_db;

mod concurrency;
mod contacts;
mod dispatch;
mod events;
mod idempotency;
mod input;
mod leads;
mod operators;
mod postgres_tls;
mod routing;
mod security;
mod service;
mod sources;
mod tls;
mod wal;
mod walkthrough;
