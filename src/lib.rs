//! minicrm: a gRPC lead-distribution service.
//!
//! Layers, outermost first: `api` (thin tonic handlers and wire conversions) →
//! `repository` (reads on tokio's blocking pool, writes on the group-commit
//! writer thread) → `db` (diesel queries over SQLite or PostgreSQL, private)
//! → `domain` (validated types) and `selector` (the weighted draw, a pure
//! function). Around `api`, every call passes through two tower layers:
//! `api::observe` (its span and log line) and, inside it, `auth` (bearer tokens
//! and roles); `tls` sets up TLS and mTLS.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
mod db;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod event_stream;
pub mod health;
pub mod health_cmd;
mod lapses;
pub mod metrics;
pub mod proto;
pub mod repository;
mod retention;
pub mod selector;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod tls;

pub use db::{
    Backend, Backup, BackupError, CheckError, DatabaseUrl, Problem, Report, StartupError, backup,
    check,
};
pub use error::{Error, Result};
