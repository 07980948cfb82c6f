//! Pending dispatch: hands new capacity to the oldest pending contacts it can
//! serve, inside the transaction that made the capacity, so that the capacity
//! is used up before that call answers.

use super::run::RunOn;
use diesel::prelude::*;
use rand::Rng;

use super::{DbConnection, counts, operators, schema::contacts};
use crate::{
    Result,
    domain::{ContactStatus, Timestamp},
};

/// Matches the predicate of the `contacts_pending` partial index.
const PENDING_PREDICATE: &str = "contacts.status = 2";

/// Pending contacts are read in batches of this many, oldest first.
const BATCH: i64 = 64;

/// Assigns the pending contacts of `sources` (those the new capacity can
/// serve), oldest first across all of them, each by the weighted draw, until
/// none of those sources has a candidate left. The caller holds the sources'
/// locks. Returns how many were assigned.
pub fn pending<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    sources: &[i64],
    rng: &mut R,
) -> Result<usize> {
    let mut open_sources = sources.to_vec();
    let mut after = 0;
    let mut assigned = 0;
    while !open_sources.is_empty() {
        let batch: Vec<(i64, i64)> = contacts::table
            // A literal, not a bound value: that is what lets SQLite's planner
            // (with stable plans) pick the partial index of pending contacts.
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                PENDING_PREDICATE,
            ))
            .filter(contacts::source_id.eq_any(&open_sources))
            .filter(contacts::id.gt(after))
            .order(contacts::id)
            .limit(BATCH)
            .select((contacts::id, contacts::source_id))
            .load_on(connection)?;
        if batch.is_empty() {
            break;
        }
        for (contact_id, source_id) in batch {
            after = contact_id;
            if !open_sources.contains(&source_id) {
                continue;
            }
            match operators::claim_for_source(connection, source_id, rng)? {
                // Loads only grow within this transaction: the source stays full.
                None => open_sources.retain(|open| *open != source_id),
                Some(operator_id) => {
                    if assign(connection, contact_id, operator_id)? {
                        counts::assigned(operator_id, source_id);
                        counts::pending(source_id, -1);
                        assigned += 1;
                    } else {
                        // Closed or assigned by a concurrent transaction meanwhile.
                        operators::release_slot(connection, operator_id)?;
                    }
                }
            }
        }
    }
    Ok(assigned)
}

/// Makes a still-pending contact ACTIVE with the operator whose slot was taken.
fn assign(connection: &mut DbConnection, contact_id: i64, operator_id: i64) -> Result<bool> {
    let updated = diesel::update(
        contacts::table
            .find(contact_id)
            .filter(contacts::status.eq(ContactStatus::Pending.code())),
    )
    .set((
        contacts::status.eq(ContactStatus::Active.code()),
        contacts::operator_id.eq(Some(operator_id)),
        contacts::assigned_at.eq(Some(Timestamp::now().as_micros())),
    ))
    .execute_on(connection)?;
    Ok(updated == 1)
}
