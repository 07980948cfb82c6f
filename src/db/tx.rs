//! The write transaction, as a value: [`WriteTx`] is the connection of a
//! writer thread's open transaction together with everything that
//! transaction has done so far and will write just before it commits. Every
//! write-path function takes it; reads take a [`Reader`] instead.

use std::collections::{BTreeSet, HashMap};

use diesel::{
    Connection,
    connection::{AnsiTransactionManager, TransactionManager},
};
use rand::RngCore;

use super::models as schema_row;
use super::{
    DbConnection, cached::insert_kept_prepared, counts, events, leads, loads,
    overlay::ContactOverlay, reader::Reader, run::RunOn, schema, sources, units::ReadAhead,
};
use crate::{Result, domain::SourceKey, error::Fault};

type MultiTransactionManager = <DbConnection as Connection>::TransactionManager;

/// How the units of a write transaction run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One after the other with nothing in between: the fast path. What the
    /// units read is read ahead for the whole batch where it can be, and
    /// what they write is kept in memory and written at commit: operator
    /// loads (see [`super::loads`]), new leads (see [`leads::LeadIndex`]),
    /// new and changed contacts (see [`ContactOverlay`]). Any fault fails the
    /// whole transaction, which then runs again in `Savepoints` mode.
    Direct,
    /// Each unit in its own savepoint, so that a unit whose apply fails with
    /// a fault undoes only its own writes and the others still commit.
    /// Everything is written at once, nothing kept for commit: a row kept for
    /// commit would be written outside its unit's savepoint, where its fault
    /// would fail the whole batch again.
    Savepoints,
}

/// What a writer thread keeps from one transaction to the next.
#[derive(Debug, Default)]
pub(crate) struct WriterMemory {
    /// Source ids by key, as committed transactions saw them. Sources are
    /// never deleted and their keys never change, so an entry stays true; the
    /// map is emptied on rollback, in case the source was created by the
    /// transaction rolled back. A writer serves one database.
    sources: HashMap<SourceKey, i64>,
}

impl WriterMemory {
    pub(super) fn source_id(&self, key: &SourceKey) -> Option<i64> {
        self.sources.get(key).copied()
    }

    pub(super) fn remember_source(&mut self, key: &SourceKey, id: i64) {
        self.sources.insert(key.clone(), id);
    }
}

/// What the transaction has done that is not written yet, and the locks it
/// holds. Cloned as a snapshot before each unit in `Savepoints` mode (where
/// it is small: nothing is cached or buffered), restored if the unit fails.
#[derive(Debug, Default, Clone)]
pub(super) struct TxState {
    pub(super) counters: counts::Deltas,
    /// PostgreSQL: sources whose rows and operators this transaction has
    /// locked (see [`super::locks`]).
    pub(super) locked_sources: BTreeSet<i64>,
    /// PostgreSQL: operators this transaction holds FOR UPDATE.
    pub(super) locked_operators: BTreeSet<i64>,
    pub(super) loads: loads::Loads,
    /// `Direct` mode: the batch's leads, read ahead, and its new ones.
    pub(super) leads: Option<leads::LeadIndex>,
    /// `Direct` mode: the contacts the batch has read and changed.
    pub(super) contacts: Option<ContactOverlay>,
    /// Events of the transaction, written at commit.
    pub(super) events: Vec<events::NewEvent>,
    /// Routing settings of the sources this transaction has read them for
    /// (see [`sources::settings`]); on PostgreSQL read with the sources'
    /// locks, which an UpdateSource must wait for.
    pub(super) settings: HashMap<i64, sources::Settings>,
    /// The sources each operator locked through
    /// [`super::locks::operator_sources`] serves, while its locks are held.
    pub(super) served: HashMap<i64, Vec<i64>>,
}

/// An open write transaction.
pub(crate) struct WriteTx<'t> {
    pub(super) connection: &'t mut DbConnection,
    mode: Mode,
    pub(super) state: TxState,
    pub(super) memory: &'t mut WriterMemory,
    pub(super) rng: &'t mut dyn RngCore,
}

impl<'t> WriteTx<'t> {
    /// Starts a transaction that is ready to write from its first statement.
    /// On SQLite that is `BEGIN IMMEDIATE`: a deferred transaction that read
    /// first could fail to upgrade to a writer when another connection
    /// committed in between.
    pub(crate) fn begin(
        connection: &'t mut DbConnection,
        mode: Mode,
        memory: &'t mut WriterMemory,
        rng: &'t mut dyn RngCore,
    ) -> Result<Self> {
        match connection {
            DbConnection::Sqlite(sqlite) => {
                AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
            }
            DbConnection::Postgres(_) => MultiTransactionManager::begin_transaction(connection)?,
        }
        let state = TxState {
            loads: loads::Loads::for_mode(mode),
            ..TxState::default()
        };
        Ok(Self {
            connection,
            mode,
            state,
            memory,
            rng,
        })
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Writes what is buffered and cached (leads and contacts, operator
    /// loads, counters, events: counter rows last, see [`super::locks`]),
    /// then commits. On failure the transaction is rolled back. Returns the
    /// id of the last event written, if any.
    pub(crate) fn commit(mut self) -> Result<Option<i64>> {
        let written = self
            .flush_buffers()
            .and_then(|()| loads::flush(&mut self))
            .and_then(|()| counts::flush(&mut self))
            .and_then(|()| events::flush(&mut self))
            .map_err(crate::Error::from)
            .and_then(|last_event| {
                MultiTransactionManager::commit_transaction(self.connection)?;
                Ok(last_event)
            });
        if written.is_err() {
            self.rollback();
        }
        written
    }

    pub(crate) fn rollback(self) {
        if let Err(error) = MultiTransactionManager::rollback_transaction(self.connection) {
            tracing::warn!(%error, "rollback failed");
        }
        // A source remembered during this transaction may have been created by it.
        self.memory.sources.clear();
    }

    /// The connection, for statements on contacts, leads, sources and
    /// counters. Statements that change operators or weight tables go through
    /// [`WriteTx::operator_tables`] instead.
    pub(super) fn connection(&mut self) -> &mut DbConnection {
        self.connection
    }

    /// The connection for statements that change operator rows or weight
    /// tables: the cached operator loads are written and dropped first, so
    /// that no later draw uses rows the statement changed.
    pub(super) fn operator_tables(&mut self) -> Result<&mut DbConnection, Fault> {
        self.write_loads()?;
        Ok(self.connection)
    }

    /// Writes the operator loads cached so far (and drops the cache), so
    /// that reads of operator rows see them.
    pub(super) fn write_loads(&mut self) -> Result<(), Fault> {
        loads::flush(self)
    }

    pub(super) fn reader(&mut self) -> Reader<'_> {
        Reader::new(self.connection)
    }

    /// The contact as this transaction sees it, buffered changes included.
    pub(super) fn contact(
        &mut self,
        id: i64,
    ) -> diesel::QueryResult<Option<schema_row::ContactRow>> {
        let Self {
            connection, state, ..
        } = self;
        let reader = &mut Reader::new(connection);
        match &mut state.contacts {
            Some(overlay) => overlay.row(reader, id),
            None => {
                use diesel::prelude::*;
                reader
                    .first(
                        schema::contacts::table
                            .find(id)
                            .select(schema::contacts::all_columns),
                    )
                    .optional()
            }
        }
    }

    /// Changes a contact the unit read as `read`, and returns it as it is
    /// now. In `Direct` mode in the overlay (which takes the row in as read
    /// unless it holds it already: a buffered unit read it there), written
    /// by its guarded update at commit; otherwise at once, guarded the same
    /// way. Either way, a concurrent transaction that changed the contact
    /// meanwhile makes the guard match nothing: a conflict, and the
    /// transaction runs again.
    pub(super) fn change_contact(
        &mut self,
        read: &schema_row::ContactRow,
        change: impl FnOnce(&mut schema_row::ContactRow),
    ) -> Result<schema_row::ContactRow, Fault> {
        use diesel::prelude::*;
        if let Some(overlay) = &mut self.state.contacts {
            overlay.adopt(read.clone());
            return overlay.update(read.id, change);
        }
        let mut changed = read.clone();
        change(&mut changed);
        let written = diesel::update(super::guard::unchanged!(read))
            .set(changed.lifecycle())
            .execute_on(self.connection)?;
        if written == 0 {
            return Err(Fault::Conflict(format!("contact {} changed", read.id)));
        }
        Ok(changed)
    }

    /// Runs one unit of work. In `Savepoints` mode it runs in a savepoint and
    /// a failure undoes its writes and its changes to this transaction's
    /// state; in `Direct` mode a failure fails the transaction.
    pub(super) fn unit<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match self.mode {
            Mode::Direct => work(self),
            Mode::Savepoints => {
                let snapshot = self.state.clone();
                MultiTransactionManager::begin_transaction(self.connection)?;
                match work(self) {
                    Ok(outcome) => {
                        MultiTransactionManager::commit_transaction(self.connection)?;
                        Ok(outcome)
                    }
                    Err(error) => {
                        MultiTransactionManager::rollback_transaction(self.connection)?;
                        self.state = snapshot;
                        Err(error)
                    }
                }
            }
        }
    }

    /// Prepares a `Direct`-mode batch: reads what its units will read (see
    /// [`ReadAhead`]) and takes ids ahead for the leads and contacts its
    /// `inserting` units may create.
    pub(crate) fn prepare_batch(&mut self, ahead: &ReadAhead, inserting: usize) -> Result<()> {
        if self.mode != Mode::Direct {
            return Ok(());
        }
        let mut index = leads::LeadIndex::read(&mut self.reader(), ahead)?;
        let mut overlay = ContactOverlay::default();
        let holders = overlay.read_ahead(&mut self.reader(), &ahead.contact_ids)?;
        // Sources not known yet are resolved (and locked) by their units.
        let drawn_for: Vec<i64> = ahead
            .sources
            .iter()
            .filter_map(|key| self.memory.source_id(key))
            .collect();
        super::locks::ahead(self, &holders, &drawn_for)?;
        // The sources a close or lapse of these contacts dispatches for,
        // locked now: their queues in one read.
        let dispatching: Vec<i64> = self.state.served.values().flatten().copied().collect();
        overlay.read_pending(&mut self.reader(), &dispatching)?;
        if inserting > 0 {
            let ids = self.take_ids(inserting)?;
            index.reserve(ids.iter().map(|row| row.lead));
            overlay.reserve(ids.iter().map(|row| row.contact));
        }
        self.state.leads = Some(index);
        self.state.contacts = Some(overlay);
        Ok(())
    }

    /// Takes `count` lead ids and `count` contact ids ahead, in one
    /// statement. On SQLite the writer holds the only write lock, so the ids
    /// after the largest ones are free; on PostgreSQL they come from the
    /// sequences (other sessions' calls may interleave: the ids are what
    /// came, not a range).
    fn take_ids(&mut self, count: usize) -> Result<Vec<TakenIds>> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        Ok(match self.connection {
            DbConnection::Postgres(pg) => diesel::RunQueryDsl::load(
                super::prepared::Prepared::new(
                    // The sequences looked up once, not once a row.
                    "SELECT nextval(l.seq) AS lead, nextval(c.seq) AS contact \
                     FROM (SELECT pg_get_serial_sequence('leads', 'id')::regclass AS seq) AS l, \
                          (SELECT pg_get_serial_sequence('contacts', 'id')::regclass AS seq) AS c, \
                          generate_series(1, $1)",
                )
                .bind::<diesel::sql_types::BigInt, _>(count),
                pg,
            )?,
            DbConnection::Sqlite(_) => {
                let after: Vec<TakenIds> = diesel::RunQueryDsl::load(
                    diesel::sql_query(
                        "SELECT COALESCE((SELECT MAX(id) FROM leads), 0) AS lead, \
                         COALESCE((SELECT MAX(id) FROM contacts), 0) AS contact",
                    ),
                    self.connection,
                )?;
                let (lead, contact) = after.first().map_or((0, 0), |row| (row.lead, row.contact));
                (1..=count)
                    .map(|k| TakenIds {
                        lead: lead + k,
                        contact: contact + k,
                    })
                    .collect()
            }
        })
    }

    /// Writes the leads and contacts buffered so far: on PostgreSQL the new
    /// leads and contacts in one statement, then the changed contacts in
    /// another. Runs before any unit that does not use the buffers (see
    /// [`super::units::WriteUnit::USES_BUFFERS`]).
    pub(crate) fn flush_buffers(&mut self) -> Result<(), Fault> {
        let leads = match &mut self.state.leads {
            Some(index) => index.take_staged(),
            None => Vec::new(),
        };
        let insert = |connection: &mut DbConnection, contacts: &[schema_row::ContactRow]| {
            insert_new(connection, &leads, contacts)
        };
        match &mut self.state.contacts {
            Some(overlay) => overlay.flush(self.connection, insert),
            None => insert(self.connection, &[]),
        }
    }
}

/// Inserts new leads and contacts: one statement on PostgreSQL; on SQLite
/// one per table and power of two (see [`super::cached`]).
fn insert_new(
    connection: &mut DbConnection,
    leads: &[schema_row::LeadRow],
    contacts: &[schema_row::ContactRow],
) -> Result<(), Fault> {
    match connection {
        _ if leads.is_empty() && contacts.is_empty() => {}
        DbConnection::Postgres(pg) => {
            super::bulk::new_rows(pg, leads, contacts)?;
        }
        DbConnection::Sqlite(sqlite) => {
            insert_kept_prepared!(sqlite, schema::leads::table, leads)?;
            insert_kept_prepared!(sqlite, schema::contacts::table, contacts)?;
        }
    }
    Ok(())
}

/// A lead id and a contact id taken ahead.
#[derive(diesel::QueryableByName)]
struct TakenIds {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    lead: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    contact: i64,
}

#[cfg(test)]
mod tests {
    use diesel::{QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_types::BigInt};

    use super::*;
    use crate::db::{
        Database, DatabaseUrl,
        test_db::{TestDb, or_skip},
    };

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::Text)]
        relname: String,
        #[diesel(sql_type = BigInt)]
        seq_scan: i64,
        #[diesel(sql_type = BigInt)]
        idx_scan: i64,
    }

    /// The reads a `Direct` batch makes before its units run (the lead read,
    /// the contacts read, both lock statements, the pending read, the ids
    /// taken ahead) find their rows by key on the plans of the writer's
    /// sessions (generic ones, see `WRITER_PLAN_CACHE_MODE` in
    /// [`super::super::connection`]), among 2,000 sources, 5,000 operators
    /// and 5,000 contacts: no table is scanned whole in the transaction, as
    /// `pg_stat_xact_user_tables` counts it.
    #[test]
    fn a_batchs_reads_find_their_rows_by_key_on_the_writers_plans() {
        let db = or_skip!(TestDb::postgres());
        let database = Database::open(&DatabaseUrl::Postgres(db.url())).expect("open");
        // Seeded on another session: PostgreSQL 15 counts a session's scans
        // of earlier transactions in `pg_stat_xact_user_tables` until it
        // reports them, up to a second later.
        database
            .read_pool()
            .get()
            .expect("connection")
            .batch_execute(
                "INSERT INTO sources (bot_id, name, created_at) \
                   SELECT 'bot' || g, '', 0 FROM generate_series(1, 2000) g; \
                 INSERT INTO operators (name, is_active, max_load, active_load, created_at) \
                   SELECT 'op' || g, true, 5, 0, 0 FROM generate_series(1, 5000) g; \
                 INSERT INTO source_operators (source_id, operator_id, weight) \
                   SELECT s, (2 * s + k) % 5000 + 1, 1 \
                   FROM generate_series(1, 2000) s, generate_series(0, 1) k; \
                 INSERT INTO leads (phone, name, created_at) \
                   SELECT '+1' || g, '', 0 FROM generate_series(1, 5000) g; \
                 INSERT INTO contacts (lead_id, source_id, status, created_at, lead_created) \
                   SELECT g, g % 2000 + 1, 2, 0, false FROM generate_series(1, 4900) g; \
                 INSERT INTO contacts (lead_id, source_id, operator_id, status, created_at, \
                                       assigned_at, lead_created) \
                   SELECT g, s, (2 * s) % 5000 + 1, 1, 0, 0, false \
                   FROM generate_series(4901, 5000) g, LATERAL (SELECT g % 2000 + 1 AS s) AS x; \
                 UPDATE operators SET active_load = 1 \
                   WHERE id IN (SELECT operator_id FROM contacts WHERE status = 1); \
                 ANALYZE",
            )
            .expect("seed");
        let mut connection = database.write_pool().get().expect("connection");
        let ahead = ReadAhead {
            phones: (4990..5000).map(|k| format!("+1{k}")).collect(),
            contact_ids: (4990..=5000).collect(),
            ..ReadAhead::default()
        };
        let mut memory = WriterMemory::default();
        let mut rng = rand::rng();
        let mut tx =
            WriteTx::begin(&mut connection, Mode::Direct, &mut memory, &mut rng).expect("begin");
        tx.prepare_batch(&ahead, 10).expect("reads");
        assert!(!tx.state.served.is_empty(), "the sources were locked");
        let scans: Vec<Scans> = diesel::sql_query(
            "SELECT relname::text AS relname, seq_scan, COALESCE(idx_scan, 0) AS idx_scan \
             FROM pg_stat_xact_user_tables \
             WHERE relname IN ('contacts', 'leads', 'operators', 'sources', 'source_operators') \
             ORDER BY relname",
        )
        .load(tx.connection())
        .expect("scans");
        tx.rollback();
        assert_eq!(scans.len(), 5, "{scans:?}");
        assert!(
            scans.iter().all(|table| table.idx_scan > 0),
            "unread: {scans:?}"
        );
        let scanned: Vec<_> = scans.iter().filter(|table| table.seq_scan > 0).collect();
        assert!(scanned.is_empty(), "scanned whole: {scanned:?}");
    }
}
