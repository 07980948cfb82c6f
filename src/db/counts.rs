//! The counters behind GetOperatorStats. Changes are summed per row during the
//! transaction and written just before it commits (on PostgreSQL all of them
//! in one statement), and counter rows are always the last rows a
//! transaction locks.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::{
    DbConnection,
    cached::execute_kept_prepared,
    prepared::Prepared,
    run::RunOn,
    schema::{contact_counts, pending_counts},
    tx::WriteTx,
};
use crate::error::Fault;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PairDelta {
    active: i64,
    closed: i64,
    total: i64,
    lapsed: i64,
}

/// Counter changes of a transaction, summed per row.
#[derive(Debug, Default, Clone)]
pub(super) struct Deltas {
    pairs: BTreeMap<(i64, i64), PairDelta>,
    pending: BTreeMap<i64, i64>,
}

impl Deltas {
    fn pair(&mut self, operator_id: i64, source_id: i64, change: PairDelta) {
        let sum = self.pairs.entry((operator_id, source_id)).or_default();
        sum.active += change.active;
        sum.closed += change.closed;
        sum.total += change.total;
        sum.lapsed += change.lapsed;
    }
}

/// Every source has its pending counter from the start.
pub(super) fn add_source(tx: &mut WriteTx<'_>, source_id: i64) -> Result<(), Fault> {
    diesel::insert_into(pending_counts::table)
        .values((
            pending_counts::source_id.eq(source_id),
            pending_counts::pending.eq(0),
        ))
        .execute_on(tx.connection())?;
    Ok(())
}

/// Creates the pair's counters unless they exist; called when an operator
/// joins a weight table, the only way it can get the source's contacts.
pub(super) fn add_pair(
    tx: &mut WriteTx<'_>,
    operator_id: i64,
    source_id: i64,
) -> Result<(), Fault> {
    let exists = tx
        .reader()
        .exists(contact_counts::table.find((operator_id, source_id)))?;
    if !exists {
        diesel::insert_into(contact_counts::table)
            .values((
                contact_counts::operator_id.eq(operator_id),
                contact_counts::source_id.eq(source_id),
            ))
            .execute_on(tx.connection())?;
    }
    Ok(())
}

/// A contact of the source became ACTIVE with the operator.
pub(super) fn assigned(tx: &mut WriteTx<'_>, operator_id: i64, source_id: i64) {
    let change = PairDelta {
        active: 1,
        closed: 0,
        total: 1,
        lapsed: 0,
    };
    tx.state.counters.pair(operator_id, source_id, change);
}

/// An ACTIVE contact of the source was taken from the operator (a lapse, a
/// transfer, a release): it counts with its next operator, if any.
pub(super) fn taken_away(tx: &mut WriteTx<'_>, operator_id: i64, source_id: i64) {
    let change = PairDelta {
        active: -1,
        closed: 0,
        total: -1,
        lapsed: 0,
    };
    tx.state.counters.pair(operator_id, source_id, change);
}

/// A contact of the source lapsed from the operator.
pub(super) fn lapsed(tx: &mut WriteTx<'_>, operator_id: i64, source_id: i64) {
    let change = PairDelta {
        lapsed: 1,
        ..PairDelta::default()
    };
    tx.state.counters.pair(operator_id, source_id, change);
}

/// An ACTIVE contact of the pair was closed.
pub(super) fn closed(tx: &mut WriteTx<'_>, operator_id: i64, source_id: i64) {
    let change = PairDelta {
        active: -1,
        closed: 1,
        total: 0,
        lapsed: 0,
    };
    tx.state.counters.pair(operator_id, source_id, change);
}

/// The source's pending count moves by `delta`.
pub(super) fn pending(tx: &mut WriteTx<'_>, source_id: i64, delta: i64) {
    *tx.state.counters.pending.entry(source_id).or_default() += delta;
}

/// Writes the transaction's summed counter changes.
pub(super) fn flush(tx: &mut WriteTx<'_>) -> Result<(), Fault> {
    let deltas = std::mem::take(&mut tx.state.counters);
    let pairs: Vec<((i64, i64), PairDelta)> = deltas
        .pairs
        .into_iter()
        .filter(|(_, delta)| *delta != PairDelta::default())
        .collect();
    let pending: Vec<(i64, i64)> = deltas
        .pending
        .into_iter()
        .filter(|&(_, delta)| delta != 0)
        .collect();
    match tx.connection() {
        DbConnection::Postgres(pg) if pairs.len() + pending.len() > 1 => {
            write_all(pg, &pairs, &pending)?;
        }
        _ => write_one_by_one(tx, pairs, pending)?,
    }
    Ok(())
}

/// Every counter change in one statement: PostgreSQL parses and plans each
/// UPDATE diesel sends, which cost more than the writes themselves. Its rows
/// are locked in the order PostgreSQL runs the statement (the same one for
/// every transaction), still after every other row (see [`super::locks`]);
/// should two transactions meet on counter rows in opposite orders,
/// PostgreSQL aborts one as a deadlock and the writer runs its batch again.
/// The keys come twice, as `= ANY(…)` too, for the reason given at
/// [`super::overlay`]'s guarded update: the index is then the planner's
/// cheapest way in.
fn write_all(
    pg: &mut PgConnection,
    pairs: &[((i64, i64), PairDelta)],
    pending: &[(i64, i64)],
) -> QueryResult<usize> {
    use diesel::sql_types::{Array, BigInt};
    let column =
        |get: fn(&((i64, i64), PairDelta)) -> i64| -> Vec<i64> { pairs.iter().map(get).collect() };
    let operator_ids = column(|((operator_id, _), _)| *operator_id);
    let source_ids: Vec<i64> = pending.iter().map(|&(id, _)| id).collect();
    Prepared::new(
        "WITH pairs AS (\
           UPDATE contact_counts SET active = contact_counts.active + v.active, \
           closed = contact_counts.closed + v.closed, total = contact_counts.total + v.total, \
           lapsed = contact_counts.lapsed + v.lapsed \
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                       $6::bigint[]) AS v(operator_id, source_id, active, closed, total, lapsed) \
           WHERE contact_counts.operator_id = v.operator_id \
             AND contact_counts.source_id = v.source_id \
             AND contact_counts.operator_id = ANY($7)) \
         UPDATE pending_counts SET pending = pending_counts.pending + v.delta \
         FROM unnest($8::bigint[], $9::bigint[]) AS v(source_id, delta) \
         WHERE pending_counts.source_id = v.source_id AND pending_counts.source_id = ANY($10)",
    )
    .bind::<Array<BigInt>, _>(operator_ids.clone())
    .bind::<Array<BigInt>, _>(column(|((_, source_id), _)| *source_id))
    .bind::<Array<BigInt>, _>(column(|(_, delta)| delta.active))
    .bind::<Array<BigInt>, _>(column(|(_, delta)| delta.closed))
    .bind::<Array<BigInt>, _>(column(|(_, delta)| delta.total))
    .bind::<Array<BigInt>, _>(column(|(_, delta)| delta.lapsed))
    .bind::<Array<BigInt>, _>(operator_ids)
    .bind::<Array<BigInt>, _>(source_ids.clone())
    .bind::<Array<BigInt>, _>(pending.iter().map(|&(_, delta)| delta).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(source_ids)
    .execute(pg)
}

fn write_one_by_one(
    tx: &mut WriteTx<'_>,
    pairs: Vec<((i64, i64), PairDelta)>,
    pending: Vec<(i64, i64)>,
) -> Result<(), Fault> {
    for (source_id, delta) in pending {
        execute_kept_prepared(
            diesel::update(pending_counts::table.find(source_id))
                .set(pending_counts::pending.eq(pending_counts::pending + delta)),
            tx.connection(),
        )?;
    }
    for ((operator_id, source_id), delta) in pairs {
        execute_kept_prepared(
            diesel::update(contact_counts::table.find((operator_id, source_id))).set((
                contact_counts::active.eq(contact_counts::active + delta.active),
                contact_counts::closed.eq(contact_counts::closed + delta.closed),
                contact_counts::total.eq(contact_counts::total + delta.total),
                contact_counts::lapsed.eq(contact_counts::lapsed + delta.lapsed),
            )),
            tx.connection(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_summed_per_row() {
        let mut deltas = Deltas::default();
        let assigned = PairDelta {
            active: 1,
            closed: 0,
            total: 1,
            lapsed: 0,
        };
        let closed = PairDelta {
            active: -1,
            closed: 1,
            total: 0,
            lapsed: 0,
        };
        deltas.pair(1, 3, assigned);
        deltas.pair(1, 3, assigned);
        deltas.pair(1, 3, closed);
        deltas.pair(2, 3, assigned);
        assert_eq!(
            deltas.pairs[&(1, 3)],
            PairDelta {
                active: 1,
                closed: 1,
                total: 2,
                lapsed: 0,
            }
        );
        assert_eq!(deltas.pairs[&(2, 3)], assigned);
    }
}
