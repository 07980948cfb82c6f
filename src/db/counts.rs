//! The counters behind GetOperatorStats. Changes are summed per row during the
//! transaction and written just before it commits: one statement per row
//! touched, and counter rows are always the last rows a transaction locks.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::{
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
    for ((operator_id, source_id), delta) in deltas.pairs {
        if delta == PairDelta::default() {
            continue;
        }
        diesel::update(contact_counts::table.find((operator_id, source_id)))
            .set((
                contact_counts::active.eq(contact_counts::active + delta.active),
                contact_counts::closed.eq(contact_counts::closed + delta.closed),
                contact_counts::total.eq(contact_counts::total + delta.total),
                contact_counts::lapsed.eq(contact_counts::lapsed + delta.lapsed),
            ))
            .execute_on(tx.connection())?;
    }
    for (source_id, delta) in deltas.pending {
        if delta == 0 {
            continue;
        }
        diesel::update(pending_counts::table.find(source_id))
            .set(pending_counts::pending.eq(pending_counts::pending + delta))
            .execute_on(tx.connection())?;
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
