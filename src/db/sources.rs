use diesel::prelude::*;

use super::{
    counts, dispatch, locks,
    models::{NewSourceRow, SourceRow, WeightRow},
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::{operators, source_operators, sources},
    tx::{Mode, WriteTx, WriterMemory},
    units::{CheckContext, Checked, OnUniqueViolation, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{NewSource, Page, PageRequest, Source, SourceKey, Timestamp, WeightTable},
    error::Fault,
};

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
