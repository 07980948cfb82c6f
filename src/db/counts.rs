//! The counters behind GetOperatorStats. Changes are summed per row during the
//! transaction and written just before it commits: one statement per row
//! touched, and counter rows are always the last rows a transaction locks.

use super::run::RunOn;
use diesel::prelude::*;

use super::{
    DbConnection,
    schema::{contact_counts, pending_counts},
    tx_state::{self, PairDelta},
};
use crate::Result;

/// Every source has its pending counter from the start.
pub fn add_source(connection: &mut DbConnection, source_id: i64) -> Result<()> {
    diesel::insert_into(pending_counts::table)
        .values((
            pending_counts::source_id.eq(source_id),
            pending_counts::pending.eq(0),
        ))
        .execute_on(connection)?;
    Ok(())
}

/// Creates the pair's counters unless they exist; called when an operator
/// joins a weight table, the only way it can get the source's contacts.
pub fn add_pair(connection: &mut DbConnection, operator_id: i64, source_id: i64) -> Result<()> {
    let exists: bool = diesel::select(diesel::dsl::exists(
        contact_counts::table.find((operator_id, source_id)),
    ))
    .get_result_on(connection)?;
    if !exists {
        diesel::insert_into(contact_counts::table)
            .values((
                contact_counts::operator_id.eq(operator_id),
                contact_counts::source_id.eq(source_id),
            ))
            .execute_on(connection)?;
    }
    Ok(())
}

/// A contact of the source became ACTIVE with the operator.
pub fn assigned(operator_id: i64, source_id: i64) {
    tx_state::add_pair(
        operator_id,
        source_id,
        PairDelta {
            active: 1,
            closed: 0,
            total: 1,
        },
    );
}

/// An ACTIVE contact of the pair was closed.
pub fn closed(operator_id: i64, source_id: i64) {
    tx_state::add_pair(
        operator_id,
        source_id,
        PairDelta {
            active: -1,
            closed: 1,
            total: 0,
        },
    );
}

/// The source's pending count moves by `delta`.
pub fn pending(source_id: i64, delta: i64) {
    tx_state::add_pending(source_id, delta);
}

/// Writes the transaction's summed counter changes.
pub fn flush(connection: &mut DbConnection) -> Result<()> {
    let deltas = tx_state::take_transaction_deltas();
    for ((operator_id, source_id), delta) in deltas.pairs {
        if delta == PairDelta::default() {
            continue;
        }
        diesel::update(contact_counts::table.find((operator_id, source_id)))
            .set((
                contact_counts::active.eq(contact_counts::active + delta.active),
                contact_counts::closed.eq(contact_counts::closed + delta.closed),
                contact_counts::total.eq(contact_counts::total + delta.total),
            ))
            .execute_on(connection)?;
    }
    for (source_id, delta) in deltas.pending {
        if delta == 0 {
            continue;
        }
        diesel::update(pending_counts::table.find(source_id))
            .set(pending_counts::pending.eq(pending_counts::pending + delta))
            .execute_on(connection)?;
    }
    Ok(())
}
