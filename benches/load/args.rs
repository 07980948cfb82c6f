//! Command-line flags.

use clap::{Parser, ValueEnum};

/// Load benchmark: starts the real `minicrm` binary (release build) on a fresh
/// database, seeds it, drives it with N concurrent in-flight calls over a few
/// HTTP/2 connections and prints one table. Then checks the invariant in the
/// database itself.
#[derive(Parser, Debug)]
#[command(name = "load", long_about = None)]
pub struct Args {
    /// Calls in flight; each scenario runs once per level.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_parser = at_least_one)]
    pub concurrency: Vec<usize>,

    /// Measured seconds per run (the whole length of a `soak`).
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub seconds: f64,

    /// Seconds of calls before each run, not measured.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_seconds)]
    pub warmup: f64,

    /// Run on PostgreSQL: a new database on the server this URL points at,
    /// dropped afterwards. SQLite (a temp file) without it.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,

    /// Leads created before the runs (0: a warm pool of 1,000 for the calls
    /// of known people).
    #[arg(long, default_value_t = 0)]
    pub leads: u64,

    /// Closed contacts created before the runs.
    #[arg(long, default_value_t = 0)]
    pub contacts: u64,

    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub connections: usize,

    /// Scenarios to run, in this order. `soak` is not in the default list.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "noop,register,register-full,close+dispatch,stats,list,mix"
    )]
    pub scenarios: Vec<Scenario>,

    /// `soak`: seconds between two samples of file sizes and RSS.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub sample_every: f64,

    /// `soak`: seconds of each throughput window.
    #[arg(long, default_value_t = 15.0, value_parser = positive_seconds)]
    pub window: f64,

    /// `soak`: seconds to keep sampling after the load stops.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative_seconds)]
    pub settle: f64,

    /// WatchContactEvents streams reading every event during the runs.
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,

    /// Passed by `cargo bench` to every benchmark binary; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// What each call of a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `grpc.health.v1.Health/Check`: the transport's ceiling.
    Noop,
    /// RegisterContact on a source with ample capacity; half new leads.
    Register,
    /// RegisterContact on a source whose operators are all full: PENDING.
    RegisterFull,
    /// CloseContact of an ACTIVE contact while pending ones wait, so each
    /// close hands its slot on.
    #[value(name = "close+dispatch")]
    CloseDispatch,
    /// GetOperatorStats.
    Stats,
    /// A ListContacts page of 100 from the middle of the table.
    List,
    /// Every second call registers (PENDING, 4 full sources), every other
    /// closes an ACTIVE contact, which dispatches a pending one.
    Mix,
    /// Two calls of every three register on a source with a 1 s
    /// `accept_timeout`, the third accepts the first of them: half of the
    /// contacts are accepted, half lapse (and lapse again with the next
    /// operator).
    Accept,
    /// `mix` for the whole of `--seconds`, sampling the database files and
    /// the server's RSS (for SQLite's WAL growth).
    Soak,
}

impl Scenario {
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_owned()
    }

    /// Whether calls alternate registrations with closes or accepts,
    /// reported apart.
    pub fn is_mixed(self) -> bool {
        matches!(self, Self::Mix | Self::Soak | Self::Accept)
    }
}

impl Args {
    /// How many runs of `scenario` there are: one per concurrency level each
    /// time it is listed.
    pub fn runs_of(&self, scenario: Scenario) -> u64 {
        let listed = self.scenarios.iter().filter(|&&s| s == scenario).count();
        (listed * self.concurrency.len()) as u64
    }
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.trim().parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(error) => Err(format!("{error}")),
    }
}

fn positive_seconds(value: &str) -> Result<f64, String> {
    let seconds = non_negative_seconds(value)?;
    if seconds > 0.0 {
        Ok(seconds)
    } else {
        Err("must be more than 0 seconds".into())
    }
}

fn non_negative_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds >= 0.0 && seconds.is_finite() => Ok(seconds),
        Ok(_) => Err("must be a finite number of seconds, not negative".into()),
        Err(error) => Err(format!("{error}")),
    }
}
