//! Integration tests: the real server on port 0, called through the generated
//! tonic clients, on SQLite and (with `MINICRM_TEST_POSTGRES_URL`) PostgreSQL.

mod helpers;

mod concurrency;
mod contacts;
mod dispatch;
mod idempotency;
mod input;
mod leads;
mod operators;
mod service;
mod sources;
