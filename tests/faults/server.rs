//! The real `minicrm` binary as a child process (the shared
//! [`ServerProcess`]), with its gRPC channel and health.

use std::{
    net::SocketAddr,
    process::{ExitStatus, Output},
    time::{Duration, Instant},
};

use minicrm::proto::{
    contact_service_client::ContactServiceClient, operator_service_client::OperatorServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::child::{self, Colours, ServerProcess};

/// Runs `minicrm ARGS` (a tool: check, backup) to completion.
pub fn tool(args: &[&str]) -> Output {
    child::command()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run minicrm")
}

pub struct Server {
    process: ServerProcess,
    pub channel: Channel,
}

impl Server {
    /// Starts `minicrm --listen 127.0.0.1:0 --database-url URL ARGS` and
    /// waits until it answers SERVING.
    pub async fn start(database_url: &str, args: &[&str]) -> Self {
        let mut command = child::command();
        command
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(args)
            .env("RUST_LOG", "info");
        let mut process = ServerProcess::spawn(command, Colours::Strip);
        let started = Instant::now();
        let address: SocketAddr = loop {
            let serving = process.lines().iter().find_map(|line| {
                line.contains("serving gRPC")
                    .then(|| {
                        line.split_whitespace()
                            .find_map(|word| word.strip_prefix("address="))
                    })
                    .flatten()
                    .map(str::to_owned)
            });
            if let Some(address) = serving {
                break address.parse().expect("address");
            }
            if let Some(status) = process.try_wait() {
                panic!("minicrm exited with {status}: {}", process.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "minicrm did not start: {}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let server = Self { process, channel };
        server
            .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
            .await;
        server
    }

    pub fn contacts(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel.clone())
    }

    pub fn operators(&self) -> OperatorServiceClient<Channel> {
        OperatorServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// The overall health ("" service), or the error of asking.
    pub async fn health_status(&self) -> Result<i32, tonic::Code> {
        self.health()
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status)
            .map_err(|status| status.code())
    }

    pub async fn wait_for_health(&self, wanted: ServingStatus, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.health_status().await == Ok(wanted as i32) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "no {wanted:?} within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `kill -TERM`.
    pub fn terminate(&self) {
        self.process.signal("TERM");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait() {
                return Some(status);
            }
            if started.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
