//! `minicrm health [--addr ADDR]`: asks a running server `grpc.health.v1.Health/Check`
//! and exits 0 when it answers SERVING, 1 otherwise (NOT_SERVING, unknown
//! service, no answer in time, cannot connect). Made for container health
//! checks: it needs no database and no configuration beyond the address.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The server to ask (HOST:PORT or http://HOST:PORT). Defaults to the
    /// address the server listens on; an unspecified host (0.0.0.0 or ::) is
    /// asked on loopback.
    #[arg(long, env = "MINICRM_LISTEN", default_value = "127.0.0.1:50051")]
    pub addr: String,

    /// The service to ask about; empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,

    /// Seconds to wait for the answer, connecting included.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// Asks and prints the answer: `SERVING` on stdout, anything else on stderr.
pub async fn run(args: &HealthArgs) -> ExitCode {
    let target = target_uri(&args.addr);
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::from_secs(3));
    match tokio::time::timeout(timeout, check(&target, &args.service, timeout)).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("{target}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("{target}: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{target}: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}

async fn check(
    target: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, Box<dyn std::error::Error>> {
    let channel = Endpoint::from_shared(target.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|error| format!("cannot connect: {}", with_causes(&error)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// The error and its sources: tonic's own message is just "transport error".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `http://HOST:PORT` for `addr`, with an unspecified IP replaced by loopback,
/// so that the server's own `--listen 0.0.0.0:50051` can be asked as is.
fn target_uri(addr: &str) -> String {
    let bare = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let bare = match bare.parse::<SocketAddr>() {
        Ok(mut socket) if socket.ip().is_unspecified() => {
            socket.set_ip(match socket.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
            socket.to_string()
        }
        _ => bare.to_owned(),
    };
    format!("http://{bare}")
}

#[cfg(test)]
mod tests {
    use super::target_uri;

    #[test]
    fn unspecified_hosts_are_asked_on_loopback() {
        assert_eq!(target_uri("0.0.0.0:50051"), "http://127.0.0.1:50051");
        assert_eq!(target_uri("[::]:50051"), "http://[::1]:50051");
        assert_eq!(target_uri("10.1.2.3:7000"), "http://10.1.2.3:7000");
        assert_eq!(target_uri("http://db-host:50051/"), "http://db-host:50051");
        assert_eq!(target_uri("localhost:50051"), "http://localhost:50051");
    }
}
