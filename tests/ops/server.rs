//! The real `minicrm` binary as a child process (the shared
//! [`ServerProcess`]), as it runs in production: its flags, its stderr and
//! its metrics endpoint, seen from outside.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    process::ExitStatus,
    time::{Duration, Instant},
};

use minicrm::proto::{
    contact_service_client::ContactServiceClient, operator_service_client::OperatorServiceClient,
    source_service_client::SourceServiceClient,
};
use tonic::transport::Channel;

use crate::child::{self, Colours, ServerProcess};

pub struct Server {
    process: ServerProcess,
    pub grpc: String,
    pub metrics: Option<String>,
}

impl Server {
    /// Starts `minicrm` on `database_url` with `args` and `envs`, on port 0;
    /// `--log-format json` is always given (so the addresses can be read
    /// from the log) unless `args` names a format. The log is kept as
    /// written, colour codes included.
    pub fn start(database_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = child::command();
        command
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(args)
            .env("RUST_LOG", "info");
        if !args.contains(&"--log-format") {
            command.args(["--log-format", "json"]);
        }
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut server = Self {
            process: ServerProcess::spawn(command, Colours::Keep),
            grpc: String::new(),
            metrics: None,
        };
        let wants_metrics = args.contains(&"--metrics-listen")
            || envs
                .iter()
                .any(|(name, _)| *name == "MINICRM_METRICS_LISTEN");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for line in server.lines() {
                if let Some(address) = address_in(&line, "minicrm serving gRPC") {
                    server.grpc = address;
                }
                if let Some(address) = address_in(&line, "serving Prometheus metrics") {
                    server.metrics = Some(address);
                }
            }
            if !server.grpc.is_empty() && (server.metrics.is_some() || !wants_metrics) {
                return server;
            }
            if let Some(status) = server.process.try_wait() {
                panic!("minicrm exited with {status}: {:#?}", server.lines());
            }
            assert!(
                Instant::now() < deadline,
                "minicrm did not start: {:#?}",
                server.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line the server wrote to stderr so far.
    pub fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn clients(
        &self,
    ) -> (
        OperatorServiceClient<Channel>,
        SourceServiceClient<Channel>,
        ContactServiceClient<Channel>,
    ) {
        let channel = self.channel().await;
        (
            OperatorServiceClient::new(channel.clone()),
            SourceServiceClient::new(channel.clone()),
            ContactServiceClient::new(channel),
        )
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&self) -> Scrape {
        let address = self.metrics.as_deref().expect("started with metrics");
        let (status, headers, body) = http_get(address, "/metrics");
        assert_eq!(status, 200, "{headers}\n{body}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{headers}"
        );
        Scrape::parse(&body)
    }

    /// SIGTERM, then waits for the exit (and every line of the log).
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.process.signal("TERM");
        let Some(status) = self.process.wait_exit(Duration::from_secs(20)) else {
            self.process.kill();
            panic!("minicrm did not stop on SIGTERM");
        };
        self.process.read_to_end();
        (status, self.lines())
    }
}

/// The `address` field of a log line (JSON or text) whose message is `message`.
fn address_in(line: &str, message: &str) -> Option<String> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        if !value["message"].as_str()?.contains(message) {
            return None;
        }
        return Some(value["address"].as_str()?.to_owned());
    }
    if !line.contains(message) {
        return None;
    }
    let (_, rest) = line.split_once("address=")?;
    Some(rest.split_whitespace().next()?.to_owned())
}

/// A plain HTTP/1.0 GET: (status, header block, body).
pub fn http_get(address: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, head.to_owned(), body.to_owned())
}

/// One scrape's samples: name → (labels → value).
#[derive(Debug, Default)]
pub struct Scrape {
    pub text: String,
    samples: BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>>,
}

impl Scrape {
    /// Parses the text exposition's sample lines (`name{a="x",b="y"} value`).
    pub fn parse(text: &str) -> Self {
        let mut samples: BTreeMap<String, BTreeMap<_, _>> = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                value => value
                    .parse()
                    .unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let mut labels: Vec<(String, String)> = inner
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), Vec::new()),
            };
            let previous = samples.entry(name).or_default().insert(labels, value);
            assert!(previous.is_none(), "series given twice: {line:?}");
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        key.sort();
        self.samples.get(name)?.get(&key).copied()
    }

    /// Like [`get`](Self::get), 0 when absent (a counter never incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every series of `name`: its labels and value.
    pub fn series(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        self.samples
            .get(name)
            .map(|series| series.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// The sum over every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).iter().map(|(_, value)| value).sum()
    }
}
