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
    connection::{Pool, WalRestart},
    tx::{Mode, WriteTx, WriterMemory},
    units::{self, OnUniqueViolation, ReadAhead, WriteUnit},
};
use crate::{Error, Result, event_stream::EventHub};

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

/// What a writer thread works with, besides its queue.
pub(crate) struct WriterDeps {
    pub(crate) pool: Pool,
    /// Where committed events are announced.
    pub(crate) hub: EventHub,
    /// SQLite: the checkpointer's requests to restart the WAL between batches.
    pub(crate) wal: Option<Arc<WalRestart>>,
    pub(crate) limits: WriterLimits,
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
    pub(crate) fn start(deps: WriterDeps, threads: usize) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel::<Box<dyn Job>>();
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        let max_queued = deps.limits.max_queued.max(1);
        let deps = Arc::new(deps);
        for index in 0..threads.max(1) {
            let deps = Arc::clone(&deps);
            let receiver = Arc::clone(&receiver);
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("minicrm-writer-{index}"))
                .spawn(move || supervise(&deps, &receiver, &queued))?;
        }
        Ok(Self {
            queue,
            queued,
            max_queued,
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
        crate::metrics::write_queued();
        if self.queue.send(Box::new(job)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::write_not_queued();
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

    /// See [`WriteUnit::INSERTS`].
    fn inserts(&self) -> bool;

    /// See [`WriteUnit::read_ahead`].
    fn read_ahead(&self, ahead: &mut ReadAhead);

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

    fn inserts(&self) -> bool {
        U::INSERTS
    }

    fn read_ahead(&self, ahead: &mut ReadAhead) {
        self.unit.read_ahead(ahead);
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
fn supervise(deps: &WriterDeps, receiver: &Mutex<Receiver<Box<dyn Job>>>, queued: &AtomicUsize) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| serve(deps, receiver, queued))) {
            Ok(()) => return,
            Err(_) => tracing::error!("the writer thread panicked; it serves on"),
        }
    }
}

fn serve(deps: &WriterDeps, receiver: &Mutex<Receiver<Box<dyn Job>>>, queued: &AtomicUsize) {
    let (pool, timeout) = (&deps.pool, deps.limits.timeout);
    let mut memory = WriterMemory::default();
    let mut rng = rand::rng();
    while let Some(mut batch) = next_batch(receiver, queued) {
        crate::metrics::write_taken(batch.len());
        let started = Instant::now();
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_with_connection(pool, &mut memory, &mut rng, &mut batch, timeout)
        }));
        let (committed, connection) = match run {
            Ok(run) => run,
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
        crate::metrics::write_committed(started.elapsed());
        tracing::trace!(
            units = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            mode = ?committed.as_ref().ok().map(|committed| committed.mode),
            "batch"
        );
        if let Ok(Committed {
            last_event: Some(last),
            ..
        }) = committed
        {
            deps.hub.published(last);
        }
        if let Err(error) = &committed {
            tracing::warn!(%error, units = batch.len(), "write transaction failed");
        }
        for job in batch {
            job.finish(committed.as_ref().map(|_| ()));
        }
        // Once the batch's callers are answered.
        if let (Ok(_), Some(mut connection), Some(wal)) = (&committed, connection, &deps.wal) {
            wal.restart_if_due(&mut connection);
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
            run_with_connection(pool, memory, rng, &mut single, timeout).0
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
/// the same time. Returns the connection too, after a commit.
fn run_with_connection(
    pool: &Pool,
    memory: &mut WriterMemory,
    rng: &mut dyn rand::RngCore,
    batch: &mut [Box<dyn Job>],
    timeout: Duration,
) -> (Result<Committed>, Option<PooledConnection>) {
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
        let mut connection = match pool.get_timeout(wait) {
            Ok(connection) => connection,
            Err(error) => return (Err(error.into()), None),
        };
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
            Err(failure) => return (Err(failure.error), None),
            Ok(committed) => return (Ok(committed), Some(connection)),
        }
    }
}

type PooledConnection = r2d2::PooledConnection<super::connection::Manager>;

/// A committed batch.
#[derive(Debug, Clone, Copy)]
struct Committed {
    /// The mode the transaction committed in.
    mode: Mode,
    /// The id of the last event it wrote, if any.
    last_event: Option<i64>,
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
) -> Result<Committed, Failure> {
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
                Ok(last_event) => return Ok(Committed { mode, last_event }),
                // Nothing more can be done on this connection, and the
                // commit may or may not have happened.
                Err(error) if error.is_connection_lost() => {
                    return Err(Failure {
                        error,
                        before_commit: false,
                    });
                }
                // Writing the buffered rows, cached loads, counters or events
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
        let inserting = batch.iter().filter(|job| job.inserts()).count();
        let mut ahead = ReadAhead::default();
        for job in batch.iter() {
            job.read_ahead(&mut ahead);
        }
        tx.prepare_batch(&ahead, inserting)?;
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

    use crate::db::test_db::{TestDb, or_skip};

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

    /// Runs the jobs as one batch, as the writer thread does, and checks that
    /// it committed in `mode`, the mode it starts in.
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
        assert_eq!(committed.expect("the batch commits").mode, mode);
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
    fn seeded(db: &TestDb) -> Database {
        seeded_with_room(db, 5)
    }

    fn seeded_with_room(db: &TestDb, max_load: i32) -> Database {
        let url = DatabaseUrl::parse(&db.url()).expect("url");
        let database = Database::open(&url).expect("database");
        let operator = run_one(
            &database,
            operators::Create(NewOperator {
                name: OperatorName::parse("name", "Ann").unwrap(),
                is_active: true,
                max_load: MaxLoad::parse("max_load", max_load).unwrap(),
            }),
        );
        let source = run_one(
            &database,
            sources::Create(NewSource {
                bot_id: BotId::parse("bot_id", "bot").unwrap(),
                name: SourceName::parse("name", "Bot").unwrap(),
                accept_timeout: None,
                sticky_window: None,
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
    fn failed_check_keeps_the_batch_as_the_others_left_it(mode: Mode, db: fn() -> Option<TestDb>) {
        let a = or_skip!(db());
        let b = or_skip!(db());
        let (with_failure, without) = (seeded(&a), seeded(&b));

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

        // The answers are kept: a unit whose caller has gone is not run.
        let (first, _first_answer) = job(registration("+100000001"));
        let (second, _second_answer) = job(registration("+100000002"));
        run_as_batch(&without, mode, vec![first, second]);
        let expected = contents(&without);
        assert!(expected.contains("(1, true, 2)"), "{expected}");
        assert_eq!(contents(&with_failure), expected);
    }

    /// Within one batch: a registration that finds the operator full waits,
    /// the close of the operator's contact hands the slot to it at once, and
    /// a second close of the same contact is refused, freeing nothing more.
    fn batch_sees_its_own_changes(mode: Mode, db: fn() -> Option<TestDb>) {
        let db = or_skip!(db());
        let database = seeded_with_room(&db, 1);
        let first = run_one(&database, registration("+100000001")).contact;
        assert_eq!(first.status, ContactStatus::Active);

        let (waiting, waiting_answer) = job(registration("+100000002"));
        let (close, close_answer) = job(contacts::Close(first.id));
        let (again, again_answer) = job(contacts::Close(first.id));
        run_as_batch(&database, mode, vec![waiting, close, again]);
        let waiting = answer::<contacts::Register>(waiting_answer).expect("registered");
        assert_eq!(waiting.contact.status, ContactStatus::Pending);
        let closed = answer::<contacts::Close>(close_answer).expect("closed");
        assert_eq!(closed.status, ContactStatus::Closed);
        assert_eq!(closed.operator_id, first.operator_id);
        assert!(matches!(
            answer::<contacts::Close>(again_answer),
            Err(crate::Error::FailedPrecondition(_))
        ));

        let mut connection = database.read_pool().get().unwrap();
        let reader = &mut Reader::new(&mut connection);
        let now = contacts::get(reader, waiting.contact.id).unwrap();
        assert_eq!(now.status, ContactStatus::Active, "dispatched by the close");
        assert_eq!(now.operator_id, first.operator_id);
        let operator = operators::get(reader, first.operator_id.unwrap()).unwrap();
        assert_eq!(operator.active_load, 1);
        let stats = stats::report(reader).unwrap();
        assert_eq!(
            (
                stats.rows[0].active,
                stats.rows[0].closed,
                stats.rows[0].total
            ),
            (1, 1, 2)
        );
        assert!(stats.pending.is_empty(), "{stats:?}");
    }

    /// Within one batch, units outside the buffers see what the buffered ones
    /// did and the other way round: a registration waits, a transfer frees
    /// its operator's slot, which goes to the waiting contact at once, and
    /// the new operator accepts the transferred one.
    fn routing_units_share_the_batch(mode: Mode, db: fn() -> Option<TestDb>) {
        let db = or_skip!(db());
        let database = seeded_with_room(&db, 1);
        let first = run_one(&database, registration("+100000001")).contact;
        let spare = run_one(
            &database,
            operators::Create(NewOperator {
                name: OperatorName::parse("name", "Bob").unwrap(),
                is_active: true,
                max_load: MaxLoad::parse("max_load", 1).unwrap(),
            }),
        );

        let (waiting, waiting_answer) = job(registration("+100000002"));
        let (transfer, transfer_answer) = job(crate::db::routing::Transfer {
            id: first.id,
            operator_id: Some(spare.id),
        });
        let (accept, accept_answer) = job(crate::db::routing::Accept {
            id: first.id,
            operator_id: spare.id,
        });
        let (wrong, wrong_answer) = job(crate::db::routing::Accept {
            id: first.id,
            operator_id: first.operator_id.unwrap(),
        });
        run_as_batch(&database, mode, vec![waiting, transfer, accept, wrong]);
        let waiting = answer::<contacts::Register>(waiting_answer).expect("registered");
        assert_eq!(waiting.contact.status, ContactStatus::Pending);
        let moved = answer::<crate::db::routing::Transfer>(transfer_answer).expect("moved");
        assert_eq!(moved.operator_id, Some(spare.id));
        let accepted = answer::<crate::db::routing::Accept>(accept_answer).expect("accepted");
        assert!(accepted.accepted_at.is_some());
        assert!(matches!(
            answer::<crate::db::routing::Accept>(wrong_answer),
            Err(crate::Error::FailedPrecondition(_))
        ));

        let mut connection = database.read_pool().get().unwrap();
        let reader = &mut Reader::new(&mut connection);
        let now = contacts::get(reader, waiting.contact.id).unwrap();
        assert_eq!(
            now.status,
            ContactStatus::Active,
            "dispatched by the transfer"
        );
        assert_eq!(now.operator_id, first.operator_id);
        assert_eq!(contacts::get(reader, first.id).unwrap(), accepted);
        for id in [first.operator_id.unwrap(), spare.id] {
            assert_eq!(operators::get(reader, id).unwrap().active_load, 1);
        }
        let stats = stats::report(reader).unwrap();
        let rows: Vec<_> = stats
            .rows
            .iter()
            .map(|row| (row.operator_id, row.active, row.total))
            .collect();
        assert_eq!(rows, [(first.operator_id.unwrap(), 1, 1), (spare.id, 1, 1)]);
        assert!(stats.pending.is_empty(), "{stats:?}");
    }

    /// A weight table replaced within a batch is drawn from by the units
    /// after it: the table that came with the source's lock (on PostgreSQL)
    /// or was read for an earlier draw is not used again.
    fn new_weight_table_drawn_from_in_the_batch(mode: Mode, db: fn() -> Option<TestDb>) {
        let db = or_skip!(db());
        let database = seeded(&db);
        let bob = run_one(
            &database,
            operators::Create(NewOperator {
                name: OperatorName::parse("name", "Bob").unwrap(),
                is_active: true,
                max_load: MaxLoad::parse("max_load", 5).unwrap(),
            }),
        );
        let (before, before_answer) = job(registration("+100000001"));
        let (table, table_answer) = job(sources::SetOperators {
            source_id: 1,
            table: weights(&[bob.id]),
        });
        let (after, after_answer) = job(registration("+100000002"));
        let (again, again_answer) = job(registration("+100000003"));
        run_as_batch(&database, mode, vec![before, table, after, again]);
        let before = answer::<contacts::Register>(before_answer).expect("registered");
        answer::<sources::SetOperators>(table_answer).expect("table set");
        let ann = before
            .contact
            .operator_id
            .expect("drawn from the old table");
        assert_ne!(ann, bob.id);
        for reply in [after_answer, again_answer] {
            let after = answer::<contacts::Register>(reply).expect("registered");
            assert_eq!(after.contact.operator_id, Some(bob.id), "the new table");
        }

        let mut connection = database.read_pool().get().unwrap();
        let reader = &mut Reader::new(&mut connection);
        assert_eq!(operators::get(reader, ann).unwrap().active_load, 1);
        assert_eq!(operators::get(reader, bob.id).unwrap().active_load, 2);
    }

    #[test]
    fn new_weight_table_drawn_from_direct_sqlite() {
        new_weight_table_drawn_from_in_the_batch(Mode::Direct, sqlite);
    }

    #[test]
    fn new_weight_table_drawn_from_savepoints_sqlite() {
        new_weight_table_drawn_from_in_the_batch(Mode::Savepoints, sqlite);
    }

    #[test]
    fn new_weight_table_drawn_from_direct_postgres() {
        new_weight_table_drawn_from_in_the_batch(Mode::Direct, TestDb::postgres);
    }

    #[test]
    fn new_weight_table_drawn_from_savepoints_postgres() {
        new_weight_table_drawn_from_in_the_batch(Mode::Savepoints, TestDb::postgres);
    }

    /// Closes in one batch hand their slots to the oldest pending contacts,
    /// in id order, past the first read of the queue (16 contacts; on
    /// PostgreSQL that read is made for every source before the units run).
    fn closes_dispatch_oldest_first_past_one_queue_read(mode: Mode, db: fn() -> Option<TestDb>) {
        let db = or_skip!(db());
        const ACTIVE: usize = 20;
        const PENDING: usize = 24;
        let database = seeded_with_room(&db, ACTIVE as i32);
        let register = |k: usize| run_one(&database, registration(&format!("+1000{k:05}")));
        let active: Vec<_> = (0..ACTIVE).map(register).collect();
        let pending: Vec<_> = (ACTIVE..ACTIVE + PENDING).map(register).collect();
        assert!(
            active
                .iter()
                .all(|r| r.contact.status == ContactStatus::Active)
        );
        assert!(
            pending
                .iter()
                .all(|r| r.contact.status == ContactStatus::Pending)
        );

        let (jobs, answers): (Vec<_>, Vec<_>) = active
            .iter()
            .map(|r| job(contacts::Close(r.contact.id)))
            .unzip();
        run_as_batch(&database, mode, jobs);
        for closed in answers {
            assert_eq!(
                answer::<contacts::Close>(closed).unwrap().status,
                ContactStatus::Closed
            );
        }

        let mut connection = database.read_pool().get().unwrap();
        let reader = &mut Reader::new(&mut connection);
        let statuses: Vec<_> = pending
            .iter()
            .map(|r| contacts::get(reader, r.contact.id).unwrap().status)
            .collect();
        let mut expected = vec![ContactStatus::Active; ACTIVE];
        expected.resize(PENDING, ContactStatus::Pending);
        assert_eq!(
            statuses, expected,
            "the oldest {ACTIVE} of {PENDING} dispatched"
        );
        let operator = operators::list(reader, PageRequest::parse(10, "").unwrap(), None)
            .unwrap()
            .items;
        assert_eq!(operator[0].active_load, ACTIVE as i32);
    }

    #[test]
    fn closes_dispatch_oldest_first_direct_sqlite() {
        closes_dispatch_oldest_first_past_one_queue_read(Mode::Direct, sqlite);
    }

    #[test]
    fn closes_dispatch_oldest_first_savepoints_sqlite() {
        closes_dispatch_oldest_first_past_one_queue_read(Mode::Savepoints, sqlite);
    }

    #[test]
    fn closes_dispatch_oldest_first_direct_postgres() {
        closes_dispatch_oldest_first_past_one_queue_read(Mode::Direct, TestDb::postgres);
    }

    #[test]
    fn closes_dispatch_oldest_first_savepoints_postgres() {
        closes_dispatch_oldest_first_past_one_queue_read(Mode::Savepoints, TestDb::postgres);
    }

    #[test]
    fn routing_units_share_the_batch_direct_sqlite() {
        routing_units_share_the_batch(Mode::Direct, sqlite);
    }

    #[test]
    fn routing_units_share_the_batch_savepoints_sqlite() {
        routing_units_share_the_batch(Mode::Savepoints, sqlite);
    }

    #[test]
    fn routing_units_share_the_batch_direct_postgres() {
        routing_units_share_the_batch(Mode::Direct, TestDb::postgres);
    }

    #[test]
    fn routing_units_share_the_batch_savepoints_postgres() {
        routing_units_share_the_batch(Mode::Savepoints, TestDb::postgres);
    }

    #[test]
    fn batch_sees_its_own_changes_direct_sqlite() {
        batch_sees_its_own_changes(Mode::Direct, sqlite);
    }

    #[test]
    fn batch_sees_its_own_changes_savepoints_sqlite() {
        batch_sees_its_own_changes(Mode::Savepoints, sqlite);
    }

    #[test]
    fn batch_sees_its_own_changes_direct_postgres() {
        batch_sees_its_own_changes(Mode::Direct, TestDb::postgres);
    }

    #[test]
    fn batch_sees_its_own_changes_savepoints_postgres() {
        batch_sees_its_own_changes(Mode::Savepoints, TestDb::postgres);
    }

    fn sqlite() -> Option<TestDb> {
        Some(TestDb::sqlite())
    }

    #[test]
    fn failed_check_in_direct_mode_keeps_the_others_writes_sqlite() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Direct, sqlite);
    }

    #[test]
    fn failed_check_in_savepoints_mode_keeps_the_others_writes_sqlite() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Savepoints, sqlite);
    }

    #[test]
    fn failed_check_in_direct_mode_keeps_the_others_writes_postgres() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Direct, TestDb::postgres);
    }

    #[test]
    fn failed_check_in_savepoints_mode_keeps_the_others_writes_postgres() {
        failed_check_keeps_the_batch_as_the_others_left_it(Mode::Savepoints, TestDb::postgres);
    }
}
