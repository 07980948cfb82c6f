use std::path::PathBuf;

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
}

impl Default for Settings {
    /// The flags' defaults, without reading the environment: what tests start
    /// from (`Settings { listen, database_url, ..Settings::default() }`).
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            database_url: "minicrm.db".into(),
            auth_tokens: None,
            allow_unauthenticated: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_flags_parse() {
        let settings = Settings::try_parse_from([
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
        .unwrap();
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
            assert!(Settings::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
