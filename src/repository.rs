//! The async face of the storage layer. Each method is one unit of work: the
//! pool checkout, the queries and the weighted draw all run in one closure on
//! tokio's blocking pool, inside the caller's tracing span, never on an async
//! worker thread.

use tracing::Span;

use crate::{
    Result,
    db::{self, Backend, Database, DbConnection, OnUniqueViolation, Writer},
    domain::{
        Contact, ContactFilter, Lead, NewContact, NewOperator, NewSource, Operator,
        OperatorChanges, Page, PageRequest, Registration, RequestId, Source, SourceKey,
        StatsReport, WeightTable,
    },
};

/// Writer threads on PostgreSQL, each with its own connection and batches.
const POSTGRES_WRITERS: usize = 1;

#[derive(Clone)]
pub struct Repository {
    database: Database,
    writer: Writer,
}

impl Repository {
    /// Starts the writer threads: one for SQLite, which has a single writer
    /// anyway; a few for PostgreSQL.
    pub fn new(database: Database) -> std::io::Result<Self> {
        let threads = match database.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_WRITERS,
        };
        let writer = Writer::start(database.write_pool().clone(), threads)?;
        Ok(Self { database, writer })
    }

    pub fn backend(&self) -> Backend {
        self.database.backend()
    }

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
    {
        let pool = self.database.read_pool().clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut connection = pool.get()?;
            work(&mut connection)
        })
        .await?
    }

    /// Runs `work` as one unit of a group-committed write transaction.
    async fn write<T, F>(&self, on_unique: OnUniqueViolation, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T> + Send + 'static,
    {
        self.writer.run(on_unique, work).await
    }

    pub async fn create_operator(&self, new: NewOperator) -> Result<Operator> {
        self.write(OnUniqueViolation::Fail, move |c| {
            db::operators::create(c, &new)
        })
        .await
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
        self.write(OnUniqueViolation::Fail, move |c| {
            db::operators::update(c, id, &changes, &mut rand::rng())
        })
        .await
    }

    pub async fn create_source(&self, new: NewSource) -> Result<Source> {
        self.write(OnUniqueViolation::Retry, move |c| {
            db::sources::create(c, &new)
        })
        .await
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
        self.write(OnUniqueViolation::Fail, move |c| {
            db::sources::set_operators(c, source_id, &table, &mut rand::rng())
        })
        .await
    }

    pub async fn list_source_operators(&self, source_id: i64) -> Result<WeightTable> {
        self.read(move |c| db::sources::list_operators(c, source_id))
            .await
    }

    pub async fn register_contact(&self, new: NewContact) -> Result<Registration> {
        self.writer
            .run_registration(move |c| db::contacts::register(c, &new, &mut rand::rng()))
            .await
    }

    /// The registration an earlier call made with this request id, if any.
    pub async fn find_registration(&self, request_id: RequestId) -> Result<Option<Registration>> {
        self.read(move |c| db::contacts::find_registration(c, &request_id))
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
        self.write(OnUniqueViolation::Fail, move |c| {
            db::contacts::close(c, id, &mut rand::rng())
        })
        .await
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
