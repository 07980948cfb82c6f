//! One timed run: `concurrency` workers, each with one call in flight, for
//! `--warmup` and then `--seconds`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    args::Scenario,
    scenarios::{self, Kind},
    seed::Fixture,
    server::Clients,
};

/// Calls answered so far, warm-up included, for sampling during a run.
#[derive(Default)]
pub struct Progress {
    pub registrations: AtomicU64,
    pub closes: AtomicU64,
    pub accepts: AtomicU64,
    pub others: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    fn count(&self, kind: Kind, ok: bool) {
        let counter = match (ok, kind) {
            (false, _) => &self.errors,
            (true, Kind::Registration) => &self.registrations,
            (true, Kind::Close) => &self.closes,
            (true, Kind::Accept) => &self.accepts,
            (true, Kind::Other) => &self.others,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The measured calls of one kind.
#[derive(Default)]
pub struct Part {
    /// Sorted once the run is over.
    pub latencies_us: Vec<u32>,
    pub errors: u64,
}

impl Part {
    fn absorb(&mut self, other: Part) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
    }
}

#[derive(Default)]
pub struct Measured {
    pub registrations: Part,
    pub closes: Part,
    pub accepts: Part,
    pub others: Part,
    pub first_error: Option<String>,
}

impl Measured {
    fn part(&mut self, kind: Kind) -> &mut Part {
        match kind {
            Kind::Registration => &mut self.registrations,
            Kind::Close => &mut self.closes,
            Kind::Accept => &mut self.accepts,
            Kind::Other => &mut self.others,
        }
    }

    fn absorb(&mut self, other: Measured) {
        self.registrations.absorb(other.registrations);
        self.closes.absorb(other.closes);
        self.accepts.absorb(other.accepts);
        self.others.absorb(other.others);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn parts(&self) -> [&Part; 4] {
        [
            &self.registrations,
            &self.closes,
            &self.accepts,
            &self.others,
        ]
    }

    /// The parts of a mixed run that it made calls of, by name.
    pub fn split(&self) -> impl Iterator<Item = (&'static str, &Part)> {
        [
            ("registrations", &self.registrations),
            ("closes", &self.closes),
            ("accepts", &self.accepts),
        ]
        .into_iter()
        .filter(|(_, part)| !part.latencies_us.is_empty() || part.errors > 0)
    }

    /// Every kind together, sorted.
    pub fn total(&self) -> Part {
        let mut total = Part::default();
        for part in self.parts() {
            total.latencies_us.extend(&part.latencies_us);
            total.errors += part.errors;
        }
        total.latencies_us.sort_unstable();
        total
    }
}

pub struct Run<'a> {
    pub scenario: Scenario,
    pub concurrency: usize,
    pub warmup: f64,
    pub seconds: f64,
    /// Numbers the runs of the benchmark from 1.
    pub number: u64,
    pub clients: &'a Clients,
    pub fixture: &'a Arc<Fixture>,
    pub progress: &'a Arc<Progress>,
}

impl Run<'_> {
    pub async fn go(&self) -> Measured {
        let counter = Arc::new(AtomicU64::new(0));
        let warm_end = Instant::now() + Duration::from_secs_f64(self.warmup);
        let end = warm_end + Duration::from_secs_f64(self.seconds);
        let (scenario, run) = (self.scenario, self.number);
        let mut workers = Vec::new();
        for worker in 0..self.concurrency {
            let channel = self.clients.channel(worker);
            let fixture = Arc::clone(self.fixture);
            let progress = Arc::clone(self.progress);
            let counter = Arc::clone(&counter);
            workers.push(tokio::spawn(async move {
                let mut measured = Measured::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return measured;
                    }
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let kind = scenarios::kind(scenario, n);
                    let outcome =
                        scenarios::call(scenario, channel.clone(), &fixture, n, run).await;
                    let micros = started.elapsed().as_micros();
                    progress.count(kind, outcome.is_ok());
                    let measuring = started >= warm_end;
                    match outcome {
                        Ok(()) if measuring => {
                            let latency = u32::try_from(micros).unwrap_or(u32::MAX);
                            measured.part(kind).latencies_us.push(latency);
                        }
                        Ok(()) => {}
                        Err(error) => {
                            if measuring {
                                measured.part(kind).errors += 1;
                                measured.first_error.get_or_insert(error);
                            }
                            // A failing call would otherwise spin.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }));
        }
        let mut total = Measured::default();
        for worker in workers {
            total.absorb(worker.await.expect("worker"));
        }
        for part in [
            &mut total.registrations,
            &mut total.closes,
            &mut total.accepts,
            &mut total.others,
        ] {
            part.latencies_us.sort_unstable();
        }
        total
    }
}
