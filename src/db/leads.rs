use std::collections::{HashMap, HashSet, VecDeque};

use diesel::prelude::*;

use super::{
    cached::{CachedBySql, padded},
    models::{LeadRow, NewLeadRow},
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::leads,
    tx::WriteTx,
    units::ReadAhead,
};
use crate::{
    Error, Result,
    domain::{Lead, LeadIdentity, Page, PageRequest, Timestamp},
    error::Fault,
};

/// Finds the lead by `external_id`, then `phone`, then `email` (the first
/// identifier that finds one wins) and fills in what it lacks; or creates one.
/// Returns the lead and whether it was created.
///
/// In `Direct` mode the batch's leads were read ahead in one query (see
/// [`LeadIndex`]) and new leads are staged for one multi-row insert.
/// Two racing first registrations of one person both try to insert; the
/// unique indexes let one through and abort the other, whose whole
/// transaction is then retried and finds the lead.
pub(super) fn find_or_create(
    tx: &mut WriteTx<'_>,
    identity: &LeadIdentity,
) -> Result<(Lead, bool), Fault> {
    let identifiers = Identifier::of(identity);
    let mut found = None;
    for identifier in &identifiers {
        found = holder(tx, *identifier)?;
        if found.is_some() {
            break;
        }
    }
    match found {
        Some(lead) => Ok((fill_in(tx, lead, &identifiers, identity)?, false)),
        None => Ok((create(tx, identity)?.into(), true)),
    }
}

fn create(tx: &mut WriteTx<'_>, identity: &LeadIdentity) -> Result<LeadRow, Fault> {
    let mut row = LeadRow {
        id: 0,
        external_id: identity.external_id().map(|v| v.as_str().to_owned()),
        phone: identity.phone().map(|v| v.as_str().to_owned()),
        email: identity.email().map(|v| v.as_str().to_owned()),
        name: identity.name().as_str().to_owned(),
        created_at: Timestamp::now().as_micros(),
    };
    if let Some(index) = &mut tx.state.leads
        && let Some(id) = index.ids.pop_front()
    {
        row.id = id;
        index.staged.push(id);
        index.record(row.clone());
        return Ok(row);
    }
    let row: LeadRow = diesel::insert_into(leads::table)
        .values(NewLeadRow {
            external_id: row.external_id.as_deref(),
            phone: row.phone.as_deref(),
            email: row.email.as_deref(),
            name: &row.name,
            created_at: row.created_at,
        })
        .returning(leads::all_columns)
        .get_result_on(tx.connection())?;
    if let Some(index) = &mut tx.state.leads {
        index.record(row.clone());
    }
    Ok(row)
}

/// One identifier of a person, each unique among leads.
#[derive(Debug, Clone, Copy)]
enum Identifier<'a> {
    ExternalId(&'a str),
    Phone(&'a str),
    Email(&'a str),
}

impl<'a> Identifier<'a> {
    /// The identity's identifiers in lookup priority order.
    fn of(identity: &'a LeadIdentity) -> Vec<Self> {
        let external_id = identity.external_id().map(|v| Self::ExternalId(v.as_str()));
        let phone = identity.phone().map(|v| Self::Phone(v.as_str()));
        let email = identity.email().map(|v| Self::Email(v.as_str()));
        [external_id, phone, email].into_iter().flatten().collect()
    }

    /// The identifiers the lead holds.
    fn held_by(lead: &'a LeadRow) -> impl Iterator<Item = Self> {
        [
            lead.external_id.as_deref().map(Self::ExternalId),
            lead.phone.as_deref().map(Self::Phone),
            lead.email.as_deref().map(Self::Email),
        ]
        .into_iter()
        .flatten()
    }

    fn is_held_by(self, lead: &LeadRow) -> bool {
        self.slot(lead).is_some()
    }

    /// The lead's field for this kind of identifier.
    fn slot(self, lead: &LeadRow) -> &Option<String> {
        match self {
            Self::ExternalId(_) => &lead.external_id,
            Self::Phone(_) => &lead.phone,
            Self::Email(_) => &lead.email,
        }
    }

    fn set_on(self, lead: &mut LeadRow) {
        let (field, value) = match self {
            Self::ExternalId(value) => (&mut lead.external_id, value),
            Self::Phone(value) => (&mut lead.phone, value),
            Self::Email(value) => (&mut lead.email, value),
        };
        *field = Some(value.to_owned());
    }

    fn key(self) -> Key {
        match self {
            Self::ExternalId(value) => Key::ExternalId(value.to_owned()),
            Self::Phone(value) => Key::Phone(value.to_owned()),
            Self::Email(value) => Key::Email(value.to_owned()),
        }
    }
}

/// An identifier, owned: a key of [`LeadIndex`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    ExternalId(String),
    Phone(String),
    Email(String),
}

impl ReadAhead {
    pub(super) fn identity(&mut self, identity: &LeadIdentity) {
        for identifier in Identifier::of(identity) {
            match identifier {
                Identifier::ExternalId(value) => self.external_ids.push(value.to_owned()),
                Identifier::Phone(value) => self.phones.push(value.to_owned()),
                Identifier::Email(value) => self.emails.push(value.to_owned()),
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        let external_ids = self.external_ids.iter().cloned().map(Key::ExternalId);
        let phones = self.phones.iter().cloned().map(Key::Phone);
        let emails = self.emails.iter().cloned().map(Key::Email);
        external_ids.chain(phones).chain(emails)
    }
}

/// The leads a `Direct`-mode batch works with, in memory: those its
/// registrations' identifiers found when read ahead, those it created
/// (staged for one multi-row insert at commit, with ids taken ahead) and
/// what it filled in. Under the batch's transaction nobody else changes them
/// (a concurrent replica that does makes a unique index or a guarded update
/// fail, and the batch runs again in `Savepoints` mode, without an index).
#[derive(Debug, Default, Clone)]
pub(super) struct LeadIndex {
    /// Identifiers whose holder is known here: present in `holders`, or held
    /// by no lead.
    known: HashSet<Key>,
    holders: HashMap<Key, i64>,
    rows: HashMap<i64, LeadRow>,
    /// Ids taken ahead for new leads.
    ids: VecDeque<i64>,
    /// New leads, to be inserted at commit, by id.
    staged: Vec<i64>,
}

/// The leads holding any identifier of `ahead`, as one SELECT per kind of
/// identifier (UNION ALL), not one WHERE with ORs. On SQLite diesel writes
/// an empty list as `1=0`, and SQLite's planner gives up its index-per-OR
/// plan for a scan of every lead when one term cannot use an index
/// (measured: two thirds of the writer's time at 50,000 leads, in batches
/// with no email); a constant-false branch of the UNION reads nothing (the
/// read now pads every list, see [`PaddedIdentifiers`], so none is empty). On
/// PostgreSQL the same query serves (`= ANY($1)`, kept prepared by diesel):
/// each branch is an index scan (0.05 ms) given the sessions'
/// `random_page_cost` (see [`super::connection`]); with PostgreSQL's default
/// the lead read, in either form, was planned as a scan of every lead of a
/// table of a few thousand (0.5–1.7 ms a batch). A lead found by two
/// identifiers comes twice.
macro_rules! by_identifiers {
    ($ahead:expr) => {
        leads::table
            .filter(leads::external_id.eq_any(&$ahead.external_ids))
            .select(leads::all_columns)
            .union_all(
                leads::table
                    .filter(leads::phone.eq_any(&$ahead.phones))
                    .select(leads::all_columns),
            )
            .union_all(
                leads::table
                    .filter(leads::email.eq_any(&$ahead.emails))
                    .select(leads::all_columns),
            )
    };
}

/// The identifier lists of a [`ReadAhead`], each padded with `""` (no lead
/// has it: every identifier is 1–255 characters) to the length of the
/// longest rounded up to a power of two. The lead read then has one text per
/// power of two, which SQLite keeps prepared (see [`super::cached`]), and no
/// list is empty.
struct PaddedIdentifiers {
    external_ids: Vec<String>,
    phones: Vec<String>,
    emails: Vec<String>,
}

impl PaddedIdentifiers {
    fn of(ahead: &ReadAhead) -> Self {
        let longest = ahead
            .external_ids
            .len()
            .max(ahead.phones.len())
            .max(ahead.emails.len());
        let len = longest.next_power_of_two();
        let none = String::new();
        Self {
            external_ids: padded(&ahead.external_ids, len, &none),
            phones: padded(&ahead.phones, len, &none),
            emails: padded(&ahead.emails, len, &none),
        }
    }
}

impl LeadIndex {
    /// Reads the holders of every identifier in `ahead` in one query.
    pub(super) fn read(reader: &mut Reader<'_>, ahead: &ReadAhead) -> QueryResult<Self> {
        let mut index = Self::default();
        if ahead.keys().next().is_none() {
            return Ok(index);
        }
        let lists = PaddedIdentifiers::of(ahead);
        let rows: Vec<LeadRow> = reader.load(CachedBySql(by_identifiers!(lists)))?;
        index.known.extend(ahead.keys());
        for row in rows {
            index.record(row);
        }
        Ok(index)
    }

    pub(super) fn reserve(&mut self, ids: impl IntoIterator<Item = i64>) {
        self.ids.extend(ids);
    }

    /// `Some(holder)` when the index knows the identifier's holder (or that
    /// there is none); `None` when it must be looked up.
    fn holder(&self, identifier: Identifier) -> Option<Option<LeadRow>> {
        let key = identifier.key();
        if !self.known.contains(&key) {
            return None;
        }
        Some(self.holders.get(&key).map(|id| self.rows[id].clone()))
    }

    fn record(&mut self, row: LeadRow) {
        for identifier in Identifier::held_by(&row) {
            let key = identifier.key();
            self.holders.insert(key.clone(), row.id);
            self.known.insert(key);
        }
        self.rows.insert(row.id, row);
    }

    fn is_staged(&self, id: i64) -> bool {
        self.staged.contains(&id)
    }

    /// The staged leads, to be inserted now.
    pub(super) fn take_staged(&mut self) -> Vec<LeadRow> {
        let staged = std::mem::take(&mut self.staged);
        staged.iter().map(|id| self.rows[id].clone()).collect()
    }
}

/// The lead holding the identifier, if any.
fn holder(tx: &mut WriteTx<'_>, identifier: Identifier) -> Result<Option<LeadRow>, Fault> {
    if let Some(index) = &tx.state.leads
        && let Some(known) = index.holder(identifier)
    {
        return Ok(known);
    }
    let query = leads::table.select(leads::all_columns);
    let mut reader = tx.reader();
    let row = match identifier {
        Identifier::ExternalId(value) => reader.first(query.filter(leads::external_id.eq(value))),
        Identifier::Phone(value) => reader.first(query.filter(leads::phone.eq(value))),
        Identifier::Email(value) => reader.first(query.filter(leads::email.eq(value))),
    };
    Ok(row.optional()?)
}

/// Gives the lead the identifiers (and the name) it lacks, unless another lead
/// already holds them; never overwrites a value it has.
fn fill_in(
    tx: &mut WriteTx<'_>,
    mut lead: LeadRow,
    identifiers: &[Identifier],
    identity: &LeadIdentity,
) -> Result<Lead, Fault> {
    let mut missing = Vec::new();
    for &identifier in identifiers {
        if !identifier.is_held_by(&lead) && holder(tx, identifier)?.is_none() {
            missing.push(identifier);
        }
    }
    let name = identity.name().as_str();
    let name_missing = lead.name.is_empty() && !name.is_empty();
    if missing.is_empty() && !name_missing {
        return Ok(lead.into());
    }
    for &identifier in &missing {
        identifier.set_on(&mut lead);
    }
    if name_missing {
        name.clone_into(&mut lead.name);
    }
    let staged = tx
        .state
        .leads
        .as_ref()
        .is_some_and(|index| index.is_staged(lead.id));
    if !staged {
        write_fill_in(tx, &lead, &missing, name_missing)?;
    }
    if let Some(index) = &mut tx.state.leads {
        index.record(lead.clone());
    }
    Ok(lead.into())
}

/// Writes what [`fill_in`] gave a stored lead. Each statement is guarded by
/// IS NULL (or an empty name): if a concurrent transaction filled the field
/// first, it matches nothing, and the transaction runs again to see it.
fn write_fill_in(
    tx: &mut WriteTx<'_>,
    lead: &LeadRow,
    missing: &[Identifier],
    name_missing: bool,
) -> Result<(), Fault> {
    let target = leads::table.find(lead.id);
    let connection = tx.connection();
    for identifier in missing {
        let written = match *identifier {
            Identifier::ExternalId(value) => {
                diesel::update(target.filter(leads::external_id.is_null()))
                    .set(leads::external_id.eq(value))
                    .execute_on(connection)?
            }
            Identifier::Phone(value) => diesel::update(target.filter(leads::phone.is_null()))
                .set(leads::phone.eq(value))
                .execute_on(connection)?,
            Identifier::Email(value) => diesel::update(target.filter(leads::email.is_null()))
                .set(leads::email.eq(value))
                .execute_on(connection)?,
        };
        if written != 1 {
            return Err(Fault::Conflict(format!("lead {} changed", lead.id)));
        }
    }
    if name_missing {
        let written = diesel::update(target.filter(leads::name.eq("")))
            .set(leads::name.eq(&lead.name))
            .execute_on(connection)?;
        if written != 1 {
            return Err(Fault::Conflict(format!("lead {} changed", lead.id)));
        }
    }
    Ok(())
}

pub(crate) fn get(reader: &mut Reader<'_>, id: i64) -> Result<Lead> {
    find(reader, id)?.ok_or_else(|| Error::not_found(format_args!("lead {id}")))
}

fn find(reader: &mut Reader<'_>, id: i64) -> QueryResult<Option<Lead>> {
    Ok(reader
        .first::<_, LeadRow>(leads::table.find(id).select(leads::all_columns))
        .optional()?
        .map(Lead::from))
}

/// NOT_FOUND unless the lead exists.
pub(crate) fn must_exist(reader: &mut Reader<'_>, id: i64) -> Result<()> {
    reader.must_find(leads::table.find(id), format_args!("lead {id}"))
}

pub(crate) fn list(reader: &mut Reader<'_>, page: PageRequest) -> Result<Page<Lead>> {
    let query = leads::table.select(leads::all_columns).into_boxed();
    Ok(keyset_page!(reader, query, leads::id, page, LeadRow => Lead)?)
}

#[cfg(test)]
mod tests {
    use diesel::{Connection, RunQueryDsl, SqliteConnection, sql_types::Text, sqlite::Sqlite};
    use diesel_migrations::MigrationHarness;

    use super::*;

    #[derive(diesel::QueryableByName)]
    struct PlanStep {
        #[diesel(sql_type = Text)]
        detail: String,
    }

    /// A batch whose registrations carry no email: its list holds only the
    /// padding.
    #[test]
    fn the_sqlite_lead_read_seeks_every_identifier_when_a_list_is_empty() {
        let mut sqlite = SqliteConnection::establish(":memory:").unwrap();
        sqlite
            .run_pending_migrations(super::super::connection::SQLITE_MIGRATIONS)
            .unwrap();
        let ahead = ReadAhead {
            external_ids: vec!["crm-1".into()],
            phones: vec!["+15550000001".into()],
            ..ReadAhead::default()
        };
        let lists = PaddedIdentifiers::of(&ahead);
        let query = by_identifiers!(lists);
        let sql = diesel::debug_query::<Sqlite, _>(&query).to_string();
        let sql = sql.split(" -- binds").next().unwrap();
        let plan: Vec<PlanStep> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind::<Text, _>("crm-1")
            .bind::<Text, _>("+15550000001")
            .bind::<Text, _>("")
            .load(&mut sqlite)
            .unwrap();
        let details: Vec<&str> = plan.iter().map(|step| step.detail.as_str()).collect();
        assert!(
            details.iter().any(|d| d.contains("external_id=?"))
                && details.iter().any(|d| d.contains("phone=?"))
                && details.iter().any(|d| d.contains("email=?")),
            "{details:?}"
        );
        let scans = details
            .iter()
            .filter(|d| d.starts_with("SCAN leads"))
            .count();
        assert_eq!(scans, 0, "{details:?}");
    }
}
