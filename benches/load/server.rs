//! The server under test (the real `minicrm` binary) and the client
//! connections to it.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::test_db::TestDb;

pub struct Server {
    child: Child,
    pub address: String,
}

impl Server {
    pub fn start(db: &TestDb) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        // For profiling: MINICRM_BENCH_WRAPPER="valgrind --tool=callgrind" runs
        // the server under that command (figures are then meaningless).
        let wrapper = std::env::var("MINICRM_BENCH_WRAPPER").unwrap_or_default();
        let mut words = wrapper
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        words.push(env!("CARGO_BIN_EXE_minicrm").to_owned());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["--listen", &address, "--database-url", &db.url()])
            .env(
                "RUST_LOG",
                std::env::var("MINICRM_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start minicrm");
        Self { child, address }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set since the last reset, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM:")
    }

    pub fn reset_peak_rss(&self) {
        // "5" resets the peak RSS (VmHWM) to the current RSS.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    pub async fn wait_until_serving(&self) {
        for _ in 0..1200 {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.address))
                .unwrap()
                .connect()
                .await
                && HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("minicrm did not start on {}", self.address);
    }
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`…) in MiB; NaN when
/// it cannot be read.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A few HTTP/2 connections; worker `w` uses connection `w % connections`.
#[derive(Clone)]
pub struct Clients {
    channels: Vec<Channel>,
}

impl Clients {
    pub async fn connect(address: &str, connections: usize) -> Self {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(
                Channel::from_shared(format!("http://{address}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        Self { channels }
    }

    pub fn channel(&self, worker: usize) -> Channel {
        self.channels[worker % self.channels.len()].clone()
    }
}
