//! minicrm: a gRPC lead-distribution service.
//!
//! Layers, outermost first: `api` (thin tonic handlers and wire conversions) →
//! `repository` (reads on tokio's blocking pool, writes on the group-commit
//! writer thread) → `db` (diesel queries over SQLite or PostgreSQL, private)
//! → `domain` (validated types) and `selector` (the weighted draw, a pure
//! function).

pub mod api;
pub mod cli;
pub mod config;
mod db;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod health;
pub mod proto;
pub mod repository;
pub mod selector;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

pub use db::{
    Backend, Backup, BackupError, CheckError, DatabaseUrl, Problem, Report, StartupError, backup,
    check,
};
pub use error::{Error, Result};
