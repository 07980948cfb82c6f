//! minicrm: a gRPC lead-distribution service.
//!
//! Layers, outermost first: `api` (thin tonic handlers and wire conversions) →
//! `repository` (moves each unit of work onto the blocking pool) → `db` (diesel
//! queries over SQLite or PostgreSQL) → `domain` (validated types) and `selector`
//! (the weighted draw, a pure function).

pub mod api;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod proto;
pub mod repository;
pub mod selector;
pub mod startup;
pub mod telemetry;

pub use error::{Error, Result};
