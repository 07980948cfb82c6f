//! `soak`: the `mix` load for the whole of `--seconds` while a thread samples
//! the database's size on disk (SQLite: the file, its `-wal` and `-shm`;
//! PostgreSQL: the database, and the WAL directory that every database of
//! that server shares) and the minicrm server's RSS, then
//! keeps sampling for `--settle` seconds after the load stops. It measures
//! and prints; it asserts nothing.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    db::Sql,
    report::mib,
    run::{Measured, Progress, Run},
    server::status_mib,
    test_db::TestDb,
};

/// Phases of a soak, told to the sampler thread.
const LOAD: u8 = 0;
const SETTLE: u8 = 1;
const STOP: u8 = 2;
/// Seconds between two samples once the load has stopped.
const SETTLE_SAMPLE_EVERY: f64 = 1.0;
const TICK: Duration = Duration::from_millis(50);

pub struct Soak<'a> {
    pub db: &'a TestDb,
    pub server_pid: u32,
    pub sample_every: f64,
    pub window: f64,
    pub settle: f64,
}

/// Where the sizes come from.
enum Disk {
    Sqlite(PathBuf),
    Postgres(Sql),
}

#[derive(Clone, Copy, Default)]
struct Sizes {
    db: Option<u64>,
    wal: Option<u64>,
    shm: Option<u64>,
}

impl Disk {
    fn sizes(&mut self) -> Sizes {
        match self {
            Self::Sqlite(path) => {
                let size = |suffix: &str| {
                    let mut name = path.clone().into_os_string();
                    name.push(suffix);
                    std::fs::metadata(name).ok().map(|m| m.len())
                };
                Sizes {
                    db: size(""),
                    wal: size("-wal"),
                    shm: size("-shm"),
                }
            }
            Self::Postgres(sql) => {
                let mut size = |query: &str| {
                    let n = sql.try_numbers(query).ok()?.first().copied()?;
                    u64::try_from(n).ok()
                };
                Sizes {
                    db: size("SELECT pg_database_size(current_database()) AS n"),
                    // Needs superuser or pg_monitor; "-" otherwise.
                    wal: size("SELECT COALESCE(SUM(size), 0)::BIGINT AS n FROM pg_ls_waldir()"),
                    shm: None,
                }
            }
        }
    }
}

impl Soak<'_> {
    /// Runs the load and returns its measurements and the sampled lines.
    pub async fn go(&self, run: &Run<'_>) -> (Measured, String) {
        let phase = Arc::new(AtomicU8::new(LOAD));
        let disk = match self.db.sqlite_path() {
            Some(path) => Disk::Sqlite(path),
            None => Disk::Postgres(Sql::connect(self.db)),
        };
        let mut sampler = Sampler {
            disk,
            pid: self.server_pid,
            progress: Arc::clone(run.progress),
            phase: Arc::clone(&phase),
            sample_every: self.sample_every,
            window: self.window,
            log: String::new(),
            peak: Sizes::default(),
            peak_rss: 0.0,
            start: Instant::now(),
        };
        // Before the load starts.
        let first = sampler.sample("start");
        let sampler = thread::spawn(move || sampler.go(first));
        let measured = run.go().await;
        phase.store(SETTLE, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.settle)).await;
        phase.store(STOP, Ordering::Relaxed);
        let log = tokio::task::spawn_blocking(move || sampler.join().expect("sampler"))
            .await
            .expect("join the sampler");
        (measured, log)
    }
}

struct Sampler {
    disk: Disk,
    pid: u32,
    progress: Arc<Progress>,
    phase: Arc<AtomicU8>,
    sample_every: f64,
    window: f64,
    log: String,
    peak: Sizes,
    peak_rss: f64,
    /// When the load started: t = 0 of the samples.
    start: Instant,
}

impl Sampler {
    fn go(mut self, first: Sizes) -> String {
        let (mut next_sample, mut next_window) = (self.sample_every, self.window);
        // The progress counters are new with the run.
        let mut window_start = (0.0, [0; 4]);
        let mut load_end = None;
        loop {
            thread::sleep(TICK);
            let t = self.start.elapsed().as_secs_f64();
            let phase = self.phase.load(Ordering::Relaxed);
            if phase == LOAD {
                if t >= next_window {
                    window_start = self.window_line(window_start, t);
                    next_window += self.window;
                }
                if t >= next_sample {
                    self.sample("load");
                    next_sample += self.sample_every;
                }
            } else if load_end.is_none() {
                // The load has just stopped: the last, shorter window, if
                // calls ended in it.
                if self.answered() != window_start.1 {
                    self.window_line(window_start, t);
                }
                load_end = Some(self.sample("stopped"));
                next_sample = t + SETTLE_SAMPLE_EVERY;
            } else if phase == STOP {
                break;
            } else if t >= next_sample {
                self.sample("idle");
                next_sample += SETTLE_SAMPLE_EVERY;
            }
        }
        let last = self.sample("end");
        let at_stop = load_end.expect("sampled when the load stopped");
        let (peak, peak_rss) = (self.peak, self.peak_rss);
        let summary = [
            ("start", first),
            ("peak", peak),
            ("stop", at_stop),
            ("end", last),
        ]
        .map(|(label, s)| format!("{label} {}/{}", mib(s.db), mib(s.wal)))
        .join(", ");
        self.line(format!(
            "soak summary (db/WAL MiB): {summary}; server RSS peak {peak_rss:.1} MiB"
        ));
        self.log
    }

    /// Calls answered so far: (registrations, closes, others, errors).
    fn answered(&self) -> [u64; 4] {
        let p = &self.progress;
        [&p.registrations, &p.closes, &p.others, &p.errors].map(|c| c.load(Ordering::Relaxed))
    }

    /// Prints the throughput since `since` and returns the new window's start.
    fn window_line(&mut self, since: (f64, [u64; 4]), t: f64) -> (f64, [u64; 4]) {
        let now = self.answered();
        let seconds = t - since.0;
        let rate = |i: usize| (now[i] - since.1[i]) as f64 / seconds;
        self.line(format!(
            "soak window {:>6.1}-{:<6.1}s: {:.0} calls/s = {:.0} registrations/s + {:.0} closes/s, {} errors",
            since.0,
            t,
            rate(0) + rate(1) + rate(2),
            rate(0),
            rate(1),
            now[3] - since.1[3],
        ));
        (t, now)
    }

    fn sample(&mut self, label: &str) -> Sizes {
        let t = self.start.elapsed().as_secs_f64();
        let sizes = self.disk.sizes();
        let rss = status_mib(self.pid, "VmRSS:");
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        self.peak = Sizes {
            db: max(self.peak.db, sizes.db),
            wal: max(self.peak.wal, sizes.wal),
            shm: max(self.peak.shm, sizes.shm),
        };
        self.peak_rss = self.peak_rss.max(rss);
        let [registrations, closes, ..] = self.answered();
        self.line(format!(
            "soak t={t:>6.1}s {label:<7} db {:>9} MiB  wal {:>9} MiB  shm {:>7} MiB  rss {rss:>7.1} MiB  \
             registrations {registrations:>9}  closes {closes:>9}",
            mib(sizes.db),
            mib(sizes.wal),
            mib(sizes.shm),
        ));
        sizes
    }

    fn line(&mut self, line: String) {
        eprintln!("{line}");
        writeln!(self.log, "{line}").unwrap();
    }
}
