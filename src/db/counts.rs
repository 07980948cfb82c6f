//! The counters behind GetOperatorStats, moved in the same transaction as the
//! contacts they count.

use diesel::prelude::*;

use super::{
    DbConnection,
    schema::{contact_counts, pending_counts},
};
use crate::Result;

/// Every source has its pending counter from the start.
pub fn add_source(connection: &mut DbConnection, source_id: i64) -> Result<()> {
    diesel::insert_into(pending_counts::table)
        .values((
            pending_counts::source_id.eq(source_id),
            pending_counts::pending.eq(0),
        ))
        .execute(connection)?;
    Ok(())
}

/// Creates the pair's counters unless they exist; called when an operator
/// joins a weight table, the only way it can get the source's contacts.
pub fn add_pair(connection: &mut DbConnection, operator_id: i64, source_id: i64) -> Result<()> {
    let exists: bool = diesel::select(diesel::dsl::exists(
        contact_counts::table.find((operator_id, source_id)),
    ))
    .get_result(connection)?;
    if !exists {
        diesel::insert_into(contact_counts::table)
            .values((
                contact_counts::operator_id.eq(operator_id),
                contact_counts::source_id.eq(source_id),
            ))
            .execute(connection)?;
    }
    Ok(())
}

/// A contact of the source became ACTIVE with the operator.
pub fn assigned(connection: &mut DbConnection, operator_id: i64, source_id: i64) -> Result<()> {
    diesel::update(contact_counts::table.find((operator_id, source_id)))
        .set((
            contact_counts::active.eq(contact_counts::active + 1),
            contact_counts::total.eq(contact_counts::total + 1),
        ))
        .execute(connection)?;
    Ok(())
}

/// An ACTIVE contact of the pair was closed.
pub fn closed(connection: &mut DbConnection, operator_id: i64, source_id: i64) -> Result<()> {
    diesel::update(contact_counts::table.find((operator_id, source_id)))
        .set((
            contact_counts::active.eq(contact_counts::active - 1),
            contact_counts::closed.eq(contact_counts::closed + 1),
        ))
        .execute(connection)?;
    Ok(())
}

/// The source's pending count moves by `delta`.
pub fn pending(connection: &mut DbConnection, source_id: i64, delta: i64) -> Result<()> {
    diesel::update(pending_counts::table.find(source_id))
        .set(pending_counts::pending.eq(pending_counts::pending + delta))
        .execute(connection)?;
    Ok(())
}
