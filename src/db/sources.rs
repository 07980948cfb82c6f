use diesel::prelude::*;

use super::{
    counts, dispatch, locks,
    models::{NewSourceRow, SourceRow, WeightRow, nanos},
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::{contacts, operators, source_operators, sources},
    tx::{Mode, WriteTx, WriterMemory},
    units::{CheckContext, Checked, OnUniqueViolation, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{
        NewSource, Page, PageRequest, Source, SourceChanges, SourceKey, Timestamp, WeightTable,
    },
    error::Fault,
};

/// A source's routing settings in microseconds, the unit of times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(super) accept_timeout: Option<i64>,
    pub(super) sticky_window: Option<i64>,
}

impl Settings {
    /// From the `sources` columns (nanoseconds).
    pub(super) fn from_nanos(accept_timeout: Option<i64>, sticky_window: Option<i64>) -> Self {
        Self {
            accept_timeout: accept_timeout.map(|nanos| nanos / 1_000),
            sticky_window: sticky_window.map(|nanos| nanos / 1_000),
        }
    }

    /// The accept deadline of a contact assigned at `assigned_at`, if the
    /// source wants acceptance.
    pub(super) fn deadline(self, assigned_at: i64) -> Option<i64> {
        self.accept_timeout
            .map(|timeout| assigned_at.saturating_add(timeout))
    }
}

/// The source's routing settings as this transaction sees them. On
/// PostgreSQL they come with the source's locks (taken here if not held), on
/// SQLite from one read per transaction; either way they hold until commit.
pub(super) fn settings(tx: &mut WriteTx<'_>, source_id: i64) -> Result<Settings, Fault> {
    locks::sources(tx, &[source_id])?;
    if let Some(settings) = tx.state.settings.get(&source_id) {
        return Ok(*settings);
    }
    let (accept_timeout, sticky_window): (Option<i64>, Option<i64>) = tx
        .reader()
        .first(
            sources::table
                .find(source_id)
                .select((sources::accept_timeout_nanos, sources::sticky_window_nanos)),
        )
        .optional()?
        .ok_or_else(|| Fault::vanished(format_args!("source {source_id}")))?;
    let settings = Settings::from_nanos(accept_timeout, sticky_window);
    tx.state.settings.insert(source_id, settings);
    Ok(settings)
}

pub(crate) fn get(reader: &mut Reader<'_>, key: &SourceKey) -> Result<Source> {
    let query = sources::table.select(sources::all_columns);
    let row: Option<SourceRow> = match key {
        SourceKey::Id(id) => reader.first(query.find(*id)).optional()?,
        SourceKey::BotId(bot_id) => reader
            .first(query.filter(sources::bot_id.eq(bot_id.as_str())))
            .optional()?,
    };
    row.map(Source::from)
        .ok_or_else(|| Error::not_found(describe(key)))
}

/// The id of the source the key names. In `Direct` mode the writer's memory
/// answers for a source it has seen: one round trip less per registration.
pub(crate) fn resolve(
    reader: &mut Reader<'_>,
    key: &SourceKey,
    mode: Mode,
    memory: &mut WriterMemory,
) -> Result<i64> {
    let remembered = mode == Mode::Direct;
    if remembered && let Some(id) = memory.source_id(key) {
        return Ok(id);
    }
    let id = match key {
        SourceKey::Id(id) => reader
            .first(sources::table.find(*id).select(sources::id))
            .optional()?,
        SourceKey::BotId(bot_id) => reader
            .first(
                sources::table
                    .filter(sources::bot_id.eq(bot_id.as_str()))
                    .select(sources::id),
            )
            .optional()?,
    };
    let id = id.ok_or_else(|| Error::not_found(describe(key)))?;
    if remembered {
        memory.remember_source(key, id);
    }
    Ok(id)
}

fn describe(key: &SourceKey) -> String {
    match key {
        SourceKey::Id(id) => format!("source {id}"),
        SourceKey::BotId(bot_id) => format!("source with bot_id {:?}", bot_id.as_str()),
    }
}

/// NOT_FOUND unless the source exists.
pub(crate) fn must_exist(reader: &mut Reader<'_>, id: i64) -> Result<()> {
    reader.must_find(sources::table.find(id), format_args!("source {id}"))
}

pub(crate) fn list(reader: &mut Reader<'_>, page: PageRequest) -> Result<Page<Source>> {
    let query = sources::table.select(sources::all_columns).into_boxed();
    Ok(keyset_page!(reader, query, sources::id, page, SourceRow => Source)?)
}

/// The source's weight table, or NOT_FOUND for an unknown source.
pub(crate) fn list_operators(reader: &mut Reader<'_>, source_id: i64) -> Result<WeightTable> {
    must_exist(reader, source_id)?;
    Ok(weights(reader, source_id)?)
}

fn weights(reader: &mut Reader<'_>, source_id: i64) -> Result<WeightTable, Fault> {
    let rows: Vec<(i64, i32)> = reader.load(
        source_operators::table
            .filter(source_operators::source_id.eq(source_id))
            .order(source_operators::operator_id)
            .select((source_operators::operator_id, source_operators::weight)),
    )?;
    // Stored rows satisfy the schema's CHECKs, so this re-parse cannot fail.
    WeightTable::parse("operators", rows).map_err(|error| Fault::Internal(error.to_string()))
}

/// CreateSource. A taken `bot_id` is found by the check; should another
/// replica insert the same `bot_id` in between, the unique violation runs
/// the transaction again and the check finds it.
pub(crate) struct Create(pub(crate) NewSource);

impl WriteUnit for Create {
    type Output = Source;
    type Plan = ();
    const ON_UNIQUE_VIOLATION: OnUniqueViolation = OnUniqueViolation::Retry;

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<(), Source>> {
        let bot_id = self.0.bot_id.as_str().to_owned();
        if context
            .reader
            .exists(sources::table.filter(sources::bot_id.eq(bot_id)))?
        {
            return Err(Error::AlreadyExists(format!(
                "bot_id: a source with bot_id {:?} already exists",
                self.0.bot_id.as_str()
            )));
        }
        Ok(Checked::Apply(()))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, (): ()) -> Result<Source, Fault> {
        let Self(new) = self;
        let row: SourceRow = diesel::insert_into(sources::table)
            .values(NewSourceRow {
                bot_id: new.bot_id.as_str(),
                name: new.name.as_str(),
                created_at: Timestamp::now().as_micros(),
                accept_timeout_nanos: new.accept_timeout.map(nanos),
                sticky_window_nanos: new.sticky_window.map(nanos),
            })
            .returning(sources::all_columns)
            .get_result_on(tx.connection())?;
        counts::add_source(tx, row.id)?;
        Ok(row.into())
    }
}

/// SetSourceOperators: replaces the whole weight table, then hands the
/// source's pending contacts to whoever the new table lets take them.
pub(crate) struct SetOperators {
    pub(crate) source_id: i64,
    pub(crate) table: WeightTable,
}

impl WriteUnit for SetOperators {
    type Output = WeightTable;
    type Plan = ();

    /// Sources and operators are never deleted, so what this finds stays true.
    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<(), WeightTable>> {
        let reader = &mut context.reader;
        must_exist(reader, self.source_id)?;
        let wanted: Vec<i64> = self.table.entries().iter().map(|e| e.operator_id).collect();
        let known: Vec<i64> = reader.load(
            operators::table
                .filter(operators::id.eq_any(&wanted))
                .select(operators::id),
        )?;
        if let Some(missing) = wanted.iter().find(|id| !known.contains(id)) {
            return Err(Error::not_found(format_args!("operator {missing}")));
        }
        Ok(Checked::Apply(()))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, (): ()) -> Result<WeightTable, Fault> {
        let Self { source_id, table } = self;
        let source_id = *source_id;
        locks::source_table(tx, source_id)?;
        diesel::delete(source_operators::table.filter(source_operators::source_id.eq(source_id)))
            .execute_on(tx.operator_tables()?)?;
        for entry in table.entries() {
            diesel::insert_into(source_operators::table)
                .values(WeightRow {
                    source_id,
                    operator_id: entry.operator_id,
                    weight: entry.weight.get(),
                })
                .execute_on(tx.operator_tables()?)?;
            counts::add_pair(tx, entry.operator_id, source_id)?;
        }
        dispatch::pending(tx, &[source_id])?;
        weights(&mut tx.reader(), source_id)
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = sources)]
struct SourceChangeset<'a> {
    name: Option<&'a str>,
    /// `Some(None)` writes NULL: the feature off.
    accept_timeout_nanos: Option<Option<i64>>,
    sticky_window_nanos: Option<Option<i64>>,
}

/// UpdateSource: changes the fields present. A new accept timeout applies
/// to contacts assigned from then on; turning it off clears the deadlines of
/// the contacts waiting, which stay with their operators.
pub(crate) struct Update {
    pub(crate) id: i64,
    pub(crate) changes: SourceChanges,
}

impl WriteUnit for Update {
    type Output = Source;
    type Plan = ();

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<(), Source>> {
        must_exist(&mut context.reader, self.id)?;
        Ok(Checked::Apply(()))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, (): ()) -> Result<Source, Fault> {
        let Self { id, changes } = self;
        let id = *id;
        locks::source_settings(tx, id)?;
        let changeset = SourceChangeset {
            name: changes.name.as_ref().map(|name| name.as_str()),
            accept_timeout_nanos: changes.accept_timeout.map(|timeout| timeout.map(nanos)),
            sticky_window_nanos: changes.sticky_window.map(|window| window.map(nanos)),
        };
        diesel::update(sources::table.find(id))
            .set(&changeset)
            .execute_on(tx.connection())?;
        if changes.accept_timeout == Some(None) {
            // Waiting contacts stay with their operators, with no deadline.
            diesel::update(
                contacts::table
                    .filter(contacts::source_id.eq(id))
                    .filter(contacts::accept_deadline.is_not_null()),
            )
            .set(contacts::accept_deadline.eq(None::<i64>))
            .execute_on(tx.connection())?;
        }
        let row: SourceRow = tx
            .reader()
            .first(sources::table.find(id).select(sources::all_columns))
            .optional()?
            .ok_or_else(|| Fault::vanished(format_args!("source {id}")))?;
        Ok(row.into())
    }
}
