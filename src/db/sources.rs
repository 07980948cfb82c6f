use super::run::RunOn;
use diesel::prelude::*;
use rand::Rng;

use super::{
    DbConnection, counts, dispatch, locks,
    models::{NewSourceRow, SourceRow, WeightRow},
    schema::{operators, source_operators, sources},
    tx_state,
};
use crate::{
    Error, Result,
    domain::{NewSource, Page, PageRequest, Source, SourceKey, Timestamp, WeightTable},
};

/// A taken `bot_id` is found by a lookup, not by catching the unique
/// violation: a unit of work may answer with a domain error only when it has
/// written nothing (see the writer's direct mode). Should another replica
/// insert the same `bot_id` in between, the violation is a database error, the
/// batch runs again, and the lookup finds it.
pub fn create(connection: &mut DbConnection, new: &NewSource) -> Result<Source> {
    let taken: bool = diesel::select(diesel::dsl::exists(
        sources::table.filter(sources::bot_id.eq(new.bot_id.as_str())),
    ))
    .get_result_on(connection)?;
    if taken {
        return Err(Error::AlreadyExists(format!(
            "bot_id: a source with bot_id {:?} already exists",
            new.bot_id.as_str()
        )));
    }
    let row: SourceRow = diesel::insert_into(sources::table)
        .values(NewSourceRow {
            bot_id: new.bot_id.as_str(),
            name: new.name.as_str(),
            created_at: Timestamp::now().as_micros(),
        })
        .returning(sources::all_columns)
        .get_result_on(connection)?;
    counts::add_source(connection, row.id)?;
    Ok(row.into())
}

pub fn get(connection: &mut DbConnection, key: &SourceKey) -> Result<Source> {
    let query = sources::table.select(sources::all_columns);
    let row = match key {
        SourceKey::Id(id) => query
            .find(*id)
            .first_on::<SourceRow>(connection)
            .optional()?,
        SourceKey::BotId(bot_id) => query
            .filter(sources::bot_id.eq(bot_id.as_str()))
            .first_on(connection)
            .optional()?,
    };
    row.map(Source::from)
        .ok_or_else(|| Error::not_found(describe(key)))
}

/// The id of the source the key names. Writer threads remember the answer
/// (see [`tx_state::known_source`]): one round trip less per registration.
pub fn resolve(connection: &mut DbConnection, key: &SourceKey) -> Result<i64> {
    let direct = tx_state::direct_mode();
    if direct && let Some(id) = tx_state::known_source(key) {
        return Ok(id);
    }
    let id = match key {
        SourceKey::Id(id) => sources::table
            .find(*id)
            .select(sources::id)
            .first_on(connection)
            .optional()?,
        SourceKey::BotId(bot_id) => sources::table
            .filter(sources::bot_id.eq(bot_id.as_str()))
            .select(sources::id)
            .first_on(connection)
            .optional()?,
    };
    let id = id.ok_or_else(|| Error::not_found(describe(key)))?;
    if direct {
        tx_state::remember_source(key, id);
    }
    Ok(id)
}

fn describe(key: &SourceKey) -> String {
    match key {
        SourceKey::Id(id) => format!("source {id}"),
        SourceKey::BotId(bot_id) => format!("source with bot_id {:?}", bot_id.as_str()),
    }
}

pub fn exists(connection: &mut DbConnection, id: i64) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(sources::table.find(id))).get_result_on(connection)?)
}

pub fn list(connection: &mut DbConnection, page: PageRequest) -> Result<Page<Source>> {
    let rows: Vec<Source> = sources::table
        .filter(sources::id.gt(page.after()))
        .order(sources::id)
        .limit(page.size() + 1)
        .select(sources::all_columns)
        .load_on::<SourceRow>(connection)?
        .into_iter()
        .map(Source::from)
        .collect();
    Ok(page.paginate(rows, |source| source.id))
}

/// Replaces the whole weight table, then hands the source's pending contacts
/// to whoever the new table lets take them.
pub fn set_operators<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    source_id: i64,
    table: &WeightTable,
    rng: &mut R,
) -> Result<WeightTable> {
    if !locks::source_table(connection, source_id)? {
        return Err(Error::not_found(format_args!("source {source_id}")));
    }
    // The cached weight tables would miss this change.
    super::operators::flush_loads(connection)?;
    let wanted: Vec<i64> = table.entries().iter().map(|e| e.operator_id).collect();
    let known: Vec<i64> = operators::table
        .filter(operators::id.eq_any(&wanted))
        .select(operators::id)
        .load_on(connection)?;
    if let Some(missing) = wanted.iter().find(|id| !known.contains(id)) {
        return Err(Error::not_found(format_args!("operator {missing}")));
    }
    diesel::delete(source_operators::table.filter(source_operators::source_id.eq(source_id)))
        .execute_on(connection)?;
    for entry in table.entries() {
        diesel::insert_into(source_operators::table)
            .values(WeightRow {
                source_id,
                operator_id: entry.operator_id,
                weight: entry.weight.get(),
            })
            .execute_on(connection)?;
        counts::add_pair(connection, entry.operator_id, source_id)?;
    }
    locks::sources(connection, &[source_id])?;
    dispatch::pending(connection, &[source_id], rng)?;
    weights(connection, source_id)
}

/// The source's weight table, or NOT_FOUND for an unknown source.
pub fn list_operators(connection: &mut DbConnection, source_id: i64) -> Result<WeightTable> {
    if !exists(connection, source_id)? {
        return Err(Error::not_found(format_args!("source {source_id}")));
    }
    weights(connection, source_id)
}

fn weights(connection: &mut DbConnection, source_id: i64) -> Result<WeightTable> {
    let rows: Vec<(i64, i32)> = source_operators::table
        .filter(source_operators::source_id.eq(source_id))
        .order(source_operators::operator_id)
        .select((source_operators::operator_id, source_operators::weight))
        .load_on(connection)?;
    // Stored rows satisfy the schema's CHECKs, so this re-parse cannot fail.
    WeightTable::parse("operators", rows)
}
