use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// minicrm: hands contacts from many chat bots to operators, by weight,
/// within each operator's load limit. Serves gRPC.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "minicrm",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
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
    /// Verify every invariant and counter of the database (loads, limits,
    /// the GetOperatorStats counters, the contacts' fields); exits 1 with a
    /// report when one fails. Safe while servers run.
    Check(crate::cli::CheckArgs),
    /// Write a consistent copy of a SQLite database to PATH while servers
    /// keep serving it (for PostgreSQL, use pg_dump).
    Backup(crate::cli::BackupArgs),
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

    // Contact events (API.md "Events").
    #[command(flatten)]
    pub events: EventSettings,
    // Security (API.md "Security"): src/auth.rs and src/tls.rs.
    /// Bearer tokens file: one `ROLE NAME SHA256HEX` per line (`#` starts a
    /// comment; roles admin, intake, desk, viewer). SIGHUP reloads it.
    /// Without it every caller may do everything, which is refused on a
    /// non-loopback --listen unless --allow-unauthenticated is given.
    #[arg(long, env = "MINICRM_AUTH_TOKENS", value_name = "PATH")]
    pub auth_tokens: Option<PathBuf>,

    /// Serve a non-loopback --listen address without a tokens file: anyone
    /// who can reach it may make every call.
    #[arg(long, env = "MINICRM_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "MINICRM_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "MINICRM_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(
        long,
        env = "MINICRM_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

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
            events: EventSettings::default(),
            auth_tokens: None,
            allow_unauthenticated: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_listen: None,
            limits: Limits::default(),
        }
    }
}

/// How long contact events are kept.
#[derive(Debug, Clone, Args)]
pub struct EventSettings {
    /// Events older than this are deleted (`7d`, `12h`, `30m`, `90s`).
    /// Resuming or listing from a deleted event answers OUT_OF_RANGE.
    #[arg(long, env = "MINICRM_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub event_retention: Duration,
}

impl EventSettings {
    pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            event_retention: Self::RETENTION,
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

/// A duration such as `7d`, `12h`, `1m`, `2s`, `500ms`, `1.5s`; a bare
/// number is seconds.
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
        "h" => number * 3_600.0,
        "d" => number * 86_400.0,
        other => {
            return Err(format!(
                "{raw:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
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
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(EventSettings::RETENTION));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn event_retention_defaults_to_a_week() {
        let settings = Cli::try_parse_from(["minicrm"]).unwrap().settings;
        assert_eq!(settings.events.event_retention, EventSettings::RETENTION);
        let settings = Cli::try_parse_from(["minicrm", "--event-retention", "2s"])
            .unwrap()
            .settings;
        assert_eq!(settings.events.event_retention, Duration::from_secs(2));
    }

    #[test]
    fn security_flags_parse() {
        let settings = Cli::try_parse_from([
            "minicrm",
            "--auth-tokens",
            "/etc/minicrm/tokens",
            "--allow-unauthenticated",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--tls-client-ca",
            "ca.pem",
        ])
        .unwrap()
        .settings;
        assert_eq!(
            settings.auth_tokens.as_deref(),
            Some(std::path::Path::new("/etc/minicrm/tokens"))
        );
        assert!(settings.allow_unauthenticated);
        assert!(settings.tls_client_ca.is_some());
    }

    #[test]
    fn tls_flags_need_their_partners() {
        for args in [
            &["minicrm", "--tls-cert", "c.pem"][..],
            &["minicrm", "--tls-key", "k.pem"],
            &["minicrm", "--tls-client-ca", "ca.pem"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn limits_have_their_defaults_and_flags() {
        let settings = Cli::try_parse_from(["minicrm"]).unwrap().settings;
        assert_eq!(settings.limits.max_queued_writes, 10_000);
        assert_eq!(settings.limits.db_timeout, Duration::from_secs(2));
        assert_eq!(settings.limits.shutdown_grace, Duration::from_secs(10));
        let settings = Cli::try_parse_from([
            "minicrm",
            "--max-queued-writes",
            "5",
            "--db-timeout",
            "750ms",
            "--shutdown-grace",
            "3s",
        ])
        .unwrap()
        .settings;
        assert_eq!(settings.limits.max_queued_writes, 5);
        assert_eq!(settings.limits.db_timeout, Duration::from_millis(750));
        assert_eq!(settings.limits.shutdown_grace, Duration::from_secs(3));
        assert!(Cli::try_parse_from(["minicrm", "--max-queued-writes", "0"]).is_err());
    }
}
