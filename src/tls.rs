//! TLS for the gRPC server (rustls, through tonic): `--tls-cert` and
//! `--tls-key` serve TLS; `--tls-client-ca` also requires every client to
//! present a certificate signed by that CA (mTLS).

use std::{fmt, path::Path, time::Duration};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{StartupError, config::Settings};

/// A client that connects and never finishes its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Plaintext,
    Tls,
    /// TLS, and clients must present a certificate the client CA signed.
    MutualTls,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plaintext => "off",
            Self::Tls => "tls",
            Self::MutualTls => "mtls",
        })
    }
}

/// The server's TLS settings, read from the PEM files the settings name, or
/// `None` for plaintext. A file that cannot be read, or a certificate and key
/// that rustls rejects, stops the start with a message naming the flag.
pub fn server_config(settings: &Settings) -> Result<Option<ServerTlsConfig>, StartupError> {
    let (cert, key) = match (&settings.tls_cert, &settings.tls_key) {
        (None, None) => {
            if settings.tls_client_ca.is_some() {
                return Err(config_error(
                    "--tls-client-ca needs --tls-cert and --tls-key",
                ));
            }
            return Ok(None);
        }
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(config_error("--tls-cert and --tls-key go together")),
    };
    let identity = Identity::from_pem(read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?);
    let mut config = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &settings.tls_client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read_pem("--tls-client-ca", ca)?))
            .client_auth_optional(false);
    }
    // Builds the rustls configuration once now, so that a bad certificate or
    // key is reported at start rather than when serving begins.
    Server::builder()
        .tls_config(config.clone())
        .map_err(|error| {
            config_error(&format!(
                "cannot use the TLS certificate and key: {}",
                source_chain(&error)
            ))
        })?;
    Ok(Some(config))
}

pub fn mode(settings: &Settings) -> TlsMode {
    match (&settings.tls_cert, &settings.tls_client_ca) {
        (None, _) => TlsMode::Plaintext,
        (Some(_), None) => TlsMode::Tls,
        (Some(_), Some(_)) => TlsMode::MutualTls,
    }
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, StartupError> {
    let pem = std::fs::read(path)
        .map_err(|error| config_error(&format!("{flag} {}: {error}", path.display())))?;
    if !pem.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(config_error(&format!(
            "{flag} {}: not a PEM file",
            path.display()
        )));
    }
    Ok(pem)
}

fn config_error(message: &str) -> StartupError {
    StartupError::Config(message.to_owned())
}

/// An error and its sources, as one line.
fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
