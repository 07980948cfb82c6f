//! Group commit. Writer threads take every unit of work that has queued up,
//! run each in its own savepoint inside one transaction, commit once, and only
//! then answer each caller. A commit costs about as much for one unit as for a
//! hundred, and callers pay no hand-off to tokio's blocking pool.

use std::{
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, Sender},
    },
    time::Duration,
};

use tokio::sync::oneshot;
use tracing::Span;

use super::{DbConnection, connection::Pool, contacts, transaction};
use crate::{Error, Result};

/// The most units one transaction takes: bounds the latency a full batch adds.
const MAX_BATCH: usize = 128;
/// Attempts of a batch the database aborts over a conflict (deadlock,
/// serialization failure, a unique index two transactions raced for).
const MAX_ATTEMPTS: u32 = 16;

/// Whether a unique violation means "a concurrent transaction inserted the
/// same row first: run again and find it" rather than a conflict to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUniqueViolation {
    Fail,
    Retry,
}

/// The handle to the writer threads; they stop when every handle is dropped,
/// after finishing what was queued.
#[derive(Clone)]
pub struct Writer {
    queue: Sender<Box<dyn Job>>,
}

impl Writer {
    pub(crate) fn start(pool: Pool, threads: usize) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel::<Box<dyn Job>>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let pool = pool.clone();
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("minicrm-writer-{index}"))
                .spawn(move || serve(&pool, &receiver))?;
        }
        Ok(Self { queue })
    }

    /// Runs `work` in a write transaction and answers once it is committed.
    pub async fn run<T, F>(&self, on_unique: OnUniqueViolation, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T> + Send + 'static,
    {
        self.submit(on_unique, false, work).await
    }

    /// Like [`Writer::run`] for a registration: it may stage one contact for
    /// the batch's multi-row insert, with an id the batch takes ahead.
    pub async fn run_registration<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T> + Send + 'static,
    {
        self.submit(OnUniqueViolation::Retry, true, work).await
    }

    async fn submit<T, F>(
        &self,
        on_unique: OnUniqueViolation,
        registers: bool,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let unit = Unit {
            work,
            registers,
            span: Span::current(),
            retry_unique: on_unique == OnUniqueViolation::Retry,
            outcome: None,
            reply,
        };
        self.queue
            .send(Box::new(unit))
            .map_err(|_| Error::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the writer dropped a unit of work".into()))?
    }
}

/// How the units of a transaction are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One after the other, with nothing in between: the fast path. A unit
    /// that answers with a domain error (NOT_FOUND, INVALID_ARGUMENT...) has
    /// written nothing, by the construction of every unit; a database error
    /// may have left partial writes (or, on PostgreSQL, an aborted
    /// transaction), so the whole batch then runs again in `Savepoints` mode.
    Direct,
    /// Each unit in its own savepoint, so that a failing unit undoes only its
    /// own writes.
    Savepoints,
}

trait Job: Send {
    /// Runs the unit. `Err` means the whole transaction must roll back and
    /// run again: a conflict with a concurrent transaction, or (in `Direct`
    /// mode) any database error.
    fn run(&mut self, connection: &mut DbConnection, mode: Mode) -> Result<(), Error>;

    /// Answers the caller: the unit's own outcome if the transaction committed.
    fn finish(self: Box<Self>, committed: Result<(), &Error>);

    /// Whether the unit is a registration, which may stage a contact.
    fn registers(&self) -> bool;
}

struct Unit<T, F> {
    work: F,
    registers: bool,
    span: Span,
    retry_unique: bool,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Unit<T, F>
where
    T: Send,
    F: Fn(&mut DbConnection) -> Result<T> + Send,
{
    fn run(&mut self, connection: &mut DbConnection, mode: Mode) -> Result<(), Error> {
        let _entered = self.span.enter();
        let outcome = match mode {
            Mode::Direct => transaction::direct_unit(connection, &self.work),
            Mode::Savepoints => transaction::unit(connection, &self.work),
        };
        match outcome {
            Err(error) if error.is_transient_conflict(self.retry_unique) => Err(error),
            Err(error) if mode == Mode::Direct && error.is_fault() => Err(error),
            outcome => {
                self.outcome = Some(outcome);
                Ok(())
            }
        }
    }

    fn registers(&self) -> bool {
        self.registers
    }

    fn finish(self: Box<Self>, committed: Result<(), &Error>) {
        let answer = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(Error::Internal("a unit of work did not run".into())),
            (Err(error), _) => Err(error.lost_transaction()),
        };
        // The caller may have gone away (client cancelled); the work stands.
        let _ = self.reply.send(answer);
    }
}

fn serve(pool: &Pool, receiver: &Mutex<Receiver<Box<dyn Job>>>) {
    while let Some(mut batch) = next_batch(receiver) {
        let started = std::time::Instant::now();
        let (committed, connection) = match pool.get() {
            Ok(mut connection) => (run_batch(&mut connection, &mut batch), Some(connection)),
            Err(error) => (Err(Error::Pool(error)), None),
        };
        tracing::trace!(
            units = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch"
        );
        if let Err(error) = &committed {
            tracing::warn!(%error, units = batch.len(), "write transaction failed");
        }
        for job in batch {
            job.finish(committed.as_ref().map(|_| ()));
        }
        if let (Ok(()), Some(mut connection)) = (&committed, connection) {
            super::connection::restart_wal_if_due(&mut connection);
        }
    }
}

/// Waits for one unit, then takes whatever else has queued, up to [`MAX_BATCH`].
/// `None` once every [`Writer`] handle is gone and the queue is empty.
fn next_batch(receiver: &Mutex<Receiver<Box<dyn Job>>>) -> Option<Vec<Box<dyn Job>>> {
    let receiver = receiver
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = receiver.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn run_batch(connection: &mut DbConnection, batch: &mut [Box<dyn Job>]) -> Result<()> {
    let mut attempt = 0;
    let mut mode = Mode::Direct;
    loop {
        attempt += 1;
        transaction::begin(connection, mode == Mode::Direct)?;
        let failure = match run_units(connection, batch, mode) {
            Err(failure) => failure,
            Ok(()) => match transaction::commit(connection) {
                Ok(()) => return Ok(()),
                // Writing the staged contacts, cached loads or counters
                // failed, or COMMIT did: nothing is committed, and the careful
                // mode may get through.
                Err(error) if mode == Mode::Direct => error,
                Err(error) => {
                    transaction::rollback(connection);
                    return Err(error);
                }
            },
        };
        transaction::rollback(connection);
        if attempt >= MAX_ATTEMPTS {
            return Err(failure);
        }
        tracing::debug!(error = %failure, attempt, ?mode, "running the batch again");
        if mode == Mode::Direct {
            mode = Mode::Savepoints;
        } else {
            std::thread::sleep(backoff(attempt));
        }
    }
}

/// Runs the units in order. `Err`: the transaction must roll back.
fn run_units(connection: &mut DbConnection, batch: &mut [Box<dyn Job>], mode: Mode) -> Result<()> {
    if mode == Mode::Direct {
        let registrations = batch.iter().filter(|job| job.registers()).count();
        contacts::reserve_ids(connection, registrations)?;
    }
    for job in batch.iter_mut() {
        if mode == Mode::Direct && !job.registers() {
            // Other units read contacts: they must see the staged ones.
            contacts::flush_staged(connection)?;
        }
        job.run(connection, mode)?;
    }
    Ok(())
}

/// Short, growing, jittered pauses keep transactions that collided from
/// colliding again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling_micros = 200u64 << attempt.min(6);
    Duration::from_micros(rand::random_range(0..ceiling_micros))
}
