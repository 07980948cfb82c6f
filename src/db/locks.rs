//! Row locks for PostgreSQL, where transactions of several writer threads and
//! replicas run at once. SQLite needs none: its write transactions are
//! serialized (`BEGIN IMMEDIATE`).
//!
//! Every transaction that changes a source's contacts first takes, in this
//! order: the sources' rows (KEY SHARE, by id), then every operator in their
//! weight tables (FOR UPDATE, by id); only then contacts and leads it has not
//! inserted itself, and counters last. One order for everyone means two
//! transactions cannot wait for each other in a cycle (across the units of a
//! batch the order can break; the database then aborts one, which is retried).
//!
//! Holding a source's operators also makes the candidate list read next
//! exact: a close, activation or new limit on any of them either committed
//! before (and is seen) or waits for this commit (and then sees what this
//! transaction wrote, such as a new pending contact).

use std::collections::HashMap;

use diesel::{
    QueryableByName,
    prelude::*,
    sql_types::{Array, BigInt, Bool, Integer, Nullable},
};

use super::{
    DbConnection,
    loads::{self, LockedOperator},
    prepared::Prepared,
    schema::{operators, source_operators, sources},
    tx::WriteTx,
};
use crate::{db::sources::Settings as SourceSettings, error::Fault};

/// Locks the sources and all their operators, unless this transaction already holds them.
pub(super) fn sources(tx: &mut WriteTx<'_>, source_ids: &[i64]) -> Result<(), Fault> {
    lock(tx, source_ids, &[]).map(drop)
}

/// A source row as [`lock`] locked it, with its routing settings and the
/// asked-about operators in its weight table.
#[derive(QueryableByName)]
struct LockedSource {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    accept_timeout_nanos: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    sticky_window_nanos: Option<i64>,
    #[diesel(sql_type = Array<BigInt>)]
    holders: Vec<i64>,
}

/// An operator row as [`lock`] locked it, once for each source whose weight
/// table holds it.
#[derive(QueryableByName)]
struct LockedEntry {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    is_active: bool,
    #[diesel(sql_type = Integer)]
    max_load: i32,
    #[diesel(sql_type = Integer)]
    active_load: i32,
    #[diesel(sql_type = BigInt)]
    source_id: i64,
    #[diesel(sql_type = Integer)]
    weight: i32,
}

/// Locks the sources `source_ids` and every source an operator of `holders`
/// serves, then every operator of their weight tables, in two statements:
/// sources by id (KEY SHARE), operators by id (FOR UPDATE). Sources this
/// transaction holds already are locked again (a no-op) but their operators
/// are not. Returns, for each of `holders` that serves a source, the sources
/// it serves, by id. PostgreSQL only: nothing on SQLite.
fn lock(
    tx: &mut WriteTx<'_>,
    source_ids: &[i64],
    holders: &[i64],
) -> Result<HashMap<i64, Vec<i64>>, Fault> {
    let DbConnection::Postgres(pg) = &mut *tx.connection else {
        return Ok(HashMap::new());
    };
    let locked = &tx.state.locked_sources;
    let mut wanted: Vec<i64> = source_ids
        .iter()
        .copied()
        .filter(|id| !locked.contains(id))
        .collect();
    if wanted.is_empty() && holders.is_empty() {
        return Ok(HashMap::new());
    }
    wanted.sort_unstable();
    wanted.dedup();
    // Both statements are kept prepared (see [`super::prepared`]). Their ids
    // are looked up by `= ANY(ARRAY(…))`, which PostgreSQL answers from the
    // primary key in a generic plan made on tables of more than a few pages;
    // an `IN (subquery)` or a join to an unnested list was a sequential scan
    // there (checked with `force_generic_plan` on 5,000 operators and 2,000
    // sources).
    //
    // The routing settings come with the lock, at no extra round trip; an
    // UpdateSource (FOR UPDATE, see [`source_settings`]) waits for this
    // transaction, so they stay true until it commits; so do the weight
    // tables read with the operators (a new table waits for the lock too,
    // see [`source_table`]).
    let rows: Vec<LockedSource> = Prepared::new(
        "SELECT s.id, s.accept_timeout_nanos, s.sticky_window_nanos, \
                ARRAY(SELECT so.operator_id FROM source_operators so \
                      WHERE so.source_id = s.id AND so.operator_id = ANY($1) \
                      ORDER BY so.operator_id) AS holders \
         FROM sources s \
         WHERE s.id = ANY(ARRAY(SELECT unnest($2::bigint[]) \
                                UNION SELECT so.source_id FROM source_operators so \
                                      WHERE so.operator_id = ANY($3))) \
         ORDER BY s.id \
         FOR KEY SHARE OF s",
    )
    .bind::<Array<BigInt>, _>(holders)
    .bind::<Array<BigInt>, _>(&wanted)
    .bind::<Array<BigInt>, _>(holders)
    .load(pg)?;
    let mut served: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut newly: Vec<i64> = Vec::new();
    for row in rows {
        for &operator_id in &row.holders {
            served.entry(operator_id).or_default().push(row.id);
        }
        if tx.state.locked_sources.contains(&row.id) {
            continue;
        }
        tx.state.settings.insert(
            row.id,
            SourceSettings::from_nanos(row.accept_timeout_nanos, row.sticky_window_nanos),
        );
        newly.push(row.id);
    }
    if newly.is_empty() {
        return Ok(served);
    }
    // The operators come with their lock as last committed, and with the
    // weight tables they are in (which the sources' locks keep): the load
    // cache takes both (see [`loads::locked`]) instead of reading them again.
    let entries: Vec<LockedEntry> = Prepared::new(
        "SELECT o.id, o.is_active, o.max_load, o.active_load, so.source_id, so.weight \
         FROM operators o JOIN source_operators so ON so.operator_id = o.id \
         WHERE o.id = ANY(ARRAY(SELECT t.operator_id FROM source_operators t \
                                WHERE t.source_id = ANY($1))) \
           AND so.source_id = ANY($2) \
         ORDER BY o.id, so.source_id \
         FOR UPDATE OF o",
    )
    .bind::<Array<BigInt>, _>(&newly)
    .bind::<Array<BigInt>, _>(&newly)
    .load(pg)?;
    let mut tables: HashMap<i64, Vec<(i64, i32)>> =
        newly.iter().map(|&id| (id, Vec::new())).collect();
    let mut operators: Vec<LockedOperator> = Vec::new();
    for entry in entries {
        if let Some(table) = tables.get_mut(&entry.source_id) {
            table.push((entry.id, entry.weight));
        }
        if operators.last().is_none_or(|&(id, ..)| id != entry.id) {
            operators.push((entry.id, entry.is_active, entry.max_load, entry.active_load));
        }
    }
    tx.state.locked_sources.extend(newly);
    tx.state
        .locked_operators
        .extend(operators.iter().map(|&(id, ..)| id));
    loads::locked(tx, operators, tables);
    Ok(served)
}

/// Takes, for a whole batch at once, the locks its units will take one by
/// one: the sources of `contacts` (source id and, for an ACTIVE one, its
/// operator), every source those operators serve, and the sources
/// registrations draw for (`drawn_for`). One round of lock statements
/// instead of one per unit; the units' own calls then find them held.
/// PostgreSQL only.
pub(super) fn ahead(
    tx: &mut WriteTx<'_>,
    contacts: &[(i64, Option<i64>)],
    drawn_for: &[i64],
) -> Result<(), Fault> {
    let mut holders: Vec<i64> = contacts.iter().filter_map(|&(_, op)| op).collect();
    holders.sort_unstable();
    holders.dedup();
    let mut wanted: Vec<i64> = contacts.iter().map(|&(source_id, _)| source_id).collect();
    wanted.extend_from_slice(drawn_for);
    // What `operator_sources` would have found and locked for each holder.
    // One that serves no source is left to it (its own lock).
    let served = lock(tx, &wanted, &holders)?;
    for (operator_id, sources) in served {
        tx.state.served.insert(operator_id, sources);
    }
    Ok(())
}

/// Locks what a change of the operator's capacity needs: every source it
/// serves (plus `also`, a source it may have left) with their operators, and
/// the operator itself. Returns the sources it serves, by id.
pub(super) fn operator_sources(
    tx: &mut WriteTx<'_>,
    operator_id: i64,
    also: Option<i64>,
) -> Result<Vec<i64>, Fault> {
    if let Some(served) = tx.state.served.get(&operator_id) {
        let served = served.clone();
        // Usually a source it serves, and so held already.
        sources(tx, &Vec::from_iter(also))?;
        return Ok(served);
    }
    let served: Vec<i64> = tx.reader().load(
        source_operators::table
            .filter(source_operators::operator_id.eq(operator_id))
            .order(source_operators::source_id)
            .select(source_operators::source_id),
    )?;
    let mut wanted = served.clone();
    wanted.extend(also);
    sources(tx, &wanted)?;
    if let DbConnection::Postgres(pg) = &mut *tx.connection
        && !tx.state.locked_operators.contains(&operator_id)
    {
        // Held already when it is in a locked source's weight table; this
        // covers one that serves none.
        operators::table
            .find(operator_id)
            .select(operators::id)
            .for_update()
            .load::<i64>(pg)?;
        tx.state.locked_operators.insert(operator_id);
    }
    tx.state.served.insert(operator_id, served.clone());
    Ok(served)
}

/// Taken before a source's routing settings change: conflicts with the KEY
/// SHARE lock of [`sources()`], under which transactions read the settings, so
/// the change waits for them and they wait for it.
pub(super) fn source_settings(tx: &mut WriteTx<'_>, source_id: i64) -> Result<(), Fault> {
    if let DbConnection::Postgres(pg) = &mut *tx.connection {
        sources::table
            .find(source_id)
            .select(sources::id)
            .for_update()
            .load::<i64>(pg)?;
    }
    tx.state.settings.remove(&source_id);
    Ok(())
}

/// Taken before a source's weight table is replaced: conflicts with the
/// KEY SHARE lock of [`sources()`] (and of every contact insert), so the change
/// waits for those transactions and they wait for it.
pub(super) fn source_table(tx: &mut WriteTx<'_>, source_id: i64) -> Result<(), Fault> {
    if let DbConnection::Postgres(pg) = &mut *tx.connection {
        sources::table
            .find(source_id)
            .select(sources::id)
            .for_update()
            .load::<i64>(pg)?;
    }
    // Its operators change: lock the new ones when they are next needed.
    tx.state.locked_sources.remove(&source_id);
    tx.state.served.clear();
    Ok(())
}
