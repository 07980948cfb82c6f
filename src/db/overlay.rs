//! The contacts a `Direct`-mode batch reads and changes, kept in memory and
//! written at commit: new contacts in one insert (with ids taken ahead; on
//! PostgreSQL in the statement that inserts the batch's new leads), changed
//! ones in one update guarded by what each was read with (see [`Stored`]). Without it, every registration, close, dispatch,
//! accept, lapse and transfer paid its own round trip and (for UPDATEs,
//! which diesel never caches) its own parse and plan on PostgreSQL.
//!
//! It is exact because of the locks the batch holds (see [`super::locks`]):
//! nobody else changes the pending contacts of a source whose locks this
//! transaction holds, nor the contacts it read under them. A concurrent
//! change it did not foresee makes the guarded update at commit match fewer
//! rows than it should; the transaction then fails as a conflict and runs
//! again in `Savepoints` mode, where nothing is buffered.

use std::collections::{BTreeSet, HashMap, VecDeque};

use diesel::prelude::*;

use super::{
    DbConnection,
    models::ContactRow,
    prepared::Prepared,
    reader::{PgSelect, Reader},
    run::RunOn,
    schema::contacts,
};
use crate::{domain::ContactStatus, error::Fault};

/// Matches the predicate of the `contacts_pending` partial index. A literal,
/// not a bound value: that is what lets SQLite's planner (with stable plans)
/// pick that index.
macro_rules! pending_predicate {
    () => {
        "contacts.status = 2"
    };
}
const PENDING_PREDICATE: &str = pending_predicate!();

/// Pending contacts are read this many at a time, oldest first.
const QUEUE_READ: i64 = 16;

#[derive(Debug, Default, Clone)]
pub(super) struct ContactOverlay {
    /// Ids taken ahead for new contacts.
    ids: VecDeque<i64>,
    /// Every contact the batch has read or written, as it is now.
    rows: HashMap<i64, Entry>,
    /// New contacts, in the order they were staged.
    inserted: Vec<i64>,
    /// Each source's pending contacts, oldest first, as far as read.
    queues: HashMap<i64, PendingQueue>,
}

#[derive(Debug, Clone)]
struct Entry {
    row: ContactRow,
    /// The stored row as read; `None` for a new contact.
    stored: Option<Stored>,
    changed: bool,
}

/// What the update at commit checks is unchanged in a stored row: on
/// PostgreSQL another transaction may have moved the contact since it was
/// read (a lapse, a transfer, an accept keep its status). On SQLite the
/// batch read it in its own write transaction, so the status suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    status: i32,
    operator_id: Option<i64>,
    assigned_at: Option<i64>,
    accepted_at: Option<i64>,
    accept_deadline: Option<i64>,
}

impl Stored {
    fn of(row: &ContactRow) -> Self {
        Self {
            status: row.status,
            operator_id: row.operator_id,
            assigned_at: row.assigned_at,
            accepted_at: row.accepted_at,
            accept_deadline: row.accept_deadline,
        }
    }
}

impl ContactOverlay {
    pub(super) fn reserve(&mut self, ids: impl IntoIterator<Item = i64>) {
        self.ids.extend(ids);
    }

    /// Reads the contacts with these ids in one query.
    /// Returns each row's source and, for an ACTIVE one, its operator: what
    /// the units that change them will lock.
    pub(super) fn read_ahead(
        &mut self,
        reader: &mut Reader<'_>,
        ids: &[i64],
    ) -> QueryResult<Vec<(i64, Option<i64>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<ContactRow> = reader.load(
            contacts::table
                .filter(contacts::id.eq_any(ids))
                .select(contacts::all_columns),
        )?;
        let mut holders = Vec::with_capacity(rows.len());
        for row in rows {
            let active = row.status == ContactStatus::Active.code();
            holders.push((row.source_id, row.operator_id.filter(|_| active)));
            self.remember(row);
        }
        Ok(holders)
    }

    /// PostgreSQL: reads the first pending contacts of each of these
    /// sources in one statement, where each queue would otherwise be read by
    /// a round trip of its own when first needed. The caller holds the
    /// sources' locks. Nothing on SQLite, where a read costs no round trip.
    pub(super) fn read_pending(
        &mut self,
        reader: &mut Reader<'_>,
        sources: &[i64],
    ) -> QueryResult<()> {
        let mut unread: Vec<i64> = sources
            .iter()
            .copied()
            .filter(|source_id| !self.queues.contains_key(source_id))
            .collect();
        unread.sort_unstable();
        unread.dedup();
        if unread.is_empty() {
            return Ok(());
        }
        let select = PgSelect::new(concat!(
            "SELECT contacts.* FROM unnest($1::bigint[]) AS s(id) CROSS JOIN LATERAL (\
               SELECT * FROM contacts WHERE ",
            pending_predicate!(),
            " AND contacts.source_id = s.id \
               ORDER BY contacts.source_id, contacts.id LIMIT $2) AS contacts"
        ))
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(unread.clone())
        .bind::<diesel::sql_types::BigInt, _>(QUEUE_READ);
        let Some(rows) = reader.load_pg::<ContactRow>(select) else {
            return Ok(());
        };
        let mut by_source: HashMap<i64, Vec<ContactRow>> = HashMap::new();
        for row in rows? {
            by_source.entry(row.source_id).or_default().push(row);
        }
        for source_id in unread {
            let mut rows = by_source.remove(&source_id).unwrap_or_default();
            rows.sort_unstable_by_key(|row| row.id);
            self.queue(source_id).fill(&rows);
            for row in rows {
                self.remember(row);
            }
        }
        Ok(())
    }

    /// Takes in a contact a unit read outside the overlay, so that the
    /// unit's change of it joins the guarded update at commit, guarded by
    /// `row` as read. A row the overlay holds already is kept.
    pub(super) fn adopt(&mut self, row: ContactRow) {
        self.remember(row);
    }

    fn remember(&mut self, row: ContactRow) {
        let stored = Stored::of(&row);
        self.rows.entry(row.id).or_insert(Entry {
            row,
            stored: Some(stored),
            changed: false,
        });
    }

    /// The contact as this batch sees it.
    pub(super) fn row(
        &mut self,
        reader: &mut Reader<'_>,
        id: i64,
    ) -> QueryResult<Option<ContactRow>> {
        if let Some(entry) = self.rows.get(&id) {
            return Ok(Some(entry.row.clone()));
        }
        let stored = read_row(reader, id)?;
        if let Some(row) = &stored {
            self.remember(row.clone());
        }
        Ok(stored)
    }

    /// The newest contact of the lead this batch holds that has an operator:
    /// (id, operator, created_at).
    pub(super) fn latest_assigned(&self, lead_id: i64) -> Option<(i64, Option<i64>, i64)> {
        self.rows
            .values()
            .map(|entry| &entry.row)
            .filter(|row| row.lead_id == lead_id && row.operator_id.is_some())
            .map(|row| (row.id, row.operator_id, row.created_at))
            .max()
    }

    /// Stages a new contact with an id taken ahead; `None` (nothing staged)
    /// when no id is left.
    pub(super) fn insert(&mut self, mut row: ContactRow) -> Option<ContactRow> {
        row.id = self.ids.pop_front()?;
        if row.status == ContactStatus::Pending.code() {
            self.queue(row.source_id).new.insert(row.id);
        }
        self.inserted.push(row.id);
        self.rows.insert(
            row.id,
            Entry {
                row: row.clone(),
                stored: None,
                changed: true,
            },
        );
        Some(row)
    }

    /// Changes a contact the batch has read (through [`Self::row`] or a
    /// pending queue).
    pub(super) fn update(
        &mut self,
        id: i64,
        change: impl FnOnce(&mut ContactRow),
    ) -> Result<ContactRow, Fault> {
        let entry = self
            .rows
            .get_mut(&id)
            .ok_or_else(|| Fault::Internal(format!("contact {id} was changed unread")))?;
        let was_pending = entry.row.status == ContactStatus::Pending.code();
        change(&mut entry.row);
        entry.changed = true;
        let row = entry.row.clone();
        // Back in line (a lapse with nobody left): in the queue by its id,
        // as a read of the stored rows would find it after the update.
        if !was_pending && row.status == ContactStatus::Pending.code() {
            self.queue(row.source_id).new.insert(row.id);
        }
        Ok(row)
    }

    fn queue(&mut self, source_id: i64) -> &mut PendingQueue {
        self.queues.entry(source_id).or_default()
    }

    /// The source's oldest contact that is still pending, as this batch
    /// sees it; it stays first until [`Self::take_pending`].
    pub(super) fn peek_pending(
        &mut self,
        reader: &mut Reader<'_>,
        source_id: i64,
    ) -> QueryResult<Option<i64>> {
        loop {
            let queue = self.queues.entry(source_id).or_default();
            let mut read = Vec::new();
            let head = queue.peek(reader, source_id, &mut read)?;
            // Rows a refill read are kept, so taking them costs no query.
            for row in read {
                self.remember(row);
            }
            let Some(id) = head else {
                return Ok(None);
            };
            let still_pending = match self.rows.get(&id) {
                Some(entry) => entry.row.status == ContactStatus::Pending.code(),
                None => true,
            };
            if still_pending {
                return Ok(Some(id));
            }
            self.queue(source_id).pop(id);
        }
    }

    /// Takes the contact [`Self::peek_pending`] answered off its queue and
    /// reads it into the overlay.
    pub(super) fn take_pending(
        &mut self,
        reader: &mut Reader<'_>,
        source_id: i64,
        id: i64,
    ) -> QueryResult<()> {
        self.queue(source_id).pop(id);
        self.row(reader, id).map(drop)
    }

    /// Writes the new contacts (in the order they were staged) through
    /// `insert`, which may write other new rows in the same statement, then
    /// the changed ones, and forgets everything read: one statement for all
    /// the changed contacts (a statement per row on SQLite, where a
    /// statement costs no round trip).
    pub(super) fn flush(
        &mut self,
        connection: &mut DbConnection,
        insert: impl FnOnce(&mut DbConnection, &[ContactRow]) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        let mut rows = std::mem::take(&mut self.rows);
        self.queues.clear();
        let inserted: Vec<ContactRow> = std::mem::take(&mut self.inserted)
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(|entry| entry.row)
            .collect();
        insert(connection, &inserted)?;
        let changed: Vec<(Stored, ContactRow)> = rows
            .into_values()
            .filter(|entry| entry.changed)
            .filter_map(|entry| Some((entry.stored?, entry.row)))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let written = match connection {
            DbConnection::Postgres(pg) => update_all(pg, &changed)?,
            DbConnection::Sqlite(_) => {
                let mut written = 0;
                for (was, row) in &changed {
                    written += diesel::update(
                        contacts::table
                            .find(row.id)
                            .filter(contacts::status.eq(was.status)),
                    )
                    .set(row.lifecycle())
                    .execute_on(connection)?;
                }
                written
            }
        };
        if written == changed.len() {
            Ok(())
        } else {
            Err(Fault::Conflict(format!(
                "{} of {} contacts changed meanwhile",
                changed.len() - written,
                changed.len()
            )))
        }
    }
}

/// Whether `now` shows the contact as `read` did, in every field the
/// guarded update at commit checks (see [`Stored`]).
pub(super) fn unchanged(read: &ContactRow, now: &ContactRow) -> bool {
    Stored::of(read) == Stored::of(now)
}

/// One UPDATE for every changed contact, each guarded by what it was read
/// with (see [`Stored`]). It writes the columns of
/// [`ContactRow::lifecycle`], so that no change a unit makes in the overlay
/// is left out. The ids come twice: joined to the values, and as
/// `contacts.id = ANY(…)`, which makes the primary key the planner's
/// cheapest way in (without it, it hashed a sequential scan of a table of
/// a few thousand contacts: 2 ms a batch, against 0.3–0.5 ms).
fn update_all(pg: &mut PgConnection, changed: &[(Stored, ContactRow)]) -> QueryResult<usize> {
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
    let column = |get: fn(&(Stored, ContactRow)) -> Option<i64>| -> Vec<Option<i64>> {
        changed.iter().map(get).collect()
    };
    let ids: Vec<i64> = changed.iter().map(|(_, row)| row.id).collect();
    Prepared::new(
        "UPDATE contacts SET status = v.status, operator_id = v.operator_id, \
         assigned_at = v.assigned_at, closed_at = v.closed_at, \
         accept_deadline = v.accept_deadline, accepted_at = v.accepted_at, \
         lapses = v.lapses, lapsed_with = v.lapsed_with \
         FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::bigint[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
                     $11::bigint[], $12::bigint[], $13::int[], $14::text[]) \
           AS v(id, was, status, operator_id, assigned_at, closed_at, accept_deadline, \
                was_operator_id, was_assigned_at, was_accepted_at, was_accept_deadline, \
                accepted_at, lapses, lapsed_with) \
         WHERE contacts.id = v.id AND contacts.status = v.was \
           AND contacts.operator_id IS NOT DISTINCT FROM v.was_operator_id \
           AND contacts.assigned_at IS NOT DISTINCT FROM v.was_assigned_at \
           AND contacts.accepted_at IS NOT DISTINCT FROM v.was_accepted_at \
           AND contacts.accept_deadline IS NOT DISTINCT FROM v.was_accept_deadline \
           AND contacts.id = ANY($15)",
    )
    .bind::<Array<BigInt>, _>(ids.clone())
    .bind::<Array<Integer>, _>(
        changed
            .iter()
            .map(|(was, _)| was.status)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Integer>, _>(
        changed
            .iter()
            .map(|(_, row)| row.status)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<BigInt>>, _>(column(|(_, row)| row.operator_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(_, row)| row.assigned_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(_, row)| row.closed_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(_, row)| row.accept_deadline))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(was, _)| was.operator_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(was, _)| was.assigned_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(was, _)| was.accepted_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(was, _)| was.accept_deadline))
    .bind::<Array<Nullable<BigInt>>, _>(column(|(_, row)| row.accepted_at))
    .bind::<Array<Integer>, _>(
        changed
            .iter()
            .map(|(_, row)| row.lapses)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        changed
            .iter()
            .map(|(_, row)| row.lapsed_with.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(pg)
}

fn read_row(reader: &mut Reader<'_>, id: i64) -> QueryResult<Option<ContactRow>> {
    reader
        .first(contacts::table.find(id).select(contacts::all_columns))
        .optional()
}

/// A source's pending contacts in id order: the stored ones read so far
/// (`after` the last one read) and those the batch created or put back in
/// line.
#[derive(Debug, Clone)]
pub(super) struct PendingQueue {
    stored: VecDeque<i64>,
    after: i64,
    more: bool,
    new: BTreeSet<i64>,
}

impl Default for PendingQueue {
    fn default() -> Self {
        Self {
            stored: VecDeque::new(),
            after: 0,
            more: true,
            new: BTreeSet::new(),
        }
    }
}

impl PendingQueue {
    /// The oldest contact in the queue; `read` collects the stored rows
    /// read on the way.
    pub(super) fn peek(
        &mut self,
        reader: &mut Reader<'_>,
        source_id: i64,
        read: &mut Vec<ContactRow>,
    ) -> QueryResult<Option<i64>> {
        if self.stored.is_empty() && self.more {
            let rows: Vec<ContactRow> = reader.load(
                contacts::table
                    .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                        PENDING_PREDICATE,
                    ))
                    .filter(contacts::source_id.eq(source_id))
                    .filter(contacts::id.gt(self.after))
                    // The same order as `ORDER BY id` (one source), but one
                    // the primary key cannot give: PostgreSQL, whose
                    // statistics still counted the many pending contacts of
                    // a while ago, walked the primary key from the oldest
                    // contact, filtering thousands of rows (2-4 ms a batch).
                    .order((contacts::source_id, contacts::id))
                    .limit(QUEUE_READ)
                    .select(contacts::all_columns),
            )?;
            self.fill(&rows);
            read.extend(rows);
        }
        Ok(match (self.stored.front(), self.new.first()) {
            (Some(&stored), Some(&new)) => Some(stored.min(new)),
            (stored, new) => stored.or(new).copied(),
        })
    }

    /// Takes in the next stored rows, read in id order, at most
    /// [`QUEUE_READ`] of them: fewer means there are no more.
    fn fill(&mut self, rows: &[ContactRow]) {
        self.more = rows.len() as i64 == QUEUE_READ;
        if let Some(last) = rows.last() {
            self.after = last.id;
        }
        self.stored.extend(rows.iter().map(|row| row.id));
    }

    /// Removes the contact if it is at the front.
    pub(super) fn pop(&mut self, id: i64) {
        if self.stored.front() == Some(&id) {
            self.stored.pop_front();
        } else if self.new.first() == Some(&id) {
            self.new.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::{Connection, QueryableByName, connection::SimpleConnection, sql_types::BigInt};

    use super::*;
    use crate::db::{
        Database, DatabaseUrl,
        test_db::{TestDb, or_skip},
    };

    #[derive(QueryableByName)]
    struct Scans {
        #[diesel(sql_type = BigInt)]
        seq_scan: i64,
        #[diesel(sql_type = BigInt)]
        idx_scan: i64,
    }

    /// The guarded update finds its contacts by the primary key, among 5,000
    /// contacts, whether PostgreSQL plans it for the values or runs a generic
    /// plan: the table's scans in the transaction, as
    /// `pg_stat_xact_user_tables` counts them, are index scans only.
    #[test]
    fn the_guarded_update_finds_its_contacts_by_key() {
        let db = or_skip!(TestDb::postgres());
        let database = Database::open(&DatabaseUrl::Postgres(db.url())).expect("open");
        let mut connection = database.write_pool().get().expect("connection");
        let DbConnection::Postgres(pg) = &mut *connection else {
            unreachable!()
        };
        pg.batch_execute(
            "INSERT INTO sources (bot_id, name, created_at) VALUES ('plan', '', 0); \
             INSERT INTO leads (phone, name, created_at) VALUES ('+1', '', 0); \
             INSERT INTO contacts (lead_id, source_id, status, created_at, lead_created) \
               SELECT (SELECT id FROM leads), (SELECT id FROM sources), 2, 0, false \
               FROM generate_series(1, 5000); \
             ANALYZE contacts",
        )
        .expect("seed");
        for mode in ["force_custom_plan", "force_generic_plan"] {
            // Read before the transaction, whose scans are the update's alone.
            let read: Vec<ContactRow> = contacts::table
                .order(contacts::id.desc())
                .limit(40)
                .select(contacts::all_columns)
                .load(pg)
                .expect("read");
            let changed: Vec<(Stored, ContactRow)> = read
                .into_iter()
                .map(|row| {
                    let mut changed = row.clone();
                    changed.lapses += 1;
                    (Stored::of(&row), changed)
                })
                .collect();
            pg.transaction(|pg| {
                pg.batch_execute(&format!("SET LOCAL plan_cache_mode = {mode}"))?;
                assert_eq!(update_all(pg, &changed)?, 40, "{mode}");
                let scans: Scans = diesel::sql_query(
                    "SELECT seq_scan, COALESCE(idx_scan, 0) AS idx_scan \
                     FROM pg_stat_xact_user_tables WHERE relname = 'contacts'",
                )
                .get_result(pg)?;
                assert_eq!(scans.seq_scan, 0, "{mode}: sequential scans of contacts");
                assert!(scans.idx_scan > 0, "{mode}: no index scan of contacts");
                Ok::<_, diesel::result::Error>(())
            })
            .expect("update");
        }
    }
}
