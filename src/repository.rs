//! The async face of the storage layer. Reads run on tokio's blocking pool,
//! each with a pooled connection; writes are units of work that the writer
//! thread runs in group-committed transactions (see `db::writer`). Neither
//! ever blocks an async worker thread.

use tracing::Span;

use crate::{
    Error, Result,
    db::{self, Backend, Database, Writer, WriterLimits, reader::Reader},
    domain::{
        Contact, ContactFilter, Lead, NewContact, NewOperator, NewSource, Operator,
        OperatorChanges, Page, PageRequest, Registration, RequestId, Source, SourceKey,
        StatsReport, WeightTable,
    },
};

/// Writer threads, each with its own connection and batches. One for
/// SQLite, which takes one writer at a time anyway; one for PostgreSQL too:
/// a second measured no faster (its transactions wait on the first's row
/// locks), though the writer supports several.
const WRITERS: usize = 1;

#[derive(Clone)]
pub struct Repository {
    database: Database,
    writer: Writer,
}

impl Repository {
    /// Starts the writer threads; at most `max_queued_writes` write calls
    /// wait for them at once.
    pub(crate) fn new(database: Database, max_queued_writes: usize) -> std::io::Result<Self> {
        let limits = WriterLimits {
            max_queued: max_queued_writes,
            timeout: database.timeout(),
        };
        let writer = Writer::start(database.write_pool().clone(), WRITERS, limits)?;
        Ok(Self { database, writer })
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

    pub async fn get_lead(&self, id: i64) -> Result<Lead> {
        self.read(move |c| db::leads::get(c, id)).await
    }

    pub async fn list_leads(&self, page: PageRequest) -> Result<Page<Lead>> {
        self.read(move |c| db::leads::list(c, page)).await
    }

    pub async fn operator_stats(&self) -> Result<StatsReport> {
        self.read(db::stats::report).await
    }
}
