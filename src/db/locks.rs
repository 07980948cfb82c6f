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

use diesel::prelude::*;

use super::{
    DbConnection,
    loads::{self, LockedOperator},
    schema::{operators, source_operators, sources},
    tx::WriteTx,
};
use crate::{db::sources::Settings as SourceSettings, error::Fault};

/// Locks the sources and all their operators, unless this transaction already holds them.
pub(super) fn sources(tx: &mut WriteTx<'_>, source_ids: &[i64]) -> Result<(), Fault> {
    let DbConnection::Postgres(pg) = &mut *tx.connection else {
        return Ok(());
    };
    let locked = &mut tx.state.locked_sources;
    let mut wanted: Vec<i64> = source_ids
        .iter()
        .copied()
        .filter(|id| !locked.contains(id))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    wanted.sort_unstable();
    wanted.dedup();
    // The routing settings come with the lock, at no extra round trip; an
    // UpdateSource (FOR UPDATE, see [`source_settings`]) waits for this
    // transaction, so they stay true until it commits.
    let rows: Vec<(i64, Option<i64>, Option<i64>)> = sources::table
        .filter(sources::id.eq_any(&wanted))
        .order(sources::id)
        .select((
            sources::id,
            sources::accept_timeout_nanos,
            sources::sticky_window_nanos,
        ))
        .for_key_share()
        .load(pg)?;
    for (id, accept_timeout, sticky_window) in rows {
        tx.state.settings.insert(
            id,
            SourceSettings::from_nanos(accept_timeout, sticky_window),
        );
    }
    // The rows come with the lock too, as last committed: the load cache
    // takes them (see [`loads::locked`]) instead of reading them again.
    let locked: Vec<LockedOperator> = operators::table
        .filter(
            operators::id.eq_any(
                source_operators::table
                    .filter(source_operators::source_id.eq_any(&wanted))
                    .select(source_operators::operator_id),
            ),
        )
        .order(operators::id)
        .select((
            operators::id,
            operators::is_active,
            operators::max_load,
            operators::active_load,
        ))
        .for_update()
        .load(pg)?;
    tx.state.locked_sources.extend(wanted);
    tx.state
        .locked_operators
        .extend(locked.iter().map(|&(id, ..)| id));
    loads::locked(tx, locked);
    Ok(())
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
    if !matches!(tx.connection, DbConnection::Postgres(_)) {
        return Ok(());
    }
    let mut holders: Vec<i64> = contacts.iter().filter_map(|&(_, op)| op).collect();
    holders.sort_unstable();
    holders.dedup();
    let pairs: Vec<(i64, i64)> = if holders.is_empty() {
        Vec::new()
    } else {
        tx.reader().load(
            source_operators::table
                .filter(source_operators::operator_id.eq_any(&holders))
                .order((source_operators::operator_id, source_operators::source_id))
                .select((source_operators::operator_id, source_operators::source_id)),
        )?
    };
    let mut wanted: Vec<i64> = contacts.iter().map(|&(source_id, _)| source_id).collect();
    wanted.extend(pairs.iter().map(|&(_, source_id)| source_id));
    wanted.extend_from_slice(drawn_for);
    sources(tx, &wanted)?;
    let mut served: HashMap<i64, Vec<i64>> = HashMap::new();
    for (operator_id, source_id) in pairs {
        served.entry(operator_id).or_default().push(source_id);
    }
    // What `operator_sources` would have found and locked for each holder.
    // One that serves no source is left to it (its own lock).
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
/// SHARE lock of [`sources`], under which transactions read the settings, so
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
/// KEY SHARE lock of [`sources`] (and of every contact insert), so the change
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
