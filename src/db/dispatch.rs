//! Pending dispatch: hands new capacity to the oldest pending contacts it can
//! serve, inside the transaction that made the capacity, so that the capacity
//! is used up before that call answers.

use std::collections::VecDeque;

use diesel::prelude::*;

use super::{counts, loads, reader::Reader, run::RunOn, schema::contacts, tx::WriteTx};
use crate::{
    domain::{ContactStatus, Timestamp},
    error::Fault,
};

/// Matches the predicate of the `contacts_pending` partial index.
const PENDING_PREDICATE: &str = "contacts.status = 2";

/// Pending contacts are read in batches of this many, oldest first.
const BATCH: i64 = 16;

/// Assigns the pending contacts of `sources` (those the new capacity can
/// serve), oldest first across all of them, each by the weighted draw, until
/// none of those sources has a candidate left. The caller holds the sources'
/// locks. Returns how many were assigned.
pub(super) fn pending(tx: &mut WriteTx<'_>, sources: &[i64]) -> Result<usize, Fault> {
    let mut queues = Vec::new();
    for &source_id in sources {
        // A full source's pending contacts need not even be read.
        if loads::has_candidates(tx, source_id)? {
            queues.push(Queue {
                source_id,
                ids: VecDeque::new(),
                after: 0,
                more: true,
            });
        }
    }
    let mut assigned = 0;
    loop {
        for queue in &mut queues {
            queue.refill(&mut tx.reader())?;
        }
        queues.retain(|queue| !queue.ids.is_empty());
        // The oldest pending contact of all the sources in scope.
        let Some(queue) = queues.iter_mut().min_by_key(|queue| queue.ids[0]) else {
            return Ok(assigned);
        };
        let (source_id, contact_id) = (queue.source_id, queue.ids[0]);
        queue.ids.pop_front();
        match loads::claim_for_source(tx, source_id)? {
            // Loads only grow within this transaction: the source stays full.
            None => queues.retain(|queue| queue.source_id != source_id),
            Some(operator_id) => {
                if assign(tx, contact_id, operator_id)? {
                    counts::assigned(tx, operator_id, source_id);
                    counts::pending(tx, source_id, -1);
                    assigned += 1;
                } else {
                    // Closed or assigned by a concurrent transaction meanwhile.
                    loads::release(tx, operator_id)?;
                }
            }
        }
    }
}

/// A source's oldest pending contacts not yet tried, read a few at a time.
/// One source per query, so that the partial index of pending contacts,
/// ordered by (source_id, id), hands them over in order without a sort.
struct Queue {
    source_id: i64,
    ids: VecDeque<i64>,
    after: i64,
    more: bool,
}

impl Queue {
    fn refill(&mut self, reader: &mut Reader<'_>) -> QueryResult<()> {
        if !self.ids.is_empty() || !self.more {
            return Ok(());
        }
        let ids: Vec<i64> = reader.load(
            contacts::table
                // A literal, not a bound value: that is what lets SQLite's planner
                // (with stable plans) pick the partial index of pending contacts.
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    PENDING_PREDICATE,
                ))
                .filter(contacts::source_id.eq(self.source_id))
                .filter(contacts::id.gt(self.after))
                .order(contacts::id)
                .limit(BATCH)
                .select(contacts::id),
        )?;
        self.more = ids.len() as i64 == BATCH;
        if let Some(&last) = ids.last() {
            self.after = last;
        }
        self.ids.extend(ids);
        Ok(())
    }
}

/// Makes a still-pending contact ACTIVE with the operator whose slot was taken.
fn assign(tx: &mut WriteTx<'_>, contact_id: i64, operator_id: i64) -> Result<bool, Fault> {
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
    .execute_on(tx.connection())?;
    Ok(updated == 1)
}
