//! Storage: one diesel code path over SQLite and PostgreSQL. Private to the
//! crate: callers go through [`crate::repository::Repository`].
//!
//! Reads take a [`reader::Reader`]; writes are [`units::WriteUnit`]s that the
//! [`writer::Writer`] threads run inside a [`tx::WriteTx`].

mod backup;
mod bulk;
mod cached;
mod check;
mod connection;
pub(crate) mod contacts;
mod counts;
mod dispatch;
pub(crate) mod events;
mod faults;
mod guard;
pub(crate) mod leads;
mod loads;
mod locks;
mod models;
pub(crate) mod operators;
mod overlay;
mod prepared;
pub(crate) mod reader;
pub(crate) mod routing;
mod run;
mod schema;
pub(crate) mod sources;
pub(crate) mod stats;
mod tx;
mod units;
mod writer;

/// The tests' database helper, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/support/test_db.rs"]
mod test_db;

pub use backup::{Backup, BackupError, backup};
pub use check::{CheckError, Problem, Report, check};
pub use connection::{Backend, DatabaseUrl, StartupError};
pub(crate) use connection::{Database, DbConnection};
pub(crate) use faults::{Class as DbClass, classify};
pub(crate) use writer::{Writer, WriterDeps, WriterLimits};
