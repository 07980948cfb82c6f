//! Storage: one diesel code path over SQLite and PostgreSQL.

mod connection;
pub mod contacts;
mod counts;
pub mod dispatch;
pub mod leads;
mod locks;
mod models;
pub mod operators;
mod run;
mod schema;
pub mod sources;
pub mod stats;
mod transaction;
mod tx_state;
mod writer;

pub use connection::{Backend, Database, DatabaseUrl, DbConnection, StartupError};
pub use writer::{OnUniqueViolation, Writer};
