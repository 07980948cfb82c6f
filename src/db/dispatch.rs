//! Pending dispatch: hands new capacity to the oldest pending contacts it can
//! serve, inside the transaction that made the capacity, so that the capacity
//! is used up before that call answers.

use std::collections::HashMap;

use diesel::prelude::*;

use super::{
    counts, events, loads, models::ContactRow, overlay::PendingQueue, reader::Reader, run::RunOn,
    schema::contacts, sources, tx::WriteTx,
};
use crate::{
    domain::{ContactEventType, ContactStatus, Timestamp},
    error::Fault,
};

/// Assigns the pending contacts of `sources` (those the new capacity can
/// serve), oldest first across all of them, each by the weighted draw, until
/// none of those sources has a candidate left. The caller holds the sources'
/// locks. Returns how many were assigned.
///
/// In `Direct` mode the pending queues and the assignments live in the
/// batch's contact overlay; otherwise each assignment is written at once,
/// and the queues last for this call.
pub(super) fn pending(tx: &mut WriteTx<'_>, sources: &[i64]) -> Result<usize, Fault> {
    let mut scope = Vec::new();
    for &source_id in sources {
        // A full source's pending contacts need not even be read.
        if loads::has_candidates(tx, source_id)? {
            scope.push(source_id);
        }
    }
    let mut queues = HashMap::new();
    let mut assigned = 0;
    loop {
        // The oldest pending contact of all the sources in scope.
        let mut oldest: Option<(i64, i64)> = None;
        let mut drained = Vec::new();
        for &source_id in &scope {
            match peek(tx, &mut queues, source_id)? {
                Some(id) if oldest.is_none_or(|(_, oldest)| id < oldest) => {
                    oldest = Some((source_id, id));
                }
                Some(_) => {}
                None => drained.push(source_id),
            }
        }
        scope.retain(|source_id| !drained.contains(source_id));
        let Some((source_id, contact_id)) = oldest else {
            return Ok(assigned);
        };
        match loads::claim_for_source(tx, source_id)? {
            // Loads only grow within this transaction: the source stays full.
            None => scope.retain(|&id| id != source_id),
            Some(claim) => {
                let operator_id = claim.operator_id;
                match assign(tx, &mut queues, source_id, contact_id, operator_id)? {
                    Some(row) => {
                        counts::assigned(tx, operator_id, source_id);
                        counts::pending(tx, source_id, -1);
                        let assignment = Some(claim.assignment());
                        events::record(tx, ContactEventType::Assigned, &row, None, assignment);
                        assigned += 1;
                    }
                    // Closed or assigned by a concurrent transaction meanwhile.
                    None => loads::release(tx, operator_id)?,
                }
            }
        }
    }
}

/// The source's oldest pending contact; `queues` serves when the
/// transaction has no overlay.
fn peek(
    tx: &mut WriteTx<'_>,
    queues: &mut HashMap<i64, PendingQueue>,
    source_id: i64,
) -> Result<Option<i64>, Fault> {
    let WriteTx {
        connection, state, ..
    } = tx;
    let reader = &mut Reader::new(connection);
    Ok(match &mut state.contacts {
        Some(overlay) => overlay.peek_pending(reader, source_id)?,
        None => queues
            .entry(source_id)
            .or_default()
            .peek(reader, source_id, &mut Vec::new())?,
    })
}

/// Makes the peeked pending contact ACTIVE with the operator whose slot was
/// taken, and returns it as it is now. `None`: it was no longer pending.
fn assign(
    tx: &mut WriteTx<'_>,
    queues: &mut HashMap<i64, PendingQueue>,
    source_id: i64,
    contact_id: i64,
    operator_id: i64,
) -> Result<Option<ContactRow>, Fault> {
    let now = Timestamp::now().as_micros();
    let deadline = sources::settings(tx, source_id)?.deadline(now);
    let give = |row: &mut ContactRow| {
        row.status = ContactStatus::Active.code();
        row.operator_id = Some(operator_id);
        row.assigned_at = Some(now);
        row.accept_deadline = deadline;
    };
    let WriteTx {
        connection, state, ..
    } = tx;
    if let Some(overlay) = &mut state.contacts {
        overlay.take_pending(&mut Reader::new(connection), source_id, contact_id)?;
        return Ok(Some(overlay.update(contact_id, give)?));
    }
    queues.entry(source_id).or_default().pop(contact_id);
    let row: Option<ContactRow> = diesel::update(
        contacts::table
            .find(contact_id)
            .filter(contacts::status.eq(ContactStatus::Pending.code())),
    )
    .set((
        contacts::status.eq(ContactStatus::Active.code()),
        contacts::operator_id.eq(Some(operator_id)),
        contacts::assigned_at.eq(Some(now)),
        contacts::accept_deadline.eq(deadline),
    ))
    .returning(contacts::all_columns)
    .get_result_on(connection)
    .optional()?;
    Ok(row)
}
