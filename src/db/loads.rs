//! Operator loads: the draw of an operator for a contact, and every change of
//! an `active_load`. All of them are here, in one place, so the invariant
//! (`active_load` never passes `max_load` through a draw, never drops below
//! zero, and equals the operator's ACTIVE contacts) has one home; both
//! directions are guarded in SQL.
//!
//! In `Direct` mode the rows of the operators the transaction has locked
//! (on SQLite: reads as the only writer) are cached: drawn from and changed
//! in memory, written once at commit. Statements that change operator rows
//! or weight tables get their connection from [`WriteTx::operator_tables`],
//! which writes and drops this cache first.

use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;

use super::{
    DbConnection,
    cached::execute_kept_prepared,
    locks,
    prepared::Prepared,
    reader::Reader,
    run::RunOn,
    schema::{operators, source_operators},
    tx::{Mode, WriteTx},
};
use crate::{
    domain::{Assignment, AssignmentReason, CandidateLoad},
    error::Fault,
    selector::{Candidate, draw_until_taken},
};

#[derive(Debug, Clone, Default)]
pub(super) enum Loads {
    /// Every change goes straight to SQL (`Savepoints` mode).
    #[default]
    Written,
    Cached(LoadCache),
}

impl Loads {
    pub(super) fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Direct => Self::Cached(LoadCache::default()),
            Mode::Savepoints => Self::Written,
        }
    }
}

/// An operator row as this transaction sees it, its load changes included.
#[derive(Debug, Clone, Copy)]
struct OperatorLoad {
    is_active: bool,
    max_load: i32,
    active_load: i32,
}

impl OperatorLoad {
    fn has_room(self) -> bool {
        self.is_active && self.active_load < self.max_load
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct LoadCache {
    operators: HashMap<i64, OperatorLoad>,
    /// Weight tables by source, ordered by operator id.
    tables: HashMap<i64, Vec<(i64, i32)>>,
    /// Load changes not written yet, by operator.
    changes: BTreeMap<i64, i32>,
}

impl LoadCache {
    fn candidates(&self, source_id: i64) -> Option<Vec<CandidateLoad>> {
        let table = self.tables.get(&source_id)?;
        Some(
            table
                .iter()
                .filter_map(|&(operator_id, weight)| {
                    let load = self.operators.get(&operator_id)?;
                    load.has_room().then_some(CandidateLoad {
                        operator_id,
                        weight,
                        active_load: load.active_load,
                        max_load: load.max_load,
                    })
                })
                .collect(),
        )
    }

    fn take(&mut self, operator_id: i64) -> bool {
        match self.operators.get_mut(&operator_id) {
            Some(load) if load.has_room() => {
                load.active_load += 1;
                *self.changes.entry(operator_id).or_default() += 1;
                true
            }
            _ => false,
        }
    }

    /// Caches operator rows read under the transaction's locks. Rows
    /// already cached are kept: they hold load changes not written yet.
    fn remember(&mut self, rows: Vec<LockedOperator>) {
        for (id, is_active, max_load, active_load) in rows {
            self.operators.entry(id).or_insert(OperatorLoad {
                is_active,
                max_load,
                active_load,
            });
        }
    }

    /// `false` when the operator is not cached: the caller writes it.
    fn release(&mut self, operator_id: i64) -> bool {
        match self.operators.get_mut(&operator_id) {
            Some(load) => {
                load.active_load -= 1;
                *self.changes.entry(operator_id).or_default() -= 1;
                true
            }
            None => false,
        }
    }
}

/// The operators of the source's weight table that can take a contact now.
pub(super) fn candidates(
    reader: &mut Reader<'_>,
    source_id: i64,
) -> QueryResult<Vec<CandidateLoad>> {
    let rows: Vec<(i64, i32, i32, i32)> = reader.load(
        source_operators::table
            .inner_join(operators::table)
            .filter(source_operators::source_id.eq(source_id))
            .filter(operators::is_active.eq(true))
            .filter(operators::active_load.lt(operators::max_load))
            .order(operators::id)
            .select((
                operators::id,
                source_operators::weight,
                operators::active_load,
                operators::max_load,
            )),
    )?;
    Ok(rows
        .into_iter()
        .map(
            |(operator_id, weight, active_load, max_load)| CandidateLoad {
                operator_id,
                weight,
                active_load,
                max_load,
            },
        )
        .collect())
}

/// The source's candidates now, after taking the source's locks.
fn current_candidates(tx: &mut WriteTx<'_>, source_id: i64) -> Result<Vec<CandidateLoad>, Fault> {
    locks::sources(tx, &[source_id])?;
    let cached = match &tx.state.loads {
        Loads::Written => return Ok(candidates(&mut tx.reader(), source_id)?),
        Loads::Cached(cache) => cache.candidates(source_id),
    };
    match cached {
        Some(candidates) => Ok(candidates),
        None => cache_source(tx, source_id),
    }
}

/// An operator drawn for a contact, and the draw it won.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) operator_id: i64,
    /// Every candidate, with its load just before the draw.
    pub(super) candidates: Vec<CandidateLoad>,
}

impl Claim {
    pub(super) fn assignment(self) -> Assignment {
        Assignment {
            reason: AssignmentReason::WeightedDraw,
            operator_id: self.operator_id,
            candidates: self.candidates,
        }
    }
}

/// Draws an operator for a contact of the source (weighted, among those
/// with room) and takes one unit of its load; one that filled up meanwhile
/// is excluded and the draw repeats. `None`: nobody can take it.
pub(super) fn claim_for_source(
    tx: &mut WriteTx<'_>,
    source_id: i64,
) -> Result<Option<Claim>, Fault> {
    claim_excluding(tx, source_id, &[])
}

/// [`claim_for_source`] among the candidates other than `excluded` (a
/// transfer's current operator, the operators a contact lapsed with).
pub(super) fn claim_excluding(
    tx: &mut WriteTx<'_>,
    source_id: i64,
    excluded: &[i64],
) -> Result<Option<Claim>, Fault> {
    let mut candidates = current_candidates(tx, source_id)?;
    candidates.retain(|candidate| !excluded.contains(&candidate.operator_id));
    let draw: Vec<Candidate> = candidates
        .iter()
        .map(|candidate| Candidate {
            operator_id: candidate.operator_id,
            // The schema keeps weights within 1..=1_000_000.
            weight: candidate.weight.unsigned_abs(),
        })
        .collect();
    let WriteTx {
        connection,
        state,
        rng,
        ..
    } = tx;
    let drawn = match &mut state.loads {
        Loads::Cached(cache) => draw_until_taken(draw, *rng, |operator_id| {
            Ok::<_, Fault>(cache.take(operator_id))
        }),
        Loads::Written => {
            draw_until_taken(draw, *rng, |operator_id| take_slot(connection, operator_id))
        }
    }?;
    Ok(drawn.map(|operator_id| Claim {
        operator_id,
        candidates,
    }))
}

/// Sticky routing: takes one unit of the operator's load if it is one of
/// the source's candidates now (in its weight table, active, below its
/// limit). `false`: it is not, and nothing changed.
pub(super) fn claim_candidate(
    tx: &mut WriteTx<'_>,
    source_id: i64,
    operator_id: i64,
) -> Result<bool, Fault> {
    let candidates = current_candidates(tx, source_id)?;
    if !candidates
        .iter()
        .any(|candidate| candidate.operator_id == operator_id)
    {
        return Ok(false);
    }
    take(tx, operator_id)
}

/// Takes one unit of the named operator's load if it is active and below
/// its limit, whatever its sources (a transfer to a named operator). On
/// PostgreSQL the caller holds the operator's lock.
pub(super) fn take(tx: &mut WriteTx<'_>, operator_id: i64) -> Result<bool, Fault> {
    if let Loads::Cached(cache) = &mut tx.state.loads
        && cache.operators.contains_key(&operator_id)
    {
        return Ok(cache.take(operator_id));
    }
    // Not cached: written at once, and read from the row by a later cache.
    take_slot(tx.connection, operator_id)
}

/// Whether any operator of the source could take a contact now.
pub(super) fn has_candidates(tx: &mut WriteTx<'_>, source_id: i64) -> Result<bool, Fault> {
    Ok(!current_candidates(tx, source_id)?.is_empty())
}

/// Takes one unit of the operator's load if it is active and below its
/// limit. On PostgreSQL the update waits for a concurrent writer of the row
/// and re-checks the guard on the row it committed.
fn take_slot(connection: &mut DbConnection, operator_id: i64) -> Result<bool, Fault> {
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
pub(super) fn release(tx: &mut WriteTx<'_>, operator_id: i64) -> Result<(), Fault> {
    if let Loads::Cached(cache) = &mut tx.state.loads
        && cache.release(operator_id)
    {
        return Ok(());
    }
    write_change(tx.connection, operator_id, -1)
}

/// An operator row as [`super::locks::sources`] locked and read it:
/// id, `is_active`, `max_load`, `active_load`.
pub(super) type LockedOperator = (i64, bool, i32, i32);

/// Caches operator rows just locked (FOR UPDATE, so as last committed and
/// unchangeable by others until commit), and the weight tables of the
/// sources just locked, which hold them (by source, ordered by operator id;
/// unchangeable until commit too). Operator rows already cached are kept:
/// they hold load changes not written yet. Tables are replaced: they are as
/// this transaction left them.
pub(super) fn locked(
    tx: &mut WriteTx<'_>,
    rows: Vec<LockedOperator>,
    tables: HashMap<i64, Vec<(i64, i32)>>,
) {
    if let Loads::Cached(cache) = &mut tx.state.loads {
        cache.remember(rows);
        for (source_id, table) in tables {
            cache.tables.insert(source_id, table);
        }
    }
}

/// Reads the source's weight table into the cache, with those of every
/// other source this transaction has locked and not cached yet (one
/// statement for all), and the rows of their operators not cached yet;
/// returns the source's candidates. The caller holds the sources' locks
/// (PostgreSQL; on SQLite the writer is alone), so nothing cached can change
/// under the cache until commit. On PostgreSQL the tables usually came with
/// the locks (see [`locked`]): this reads them after a flush emptied the
/// cache, and on SQLite.
fn cache_source(tx: &mut WriteTx<'_>, source_id: i64) -> Result<Vec<CandidateLoad>, Fault> {
    let Loads::Cached(cache) = &tx.state.loads else {
        return Err(Fault::Internal("no load cache in this mode".into()));
    };
    let mut wanted: Vec<i64> = tx
        .state
        .locked_sources
        .iter()
        .copied()
        .filter(|id| !cache.tables.contains_key(id))
        .collect();
    if !wanted.contains(&source_id) {
        wanted.push(source_id);
    }
    let mut reader = tx.reader();
    let pairs: Vec<(i64, i64, i32)> = reader.load(
        source_operators::table
            .filter(source_operators::source_id.eq_any(&wanted))
            .order((source_operators::source_id, source_operators::operator_id))
            .select((
                source_operators::source_id,
                source_operators::operator_id,
                source_operators::weight,
            )),
    )?;
    let Loads::Cached(cache) = &tx.state.loads else {
        return Err(Fault::Internal("no load cache in this mode".into()));
    };
    let mut missing: Vec<i64> = pairs
        .iter()
        .map(|&(_, operator_id, _)| operator_id)
        .filter(|id| !cache.operators.contains_key(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let rows: Vec<LockedOperator> = if missing.is_empty() {
        Vec::new()
    } else {
        tx.reader().load(
            operators::table
                .filter(operators::id.eq_any(&missing))
                .select((
                    operators::id,
                    operators::is_active,
                    operators::max_load,
                    operators::active_load,
                )),
        )?
    };
    let Loads::Cached(cache) = &mut tx.state.loads else {
        return Err(Fault::Internal("no load cache in this mode".into()));
    };
    cache.remember(rows);
    for id in wanted {
        cache.tables.insert(id, Vec::new());
    }
    for (source, operator_id, weight) in pairs {
        if let Some(table) = cache.tables.get_mut(&source) {
            table.push((operator_id, weight));
        }
    }
    Ok(cache.candidates(source_id).unwrap_or_default())
}

/// Writes the load changes made in memory and empties the cache: at commit,
/// and before a statement that changes operators or weight tables.
pub(super) fn flush(tx: &mut WriteTx<'_>) -> Result<(), Fault> {
    let Loads::Cached(cache) = &mut tx.state.loads else {
        return Ok(());
    };
    let changes: Vec<(i64, i32)> = std::mem::take(&mut cache.changes)
        .into_iter()
        .filter(|&(_, delta)| delta != 0)
        .collect();
    cache.operators.clear();
    cache.tables.clear();
    match &mut *tx.connection {
        // One statement for all of them: PostgreSQL parses and plans each
        // UPDATE diesel sends, which cost more than the writes themselves.
        DbConnection::Postgres(pg) if changes.len() > 1 => write_changes(pg, &changes),
        connection => {
            for (operator_id, delta) in changes {
                write_change(connection, operator_id, delta)?;
            }
            Ok(())
        }
    }
}

/// [`write_change`] for many operators in one statement, with the same
/// guards: every row must pass its own, or the transaction fails. Only
/// cached operators are written here, and on PostgreSQL those are locked
/// already (see [`super::locks::sources`]), so the statement takes no new lock.
/// The ids come twice, as `= ANY(…)` too (see [`super::overlay`]'s guarded
/// update).
fn write_changes(pg: &mut diesel::PgConnection, changes: &[(i64, i32)]) -> Result<(), Fault> {
    use diesel::sql_types::{Array, BigInt, Integer};
    let ids: Vec<i64> = changes.iter().map(|&(id, _)| id).collect();
    let written = Prepared::new(
        "UPDATE operators SET active_load = operators.active_load + v.delta \
         FROM unnest($1::bigint[], $2::int[]) AS v(id, delta) \
         WHERE operators.id = v.id \
           AND operators.active_load + v.delta >= 0 \
           AND (v.delta < 0 OR (operators.is_active \
                AND operators.active_load + v.delta <= operators.max_load)) \
           AND operators.id = ANY($3)",
    )
    .bind::<Array<BigInt>, _>(ids.clone())
    .bind::<Array<Integer>, _>(changes.iter().map(|&(_, delta)| delta).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(ids)
    .execute(pg)?;
    if written == changes.len() {
        Ok(())
    } else {
        Err(Fault::Internal(format!(
            "{} of {} operator loads cannot move as the transaction counted",
            changes.len() - written,
            changes.len()
        )))
    }
}

/// Moves the operator's load by `delta`, guarded in SQL both ways: a growth
/// only for an active operator and up to `max_load`, a drop never below
/// zero. A guard that stops the statement means the transaction's view of
/// the loads was wrong; the transaction fails rather than break the
/// invariant.
fn write_change(connection: &mut DbConnection, operator_id: i64, delta: i32) -> Result<(), Fault> {
    let target = operators::table.find(operator_id);
    let set = operators::active_load.eq(operators::active_load + delta);
    let written = match delta.cmp(&0) {
        std::cmp::Ordering::Equal => return Ok(()),
        std::cmp::Ordering::Greater => execute_kept_prepared(
            diesel::update(
                target
                    .filter(operators::is_active.eq(true))
                    .filter((operators::active_load + delta).le(operators::max_load)),
            )
            .set(set),
            connection,
        )?,
        std::cmp::Ordering::Less => execute_kept_prepared(
            diesel::update(target.filter((operators::active_load + delta).ge(0))).set(set),
            connection,
        )?,
    };
    if written == 1 {
        Ok(())
    } else {
        Err(Fault::Internal(format!(
            "operator {operator_id}: its load cannot move by {delta}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(rows: &[(i64, i32, i32)], table: &[(i64, i32)]) -> LoadCache {
        let mut cache = LoadCache::default();
        for &(id, active_load, max_load) in rows {
            cache.operators.insert(
                id,
                OperatorLoad {
                    is_active: true,
                    max_load,
                    active_load,
                },
            );
        }
        cache.tables.insert(7, table.to_vec());
        cache
    }

    fn ids(candidates: Option<Vec<CandidateLoad>>) -> Vec<i64> {
        candidates
            .expect("cached")
            .iter()
            .map(|c| c.operator_id)
            .collect()
    }

    #[test]
    fn cached_loads_never_pass_the_limit_and_changes_are_summed() {
        let mut cache = cache(&[(1, 1, 2), (2, 0, 0)], &[(1, 10), (2, 5)]);
        assert_eq!(ids(cache.candidates(7)), [1], "operator 2 takes nothing");
        assert!(cache.take(1));
        assert!(!cache.take(1), "operator 1 is full");
        assert!(!cache.take(2), "operator 2 takes nothing");
        assert!(!cache.take(3), "operator 3 is not cached");
        assert!(ids(cache.candidates(7)).is_empty());
        assert!(cache.release(1));
        assert_eq!(ids(cache.candidates(7)), [1]);
        assert!(!cache.release(3), "not cached: the caller writes it");
        assert_eq!(cache.changes.get(&1), Some(&0), "+1 then -1");
        assert!(cache.candidates(8).is_none(), "source 8 is not cached");
    }
}
