//! The async face of the storage layer. Reads run on tokio's blocking pool,
//! each with a pooled connection; writes are units of work that the writer
//! thread runs in group-committed transactions (see `db::writer`). Neither
//! ever blocks an async worker thread.

use tracing::Span;

use crate::{
    Error, Result,
    db::{self, Backend, Database, Writer, WriterDeps, WriterLimits, reader::Reader},
    domain::{
        Contact, ContactEvent, ContactFilter, EventCursor, EventFilter, Lead, NewContact,
        NewOperator, NewSource, Operator, OperatorChanges, Page, PageRequest, Registration,
        RequestId, Source, SourceChanges, SourceKey, StatsReport, Timestamp, WeightTable,
    },
    event_stream::EventHub,
};

/// Writer threads, each with its own connection and batches. One for
/// SQLite, which takes one writer at a time anyway; one for PostgreSQL too:
/// a second measured no faster (its transactions wait on the first's row
/// locks), though the writer supports several. PostgreSQL's write pool is
/// sized for one (`POSTGRES_WRITE_POOL_SIZE` in `db/connection.rs`).
const WRITERS: usize = 1;
/// Lapses per unit of work: enough that a round of them costs few units
/// (each flushes its batch's buffers and fills a place in the write queue),
/// few enough that one unit does not hold up its batch for long.
const LAPSES_PER_UNIT: usize = 64;

#[derive(Clone)]
pub struct Repository {
    database: Database,
    writer: Writer,
    hub: EventHub,
}

impl Repository {
    /// Starts the writer threads; at most `max_queued_writes` write calls
    /// wait for them at once.
    pub(crate) fn new(database: Database, max_queued_writes: usize) -> std::io::Result<Self> {
        let hub = EventHub::default();
        let deps = WriterDeps {
            pool: database.write_pool().clone(),
            hub: hub.clone(),
            wal: database.wal_restart(),
            limits: WriterLimits {
                max_queued: max_queued_writes,
                timeout: database.timeout(),
            },
        };
        let writer = Writer::start(deps, WRITERS)?;
        Ok(Self {
            database,
            writer,
            hub,
        })
    }

    /// Where watch streams learn of new events and of shutdown.
    pub fn event_hub(&self) -> &EventHub {
        &self.hub
    }

    pub fn backend(&self) -> Backend {
        self.database.backend()
    }

    /// `--db-timeout`.
    pub fn db_timeout(&self) -> std::time::Duration {
        self.database.timeout()
    }

    /// Whether the database answers now (for the health service).
    pub async fn probe(&self) -> Result<()> {
        let database = self.database.clone();
        tokio::task::spawn_blocking(move || database.probe()).await?
    }

    /// Runs a read on a pooled connection. Not started once the caller's
    /// deadline has passed; run again, once, on another connection when the
    /// one it got turns out lost (an idle connection the server closed).
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Reader<'_>) -> Result<T> + Send + 'static,
    {
        let deadline = crate::deadline::current();
        if crate::deadline::has_passed(deadline) {
            return Err(Error::DeadlineExceeded);
        }
        let pool = self.database.read_pool().clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            if crate::deadline::has_passed(deadline) {
                return Err(Error::DeadlineExceeded);
            }
            let mut connection = pool.get()?;
            match work(&mut Reader::new(&mut connection)) {
                Err(error) if error.is_connection_lost() => {
                    tracing::debug!(%error, "connection lost; reading on another");
                    // Dropped from the pool on return (see `db::faults`).
                    drop(connection);
                    let mut connection = pool.get()?;
                    work(&mut Reader::new(&mut connection))
                }
                outcome => outcome,
            }
        })
        .await?
    }

    pub async fn create_operator(&self, new: NewOperator) -> Result<Operator> {
        self.writer.run(db::operators::Create(new)).await
    }

    pub async fn get_operator(&self, id: i64) -> Result<Operator> {
        self.read(move |c| db::operators::get(c, id)).await
    }

    pub async fn list_operators(
        &self,
        page: PageRequest,
        is_active: Option<bool>,
    ) -> Result<Page<Operator>> {
        self.read(move |c| db::operators::list(c, page, is_active))
            .await
    }

    pub async fn update_operator(&self, id: i64, changes: OperatorChanges) -> Result<Operator> {
        self.writer.run(db::operators::Update { id, changes }).await
    }

    /// ReleaseOperatorContacts: the moved contacts as they are now, by id.
    pub async fn release_operator_contacts(
        &self,
        operator_id: i64,
        include_accepted: bool,
    ) -> Result<Vec<Contact>> {
        self.writer
            .run(db::routing::Release {
                operator_id,
                include_accepted,
            })
            .await
    }

    pub async fn update_source(&self, id: i64, changes: SourceChanges) -> Result<Source> {
        self.writer.run(db::sources::Update { id, changes }).await
    }

    pub async fn create_source(&self, new: NewSource) -> Result<Source> {
        self.writer.run(db::sources::Create(new)).await
    }

    pub async fn get_source(&self, key: SourceKey) -> Result<Source> {
        self.read(move |c| db::sources::get(c, &key)).await
    }

    pub async fn list_sources(&self, page: PageRequest) -> Result<Page<Source>> {
        self.read(move |c| db::sources::list(c, page)).await
    }

    pub async fn set_source_operators(
        &self,
        source_id: i64,
        table: WeightTable,
    ) -> Result<WeightTable> {
        self.writer
            .run(db::sources::SetOperators { source_id, table })
            .await
    }

    pub async fn list_source_operators(&self, source_id: i64) -> Result<WeightTable> {
        self.read(move |c| db::sources::list_operators(c, source_id))
            .await
    }

    pub async fn register_contact(&self, new: NewContact) -> Result<Registration> {
        let request_id = new.request_id.clone();
        match self.writer.run(db::contacts::Register(new)).await {
            // An unknown source: but a concurrent call with the same request
            // id (in the same batch, or on another replica) may have
            // registered meanwhile, and its result is this call's too.
            Err(unknown @ Error::NotFound(_)) => match request_id {
                Some(request_id) => self.find_registration(request_id).await?.ok_or(unknown),
                None => Err(unknown),
            },
            outcome => outcome,
        }
    }

    /// The registration an earlier call made with this request id, if any.
    pub async fn find_registration(&self, request_id: RequestId) -> Result<Option<Registration>> {
        self.read(move |r| db::contacts::replay(r, Some(&request_id)))
            .await
    }

    pub async fn get_contact(&self, id: i64) -> Result<Contact> {
        self.read(move |c| db::contacts::get(c, id)).await
    }

    pub async fn list_contacts(
        &self,
        page: PageRequest,
        filter: ContactFilter,
    ) -> Result<Page<Contact>> {
        self.read(move |c| db::contacts::list(c, page, &filter))
            .await
    }

    pub async fn close_contact(&self, id: i64) -> Result<Contact> {
        self.writer.run(db::contacts::Close(id)).await
    }

    pub async fn accept_contact(&self, id: i64, operator_id: i64) -> Result<Contact> {
        self.writer
            .run(db::routing::Accept { id, operator_id })
            .await
    }

    pub async fn transfer_contact(&self, id: i64, operator_id: Option<i64>) -> Result<Contact> {
        self.writer
            .run(db::routing::Transfer { id, operator_id })
            .await
    }

    /// Lapses up to `limit` of the offers whose accept deadline has passed,
    /// `LAPSES_PER_UNIT` to a unit of work (the units share the writer's
    /// batches with the calls). Returns
    /// how many were due; those another replica (or an accept) got to
    /// first are left as they are.
    pub async fn lapse_due(&self, limit: i64) -> Result<usize> {
        let due = self
            .read(move |r| db::routing::due(r, Timestamp::now(), limit))
            .await?;
        let count = due.len();
        let mut lapses = tokio::task::JoinSet::new();
        for chunk in due.chunks(LAPSES_PER_UNIT) {
            let writer = self.writer.clone();
            let unit = db::routing::Lapses {
                contact_ids: chunk.to_vec(),
            };
            lapses.spawn(async move { writer.run(unit).await });
        }
        while let Some(lapsed) = lapses.join_next().await {
            if let Err(error) = lapsed? {
                tracing::warn!(%error, "a lapse failed; it is tried again");
            }
        }
        Ok(count)
    }

    pub async fn get_lead(&self, id: i64) -> Result<Lead> {
        self.read(move |c| db::leads::get(c, id)).await
    }

    pub async fn list_leads(&self, page: PageRequest) -> Result<Page<Lead>> {
        self.read(move |c| db::leads::list(c, page)).await
    }

    pub async fn operator_stats(&self) -> Result<StatsReport> {
        self.read(db::stats::report).await
    }

    pub async fn list_contact_events(
        &self,
        page: PageRequest,
        filter: EventFilter,
    ) -> Result<Page<ContactEvent>> {
        self.read(move |r| db::events::list(r, page, &filter)).await
    }

    /// Where a watch starts: after `after` (OUT_OF_RANGE unless every event
    /// after it is retained), or after the last event now. NOT_FOUND for a
    /// filter naming what does not exist.
    pub async fn start_watch(
        &self,
        after: Option<EventCursor>,
        filter: EventFilter,
    ) -> Result<i64> {
        self.read(move |r| {
            db::events::must_name_existing(r, &filter)?;
            match after {
                Some(cursor) => {
                    db::events::check_retained(r, cursor.after()).map(|_| cursor.after())
                }
                None => Ok(db::events::horizon(r)?.1),
            }
        })
        .await
    }

    /// The next events of a watch after `after`; OUT_OF_RANGE when some of
    /// them are no longer retained (the reader fell behind retention).
    pub async fn watch_events(
        &self,
        after: i64,
        filter: EventFilter,
        limit: i64,
    ) -> Result<Vec<ContactEvent>> {
        self.read(move |r| {
            db::events::check_retained(r, after)?;
            db::events::after(r, &filter, after, limit)
        })
        .await
    }

    /// When the oldest retained event was recorded, if any.
    pub async fn oldest_event_time(&self) -> Result<Option<Timestamp>> {
        self.read(db::events::oldest_time).await
    }

    /// Deletes up to `limit` of the oldest events recorded before `before`.
    pub async fn purge_events(&self, before: Timestamp, limit: i64) -> Result<usize> {
        self.writer
            .run(db::events::Purge {
                before: before.as_micros(),
                limit,
            })
            .await
    }

    /// The metrics endpoint's figures from the database (see `crate::metrics`).
    pub(crate) async fn metrics_gauges(&self, limit: i64) -> Result<db::stats::Gauges> {
        self.read(move |r| db::stats::gauges(r, limit)).await
    }
}
