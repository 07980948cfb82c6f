//! Group commit. A writer thread takes every unit of work that has queued
//! up, runs them one after the other in one transaction (see [`Mode`]),
//! commits once, and only then answers each caller. A commit costs about as
//! much for one unit as for a hundred, and callers pay no hand-off to tokio's
//! blocking pool.
//!
//! Faults (API.md, "Limits and faults"):
//! - **Overload.** At most `max_queued` units wait in the queue; beyond that
//!   a call answers RESOURCE_EXHAUSTED at once and is never queued.
//! - **Deadlines.** A unit whose caller's deadline has passed, or whose
//!   caller has gone, when its turn comes is not run: DEADLINE_EXCEEDED.
//! - **Database faults.** No call waits for the database longer than
//!   `timeout` (`--db-timeout`) past its arrival: a batch waits for a
//!   connection only as long as its oldest unit has left, and runs again
//!   after a conflict only within the timeout; then it answers UNAVAILABLE.
//!   A pooled connection the server closed meanwhile is replaced once.
//! - **Panics.** A unit that panics answers INTERNAL; the rest of its batch
//!   runs again, one unit per transaction, and the thread goes on serving.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use tracing::Span;

use super::{
    DbConnection,
    connection::Pool,
    leads::ReadAhead,
    tx::{Mode, WriteTx, WriterMemory},
    units::{self, OnUniqueViolation, WriteUnit},
};
use crate::{Error, Result};

/// The most units one transaction takes: bounds the latency a full batch adds.
const MAX_BATCH: usize = 128;
/// Attempts of a batch the database aborts over a conflict (deadlock,
/// serialization failure, a unique index two transactions raced for).
const MAX_ATTEMPTS: u32 = 16;
/// The shortest wait for a connection, even when the batch's time is up: a
/// healthy pool hands one over at once.
const MIN_CHECKOUT_WAIT: Duration = Duration::from_millis(20);

/// How much the writer takes on, and how long it waits for the database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterLimits {
    /// Units that may wait in the queue at once (`--max-queued-writes`).
    pub(crate) max_queued: usize,
    /// `--db-timeout`.
    pub(crate) timeout: Duration,
}

/// The handle to the writer threads; they stop when every handle is dropped,
/// after finishing what was queued.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: Sender<Box<dyn Job>>,
    /// Units sent and not yet taken into a batch.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Writer {
    pub(crate) fn start(pool: Pool, threads: usize, limits: WriterLimits) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel::<Box<dyn Job>>();
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for index in 0..threads.max(1) {
            let pool = pool.clone();
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("minicrm-writer-{index}"))
                .spawn(move || supervise(&pool, &receiver, &queued, limits.timeout))?;
        }
        Ok(Self {
            queue,
            queued,
            max_queued: limits.max_queued.max(1),
        })
    }

    /// Runs the unit in a write transaction and answers once it is committed.
    pub(crate) async fn run<U: WriteUnit>(&self, unit: U) -> Result<U::Output> {
        let deadline = crate::deadline::current().map(tokio::time::Instant::into_std);
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Error::DeadlineExceeded);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted(format!(
                "{} write calls are waiting already; try again later",
                self.max_queued
            )));
        }
        let (reply, answer) = oneshot::channel();
        let job = Queued {
            unit,
            span: Span::current(),
            outcome: None,
            reply,
            deadline,
            enqueued: Instant::now(),
        };
        if self.queue.send(Box::new(job)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Unavailable("the writer has stopped".into()));
        }
        answer
            .await
            .map_err(|_| Error::Internal("the writer dropped a unit of work".into()))?
    }
}

/// A queued unit, its caller's span and its reply channel, with the unit's
/// type erased so that one batch can hold units of every kind.
trait Job: Send {
    /// Runs the unit. `Err` means the whole transaction must roll back and
    /// run again: a conflict with a concurrent transaction, or (in `Direct`
    /// mode) any fault.
    fn run(&mut self, tx: &mut WriteTx<'_>) -> Result<(), Error>;

    /// Answers the caller: the unit's own outcome if the transaction committed.
    fn finish(self: Box<Self>, committed: Result<(), &Error>);

    /// See [`WriteUnit::STAGES_INSERTS`].
    fn stages_inserts(&self) -> bool;

    /// See [`WriteUnit::read_ahead`].
    fn read_ahead(&self, leads: &mut ReadAhead);

    /// When the caller sent it.
    fn enqueued(&self) -> Instant;
}

struct Queued<U: WriteUnit> {
    unit: U,
    span: Span,
    outcome: Option<Result<U::Output>>,
    reply: oneshot::Sender<Result<U::Output>>,
    /// The caller's deadline, if it set one.
    deadline: Option<Instant>,
    enqueued: Instant,
}

impl<U: WriteUnit> Job for Queued<U> {
    fn run(&mut self, tx: &mut WriteTx<'_>) -> Result<(), Error> {
        let _entered = self.span.enter();
        // Nobody waits for the answer any more: the work is not started.
        if self.reply.is_closed() || self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.outcome = Some(Err(Error::DeadlineExceeded));
            return Ok(());
        }
        let retry_unique = U::ON_UNIQUE_VIOLATION == OnUniqueViolation::Retry;
        match units::run(tx, &self.unit) {
            Err(error) if error.is_transient_conflict(retry_unique) => Err(error),
            // The transaction cannot go on: the connection is gone, or the
            // database cannot take the work now.
            Err(error) if error.is_unavailable() => Err(error),
            Err(error) if tx.mode() == Mode::Direct && error.is_fault() => Err(error),
            outcome => {
                self.outcome = Some(outcome);
                Ok(())
            }
        }
    }

    fn stages_inserts(&self) -> bool {
        U::STAGES_INSERTS
    }

    fn read_ahead(&self, leads: &mut ReadAhead) {
        self.unit.read_ahead(leads);
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
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

/// Serves until every [`Writer`] handle is gone. A panic that escapes
/// [`serve`] (none is known to) starts it again: the thread never dies
/// silently, leaving calls to queue for nobody.
fn supervise(
    pool: &Pool,
    receiver: &Mutex<Receiver<Box<dyn Job>>>,
    queued: &AtomicUsize,
    timeout: Duration,
) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| serve(pool, receiver, queued, timeout))) {
            Ok(()) => return,
            Err(_) => tracing::error!("the writer thread panicked; it serves on"),
        }
    }
}

fn serve(
    pool: &Pool,
    receiver: &Mutex<Receiver<Box<dyn Job>>>,
    queued: &AtomicUsize,
    timeout: Duration,
) {
    let mut memory = WriterMemory::default();
    let mut rng = rand::rng();
    while let Some(mut batch) = next_batch(receiver, queued) {
        let started = Instant::now();
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_with_connection(pool, &mut memory, &mut rng, &mut batch, timeout)
        }));
        let committed = match run {
            Ok(committed) => committed,
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(&panic),
                    units = batch.len(),
                    "a write batch panicked; running its units one by one"
                );
                memory = WriterMemory::default();
                run_one_by_one(pool, &mut memory, &mut rng, batch, timeout);
                continue;
            }
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
    }
}

/// After a panic: each unit in a transaction of its own, so that only the
/// one that panics answers INTERNAL.
fn run_one_by_one(
    pool: &Pool,
    memory: &mut WriterMemory,
    rng: &mut dyn rand::RngCore,
    batch: Vec<Box<dyn Job>>,
    timeout: Duration,
) {
    for job in batch {
        let mut single = vec![job];
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_with_connection(pool, memory, rng, &mut single, timeout)
        }));
        let committed = match run {
            Ok(committed) => committed,
            Err(panic) => {
                tracing::error!(panic = panic_message(&panic), "a unit of work panicked");
                *memory = WriterMemory::default();
                Err(Error::Internal("a unit of work panicked".into()))
            }
        };
        for job in single {
            job.finish(committed.as_ref().map(|_| ()));
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Waits for one unit, then takes whatever else has queued, up to [`MAX_BATCH`].
/// `None` once every [`Writer`] handle is gone and the queue is empty.
fn next_batch(
    receiver: &Mutex<Receiver<Box<dyn Job>>>,
    queued: &AtomicUsize,
) -> Option<Vec<Box<dyn Job>>> {
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
    queued.fetch_sub(batch.len(), Ordering::AcqRel);
    Some(batch)
}

/// Takes a connection and runs the batch on it. The wait for a connection
/// ends when the batch's oldest unit has waited `timeout`; a connection that
/// turns out lost before anything was committed is replaced, once, within
/// the same time.
fn run_with_connection(
    pool: &Pool,
    memory: &mut WriterMemory,
    rng: &mut dyn rand::RngCore,
    batch: &mut [Box<dyn Job>],
    timeout: Duration,
) -> Result<()> {
    let oldest = batch
        .iter()
        .map(|job| job.enqueued())
        .min()
        .unwrap_or_else(Instant::now);
    let give_up = oldest + timeout;
    let mut replaced = false;
    loop {
        let wait = give_up
            .saturating_duration_since(Instant::now())
            .max(MIN_CHECKOUT_WAIT);
        let mut connection = pool.get_timeout(wait)?;
        let retry_until = Instant::now() + timeout;
        match run_batch(
            &mut connection,
            memory,
            rng,
            batch,
            Mode::Direct,
            retry_until,
        ) {
            Err(failure)
                if failure.before_commit
                    && failure.error.is_connection_lost()
                    && !replaced
                    && Instant::now() < give_up =>
            {
                // Typically an idle pooled connection the server closed (it
                // restarted, or the network was cut): dropped from the pool
                // now (see `ConnectionWatch`), and nothing was committed.
                tracing::debug!(error = %failure.error, "connection lost; taking another");
                replaced = true;
            }
            outcome => return outcome.map_err(|failure| failure.error),
        }
    }
}

/// Why a batch did not commit.
struct Failure {
    error: Error,
    /// Whether it failed before COMMIT was sent, so that nothing of it can
    /// have been committed. A connection lost during the commit leaves that
    /// unknown.
    before_commit: bool,
}

impl Failure {
    fn before_commit(error: Error) -> Self {
        Self {
            error,
            before_commit: true,
        }
    }
}

/// Runs the batch in one transaction, first in `mode` (the writer starts in
/// `Direct`); after a failure, again in `Savepoints` mode. A conflict runs it
/// again, with a pause, until `retry_until`.
fn run_batch(
    connection: &mut DbConnection,
    memory: &mut WriterMemory,
    rng: &mut dyn rand::RngCore,
    batch: &mut [Box<dyn Job>],
    mut mode: Mode,
    retry_until: Instant,
) -> Result<(), Failure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx =
            WriteTx::begin(connection, mode, memory, rng).map_err(Failure::before_commit)?;
        let failure = match run_units(&mut tx, batch) {
            Err(failure) => {
                tx.rollback();
                failure
            }
            Ok(()) => match tx.commit() {
                Ok(()) => return Ok(()),
                // Nothing more can be done on this connection, and the
                // commit may or may not have happened.
                Err(error) if error.is_connection_lost() => {
                    return Err(Failure {
                        error,
                        before_commit: false,
                    });
                }
                // Writing the staged contacts, cached loads or counters
                // failed, or COMMIT did: nothing is committed, and
                // `Savepoints` mode may get through.
                Err(error) if mode == Mode::Direct => error,
                Err(error) => return Err(Failure::before_commit(error)),
            },
        };
        let conflict = failure.is_transient_conflict(true);
        let out_of_time = attempt > 1 && Instant::now() >= retry_until;
        if failure.is_unavailable() && !conflict
            || attempt >= MAX_ATTEMPTS
            || (conflict && out_of_time)
        {
            return Err(Failure::before_commit(failure));
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
fn run_units(tx: &mut WriteTx<'_>, batch: &mut [Box<dyn Job>]) -> Result<()> {
    if tx.mode() == Mode::Direct {
        let staging = batch.iter().filter(|job| job.stages_inserts()).count();
        let mut ahead = ReadAhead::default();
        for job in batch.iter() {
            job.read_ahead(&mut ahead);
        }
        tx.prepare_batch(&ahead, staging)?;
    }
    for job in batch.iter_mut() {
        job.run(tx)?;
    }
    Ok(())
}

/// Short, growing, jittered pauses keep transactions that collided from
/// colliding again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling_micros = 200u64 << attempt.min(6);
    Duration::from_micros(rand::random_range(0..ceiling_micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::{Database, DatabaseUrl, contacts, leads, operators, reader::Reader, sources, stats},
        domain::{
            BotId, ContactFilter, ContactStatus, LeadIdentity, LeadName, MaxLoad, NewContact,
            NewOperator, NewSource, OperatorName, PageRequest, Phone, SourceKey, SourceName,
            WeightTable,
        },
    };

    type Answer<U> = oneshot::Receiver<Result<<U as WriteUnit>::Output>>;

    fn job<U: WriteUnit>(unit: U) -> (Box<dyn Job>, Answer<U>) {
        let (reply, answer) = oneshot::channel();
        let job = Queued {
            unit,
            span: Span::none(),
            outcome: None,
            reply,
            deadline: None,
            enqueued: Instant::now(),
        };
        (Box::new(job), answer)
    }

    /// Runs the jobs as one batch, as the writer thread does, starting in `mode`.
    fn run_as_batch(database: &Database, mode: Mode, mut batch: Vec<Box<dyn Job>>) {
        let mut connection = database.write_pool().get().expect("connection");
        let committed = run_batch(
            &mut connection,
            &mut WriterMemory::default(),
            &mut rand::rng(),
            &mut batch,
            mode,
            Instant::now() + Duration::from_secs(2),
        )
        .map_err(|failure| failure.error);
        for job in batch {
            job.finish(committed.as_ref().map(|_| ()));
        }
    }

    fn answer<U: WriteUnit>(mut answer: Answer<U>) -> Result<U::Output> {
        answer.try_recv().expect("the unit was answered")
    }

    fn run_one<U: WriteUnit>(database: &Database, unit: U) -> U::Output {
        let (job, reply) = job(unit);
        run_as_batch(database, Mode::Direct, vec![job]);
        answer::<U>(reply).expect("the unit succeeds")
    }

    /// One source (id 1) served by one operator with room for 5.
    fn seeded(dir: &tempfile::TempDir, name: &str) -> Database {
        let path = dir.path().join(name).display().to_string();
        let database = Database::open(&DatabaseUrl::Sqlite(path)).expect("database");
        let operator = run_one(
            &database,
            operators::Create(NewOperator {
                name: OperatorName::parse("name", "Ann").unwrap(),
                is_active: true,
                max_load: MaxLoad::parse("max_load", 5).unwrap(),
            }),
        );
        let source = run_one(
            &database,
            sources::Create(NewSource {
                bot_id: BotId::parse("bot_id", "bot").unwrap(),
                name: SourceName::parse("name", "Bot").unwrap(),
            }),
        );
        run_one(
            &database,
            sources::SetOperators {
                source_id: source.id,
                table: weights(&[operator.id]),
            },
        );
        database
    }

    fn weights(operator_ids: &[i64]) -> WeightTable {
        WeightTable::parse(
            "operators",
            operator_ids.iter().map(|&id| (id, 1)).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn registration(phone: &str) -> contacts::Register {
        contacts::Register(NewContact {
            source: SourceKey::Id(1),
            lead: LeadIdentity::new(
                None,
                Phone::parse("phone", phone).unwrap(),
                None,
                LeadName::parse("name", "").unwrap(),
                "lead",
            )
            .unwrap(),
            request_id: None,
        })
    }

    /// Everything the units write, timestamps aside.
    fn contents(database: &Database) -> String {
        let mut connection = database.read_pool().get().expect("connection");
        let reader = &mut Reader::new(&mut connection);
        let page = PageRequest::parse(1000, "").unwrap();
        let operators: Vec<_> = operators::list(reader, page, None)
            .unwrap()
            .items
            .into_iter()
            .map(|operator| (operator.id, operator.is_active, operator.active_load))
            .collect();
        let contacts: Vec<_> = contacts::list(reader, page, &ContactFilter::default())
            .unwrap()
            .items
            .into_iter()
            .map(|c| (c.id, c.lead_id, c.operator_id, c.status))
            .collect();
        let leads: Vec<_> = leads::list(reader, page)
            .unwrap()
            .items
            .into_iter()
            .map(|lead| (lead.id, lead.phone))
            .collect();
        let table = sources::list_operators(reader, 1).unwrap();
        let stats = stats::report(reader).unwrap();
        format!("{operators:?}\n{contacts:?}\n{leads:?}\n{table:?}\n{stats:?}")
    }

    /// A unit whose check fails after other units of the same batch wrote
    /// leaves the database exactly as those units left it, in either mode.
    fn failed_check_keeps_the_batch_as_the_others_left_it(mode: Mode) {
        let dir = tempfile::tempdir().unwrap();
        let (with_failure, without) = (seeded(&dir, "a.db"), seeded(&dir, "b.db"));

        let (first, first_answer) = job(registration("+100000001"));
        // Names an operator that does not exist: NOT_FOUND from its check.
        let (failing, failing_answer) = job(sources::SetOperators {
            source_id: 1,
            table: weights(&[1, 999]),
        });
        let (second, second_answer) = job(registration("+100000002"));
        run_as_batch(&with_failure, mode, vec![first, failing, second]);
        assert!(matches!(
            answer::<sources::SetOperators>(failing_answer),
            Err(crate::Error::NotFound(_))
        ));
        for registered in [first_answer, second_answer] {
            let registered = answer::<contacts::Register>(registered).expect("registered");
            assert_eq!(registered.contact.status, ContactStatus::Active);
        }

        let (first, _first) = job(registration("+100000001"));
        let (second, _second) = job(registration("+100000002"));
        run_as_batch(&without, mode, vec![first, second]);
        let expected = contents(&without);
        assert!(expected.contains("(1, true, 2)"), "{expected}");
        assert_eq!(contents(&with_failure), expected);
    }

    #[test]
    fn failed_check_in_direct_mode_keeps_the_others_writes() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Direct);
    }

    #[test]
    fn failed_check_in_savepoints_mode_keeps_the_others_writes() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Savepoints);
    }

    /// A unit that sleeps in its apply (keeping the writer busy), or panics.
    enum Test {
        Sleep(Duration),
        Panic,
    }

    impl WriteUnit for Test {
        type Output = ();
        type Plan = ();

        fn check(&self, _: &mut units::CheckContext<'_, '_>) -> Result<units::Checked<(), ()>> {
            Ok(units::Checked::Apply(()))
        }

        fn apply(&self, _: &mut WriteTx<'_>, (): ()) -> Result<(), crate::error::Fault> {
            match self {
                Self::Sleep(pause) => std::thread::sleep(*pause),
                Self::Panic => panic!("a unit of work blew up"),
            }
            Ok(())
        }
    }

    fn writer(database: &Database, max_queued: usize) -> Writer {
        let limits = WriterLimits {
            max_queued,
            timeout: Duration::from_secs(2),
        };
        Writer::start(database.write_pool().clone(), 1, limits).expect("writer")
    }

    fn contact_count(database: &Database) -> usize {
        let mut connection = database.read_pool().get().expect("connection");
        let reader = &mut Reader::new(&mut connection);
        let page = PageRequest::parse(1000, "").unwrap();
        contacts::list(reader, page, &ContactFilter::default())
            .unwrap()
            .items
            .len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_that_panics_answers_internal_and_the_writer_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let database = seeded(&dir, "panic.db");
        let writer = writer(&database, 100);
        let (before, panicked, after) = tokio::join!(
            writer.run(registration("+100000001")),
            writer.run(Test::Panic),
            writer.run(registration("+100000002")),
        );
        assert!(before.is_ok(), "{before:?}");
        assert!(matches!(panicked, Err(Error::Internal(_))), "{panicked:?}");
        assert!(after.is_ok(), "{after:?}");
        writer
            .run(registration("+100000003"))
            .await
            .expect("the writer serves on");
        assert_eq!(contact_count(&database), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_the_queue_bound_writes_are_refused_at_once_and_written_never() {
        let dir = tempfile::tempdir().unwrap();
        let database = seeded(&dir, "bound.db");
        let writer = writer(&database, 2);
        let busy = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.run(Test::Sleep(Duration::from_millis(400))).await })
        };
        // The writer has taken the sleeper: the queue is empty again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut calls = Vec::new();
        for index in 0..6 {
            let writer = writer.clone();
            calls.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = writer.run(registration(&format!("+10000001{index}"))).await;
                (answer, started.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut refused = 0;
        for call in calls {
            let (answer, elapsed) = call.await.unwrap();
            match answer {
                Ok(_) => {}
                Err(Error::ResourceExhausted(_)) => {
                    refused += 1;
                    assert!(elapsed < Duration::from_millis(50), "at once: {elapsed:?}");
                }
                Err(error) => panic!("{error}"),
            }
        }
        busy.await.unwrap().unwrap();
        assert_eq!(refused, 4, "two wait, four are refused");
        assert_eq!(contact_count(&database), 2, "refused calls wrote nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_whose_deadline_passed_in_the_queue_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let database = seeded(&dir, "deadline.db");
        let writer = writer(&database, 100);
        let busy = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.run(Test::Sleep(Duration::from_millis(300))).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        let late =
            crate::deadline::with_deadline(Some(soon), writer.run(registration("+100000001")));
        let in_time = crate::deadline::with_deadline(
            Some(soon + Duration::from_secs(5)),
            writer.run(registration("+100000002")),
        );
        let (late, in_time) = tokio::join!(late, in_time);
        busy.await.unwrap().unwrap();
        assert!(matches!(late, Err(Error::DeadlineExceeded)), "{late:?}");
        assert!(in_time.is_ok(), "{in_time:?}");
        assert_eq!(contact_count(&database), 1, "the late one was not run");
        let already = crate::deadline::with_deadline(
            Some(tokio::time::Instant::now()),
            writer.run(registration("+100000003")),
        )
        .await;
        assert!(
            matches!(already, Err(Error::DeadlineExceeded)),
            "{already:?}"
        );
    }
}
