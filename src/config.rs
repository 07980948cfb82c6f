use std::time::Duration;

use clap::{Args, Parser};

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

    // Limits and faults (API.md "Limits and faults").
    #[command(flatten)]
    pub limits: Limits,
}

impl Default for Settings {
    /// The flags' defaults, without reading the environment: what tests start
    /// from (`Settings { listen, database_url, ..Settings::default() }`).
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            database_url: "minicrm.db".into(),
            limits: Limits::default(),
        }
    }
}

/// How much the server takes on, and how long it waits: see "Running in
/// production" in the README.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// At most this many write calls wait for the writer at once; beyond
    /// that a write answers RESOURCE_EXHAUSTED at once and writes nothing.
    #[arg(
        long,
        env = "MINICRM_MAX_QUEUED_WRITES",
        default_value_t = Limits::MAX_QUEUED_WRITES,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_queued_writes: u32,

    /// How long a call waits for an unreachable or locked database before
    /// answering UNAVAILABLE (`2s`, `500ms`, `1.5s`; a bare number is
    /// seconds). Also the connect timeout of PostgreSQL connections.
    #[arg(long, env = "MINICRM_DB_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// On SIGTERM or SIGINT: how long in-flight calls may take before the
    /// process exits anyway, whatever clients still hold open.
    #[arg(long, env = "MINICRM_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Limits {
    pub const MAX_QUEUED_WRITES: u32 = 10_000;
    pub const DB_TIMEOUT: Duration = Duration::from_secs(2);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queued_writes: Self::MAX_QUEUED_WRITES,
            db_timeout: Self::DB_TIMEOUT,
            shutdown_grace: Self::SHUTDOWN_GRACE,
        }
    }
}

/// A duration such as `2s`, `500ms`, `1.5s`, `1m`; a bare number is seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected a duration such as 2s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1_000.0,
        "m" | "min" => number * 60.0,
        other => return Err(format!("{raw:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{raw:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn limits_have_their_defaults_and_flags() {
        let settings = Settings::try_parse_from(["minicrm"]).unwrap();
        assert_eq!(settings.limits.max_queued_writes, 10_000);
        assert_eq!(settings.limits.db_timeout, Duration::from_secs(2));
        assert_eq!(settings.limits.shutdown_grace, Duration::from_secs(10));
        let settings = Settings::try_parse_from([
            "minicrm",
            "--max-queued-writes",
            "5",
            "--db-timeout",
            "750ms",
            "--shutdown-grace",
            "3s",
        ])
        .unwrap();
        assert_eq!(settings.limits.max_queued_writes, 5);
        assert_eq!(settings.limits.db_timeout, Duration::from_millis(750));
        assert_eq!(settings.limits.shutdown_grace, Duration::from_secs(3));
        assert!(Settings::try_parse_from(["minicrm", "--max-queued-writes", "0"]).is_err());
    }
}
