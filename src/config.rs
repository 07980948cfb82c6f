use clap::Parser;

/// minicrm: hands contacts from many chat bots to operators, by weight,
/// within each operator's load limit. Serves gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "minicrm", version, about)]
pub struct Settings {
    /// Address to serve gRPC on (HOST:PORT; port 0 picks a free one).
    #[arg(long, env = "MINICRM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    /// `sqlite://PATH` or a file path for embedded SQLite (created and
    /// migrated on start); `postgres://USER@HOST/DB` for PostgreSQL, which any
    /// number of replicas may share.
    #[arg(long, env = "DATABASE_URL", default_value = "minicrm.db")]
    pub database_url: String,
}
