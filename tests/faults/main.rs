//! Fault tests (API.md, "Limits and faults"), each asserting with numbers:
//! `kill -9` of the real binary under load, PostgreSQL cut off under load
//! (through a TCP proxy), overload and deadlines, shutdown with a stream
//! open, and the `check` and `backup` tools. Run with `cargo test`; the
//! PostgreSQL variants need `MINICRM_TEST_POSTGRES_URL`, as in `tests/api`.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
// Each suite uses its part of it.
#[allow(dead_code)]
#[path = "../support/child.rs"]
mod child;
#[path = "../support/test_db.rs"]
mod test_db;

mod load;
mod proxy;
mod server;

mod crash;
mod outage;
mod overload;
mod shutdown;
mod tools;
