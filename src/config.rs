use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// minicrm: hands contacts from many chat bots to operators, by weight,
/// within each operator's load limit. Serves gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "minicrm", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,

    /// How to write log lines to stderr: `text` (colour codes only when
    /// stderr is a terminal) or `json` (one object per line).
    #[arg(long, env = "MINICRM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serves when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Asks a running server for its gRPC health; exits 0 when it answers
    /// SERVING, 1 otherwise (for container health checks).
    Health(crate::health_cmd::HealthArgs),
}

/// What the server needs to serve.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to serve gRPC on (HOST:PORT; port 0 picks a free one).
    #[arg(long, env = "MINICRM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    /// `sqlite://PATH` or a file path for embedded SQLite (created and
    /// migrated on start); `postgres://USER@HOST/DB` for PostgreSQL, which any
    /// number of replicas may share.
    #[arg(long, env = "DATABASE_URL", default_value = "minicrm.db")]
    pub database_url: String,

    /// Address to serve Prometheus metrics on, at `http://ADDR/metrics`
    /// (HOST:PORT; port 0 picks a free one). Off when absent.
    #[arg(long, env = "MINICRM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}
