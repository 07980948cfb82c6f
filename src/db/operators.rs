use super::run::RunOn;
use diesel::prelude::*;
use rand::Rng;

use super::{
    DbConnection, dispatch, locks,
    models::{NewOperatorRow, OperatorRow},
    schema::{operators, source_operators},
    tx_state::{self, OperatorLoad},
};
use crate::{
    Error, Result,
    domain::{NewOperator, Operator, OperatorChanges, Page, PageRequest, Timestamp},
    selector::{Candidate, draw_until_taken},
};

pub fn create(connection: &mut DbConnection, new: &NewOperator) -> Result<Operator> {
    let row: OperatorRow = diesel::insert_into(operators::table)
        .values(NewOperatorRow {
            name: new.name.as_str(),
            is_active: new.is_active,
            max_load: new.max_load.get(),
            active_load: 0,
            created_at: Timestamp::now().as_micros(),
        })
        .returning(operators::all_columns)
        .get_result_on(connection)?;
    Ok(row.into())
}

pub fn get(connection: &mut DbConnection, id: i64) -> Result<Operator> {
    operators::table
        .find(id)
        .select(operators::all_columns)
        .first_on::<OperatorRow>(connection)
        .optional()?
        .map(Operator::from)
        .ok_or_else(|| Error::not_found(format_args!("operator {id}")))
}

pub fn exists(connection: &mut DbConnection, id: i64) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(operators::table.find(id))).get_result_on(connection)?)
}

pub fn list(
    connection: &mut DbConnection,
    page: PageRequest,
    is_active: Option<bool>,
) -> Result<Page<Operator>> {
    let mut query = operators::table
        .filter(operators::id.gt(page.after()))
        .order(operators::id)
        .limit(page.size() + 1)
        .select(operators::all_columns)
        .into_boxed();
    if let Some(is_active) = is_active {
        query = query.filter(operators::is_active.eq(is_active));
    }
    let rows: Vec<Operator> = query
        .load::<OperatorRow>(connection)?
        .into_iter()
        .map(Operator::from)
        .collect();
    Ok(page.paginate(rows, |operator| operator.id))
}

#[derive(AsChangeset)]
#[diesel(table_name = operators)]
struct OperatorChangeset<'a> {
    name: Option<&'a str>,
    is_active: Option<bool>,
    max_load: Option<i32>,
}

/// Applies the changes; new capacity is handed to pending contacts at once.
pub fn update<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    id: i64,
    changes: &OperatorChanges,
    rng: &mut R,
) -> Result<Operator> {
    // The cached rows would miss this change.
    flush_loads(connection)?;
    let served = if changes.may_add_capacity() {
        locks::operator_sources(connection, id, None)?
    } else {
        Vec::new()
    };
    let changeset = OperatorChangeset {
        name: changes.name().map(|name| name.as_str()),
        is_active: changes.is_active(),
        max_load: changes.max_load().map(|max_load| max_load.get()),
    };
    let updated = diesel::update(operators::table.find(id))
        .set(&changeset)
        .execute_on(connection)?;
    if updated == 0 {
        return Err(Error::not_found(format_args!("operator {id}")));
    }
    dispatch::pending(connection, &served, rng)?;
    // The answer shows the load after the dispatch.
    flush_loads(connection)?;
    get(connection, id)
}

/// The operators of the source's weight table that can take a contact now.
pub fn candidates(connection: &mut DbConnection, source_id: i64) -> Result<Vec<Candidate>> {
    let rows: Vec<(i64, i32)> = source_operators::table
        .inner_join(operators::table)
        .filter(source_operators::source_id.eq(source_id))
        .filter(operators::is_active.eq(true))
        .filter(operators::active_load.lt(operators::max_load))
        .order(operators::id)
        .select((operators::id, source_operators::weight))
        .load_on(connection)?;
    Ok(rows
        .into_iter()
        .map(|(operator_id, weight)| Candidate {
            operator_id,
            // The schema keeps weights within 1..=1_000_000.
            weight: weight.unsigned_abs(),
        })
        .collect())
}

/// Takes one unit of the operator's load if it is active and below its limit.
/// The guard in the statement is what keeps the invariant: on PostgreSQL the
/// update waits for a concurrent writer of the row and re-checks the guard on
/// the row it committed.
pub fn take_slot(connection: &mut DbConnection, operator_id: i64) -> Result<bool> {
    let taken = diesel::update(
        operators::table
            .find(operator_id)
            .filter(operators::is_active.eq(true))
            .filter(operators::active_load.lt(operators::max_load)),
    )
    .set(operators::active_load.eq(operators::active_load + 1))
    .execute_on(connection)?;
    Ok(taken == 1)
}

/// Gives back one unit of the operator's load.
pub fn release_slot(connection: &mut DbConnection, operator_id: i64) -> Result<()> {
    if tx_state::loads_cached() && tx_state::release_cached(operator_id) {
        return Ok(());
    }
    diesel::update(operators::table.find(operator_id))
        .set(operators::active_load.eq(operators::active_load - 1))
        .execute_on(connection)?;
    Ok(())
}

/// Draws an operator for a contact of the source and takes one unit of its
/// load; an operator that filled up meanwhile is excluded and the draw repeats.
/// Takes the source's locks first (see [`locks`]).
pub fn claim_for_source<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    source_id: i64,
    rng: &mut R,
) -> Result<Option<i64>> {
    locks::sources(connection, &[source_id])?;
    if tx_state::loads_cached() {
        let candidates = match tx_state::cached_candidates(source_id) {
            Some(candidates) => candidates,
            None => {
                cache_source(connection, source_id)?;
                tx_state::cached_candidates(source_id).unwrap_or_default()
            }
        };
        return draw_until_taken(candidates, rng, |operator_id| {
            Ok(tx_state::take_cached(operator_id))
        });
    }
    let candidates = candidates(connection, source_id)?;
    draw_until_taken(candidates, rng, |operator_id| {
        take_slot(connection, operator_id)
    })
}

/// Whether any operator of the source could take a contact now.
pub fn has_candidates(connection: &mut DbConnection, source_id: i64) -> Result<bool> {
    locks::sources(connection, &[source_id])?;
    if tx_state::loads_cached() {
        if tx_state::cached_candidates(source_id).is_none() {
            cache_source(connection, source_id)?;
        }
        return Ok(tx_state::cached_candidates(source_id).is_some_and(|c| !c.is_empty()));
    }
    Ok(!candidates(connection, source_id)?.is_empty())
}

/// Reads the source's weight table and operator rows into the transaction's
/// cache. The caller holds the source's locks, so the rows cannot change
/// under the cache until commit.
fn cache_source(connection: &mut DbConnection, source_id: i64) -> Result<()> {
    let table: Vec<(i64, i32)> = source_operators::table
        .filter(source_operators::source_id.eq(source_id))
        .order(source_operators::operator_id)
        .select((source_operators::operator_id, source_operators::weight))
        .load_on(connection)?;
    let ids: Vec<i64> = table.iter().map(|(operator_id, _)| *operator_id).collect();
    let rows: Vec<(i64, bool, i32, i32)> = operators::table
        .filter(operators::id.eq_any(&ids))
        .select((
            operators::id,
            operators::is_active,
            operators::max_load,
            operators::active_load,
        ))
        .load_on(connection)?;
    tx_state::cache_source(
        source_id,
        table
            .into_iter()
            .map(|(operator_id, weight)| (operator_id, weight.unsigned_abs()))
            .collect(),
        rows.into_iter()
            .map(|(id, is_active, max_load, active_load)| {
                (
                    id,
                    OperatorLoad {
                        is_active,
                        max_load,
                        active_load,
                    },
                )
            })
            .collect(),
    );
    Ok(())
}

/// Writes the load changes the transaction made in memory and empties the
/// cache: before commit, and before a statement that changes operators or
/// weight tables behind the cache's back.
pub fn flush_loads(connection: &mut DbConnection) -> Result<()> {
    for (operator_id, delta) in tx_state::take_load_changes() {
        if delta > 0 {
            // The guard still holds the invariant in SQL: if the cache were
            // ever wrong, the whole transaction fails instead of overfilling.
            let written = diesel::update(
                operators::table
                    .find(operator_id)
                    .filter(operators::is_active.eq(true))
                    .filter((operators::active_load + delta).le(operators::max_load)),
            )
            .set(operators::active_load.eq(operators::active_load + delta))
            .execute_on(connection)?;
            if written != 1 {
                return Err(Error::Internal(format!(
                    "operator {operator_id} cannot take {delta} more contacts"
                )));
            }
        } else if delta < 0 {
            diesel::update(operators::table.find(operator_id))
                .set(operators::active_load.eq(operators::active_load + delta))
                .execute_on(connection)?;
        }
    }
    Ok(())
}
