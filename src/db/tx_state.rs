//! What the current write transaction on this thread has done so far: the
//! sources it holds locks for, and the counter changes it will write just
//! before it commits. Write transactions run only on writer threads, one at a
//! time per thread, so thread-local state follows exactly one transaction.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairDelta {
    pub active: i64,
    pub closed: i64,
    pub total: i64,
}

/// Counter changes, summed per row.
#[derive(Debug, Default)]
pub struct Deltas {
    pub pairs: BTreeMap<(i64, i64), PairDelta>,
    pub pending: BTreeMap<i64, i64>,
}

impl Deltas {
    fn absorb(&mut self, other: Deltas) {
        for (pair, delta) in other.pairs {
            let sum = self.pairs.entry(pair).or_default();
            sum.active += delta.active;
            sum.closed += delta.closed;
            sum.total += delta.total;
        }
        for (source_id, delta) in other.pending {
            *self.pending.entry(source_id).or_default() += delta;
        }
    }
}

#[derive(Default)]
struct State {
    locked_sources: BTreeSet<i64>,
    /// Changes of the unit of work running now, dropped if it fails.
    unit: Deltas,
    /// Changes of the units that succeeded, written before commit.
    transaction: Deltas,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// A transaction began, or rolled back: nothing is held or pending.
pub fn reset() {
    STATE.with(|state| *state.borrow_mut() = State::default());
}

/// The unit of work succeeded: its counter changes join the transaction's.
pub fn unit_succeeded() {
    STATE.with(|state| {
        let state = &mut *state.borrow_mut();
        let unit = std::mem::take(&mut state.unit);
        state.transaction.absorb(unit);
    });
}

/// The unit of work was rolled back to its savepoint, which also released
/// the locks it took: forget both.
pub fn unit_failed() {
    STATE.with(|state| {
        let state = &mut *state.borrow_mut();
        state.unit = Deltas::default();
        // Locks taken before the unit began are still held, but which ones is
        // not recorded; taking them again is harmless.
        state.locked_sources.clear();
    });
}

/// The transaction's counter changes, to be written now.
pub fn take_transaction_deltas() -> Deltas {
    STATE.with(|state| std::mem::take(&mut state.borrow_mut().transaction))
}

pub fn add_pair(operator_id: i64, source_id: i64, delta: PairDelta) {
    STATE.with(|state| {
        let mut unit = Deltas::default();
        unit.pairs.insert((operator_id, source_id), delta);
        state.borrow_mut().unit.absorb(unit);
    });
}

pub fn add_pending(source_id: i64, delta: i64) {
    STATE.with(|state| {
        *state
            .borrow_mut()
            .unit
            .pending
            .entry(source_id)
            .or_default() += delta
    });
}

/// The sources among `wanted` whose locks this transaction does not hold yet.
pub fn unlocked_sources(wanted: &[i64]) -> Vec<i64> {
    STATE.with(|state| {
        let state = state.borrow();
        wanted
            .iter()
            .copied()
            .filter(|id| !state.locked_sources.contains(id))
            .collect()
    })
}

pub fn sources_locked(ids: &[i64]) {
    STATE.with(|state| state.borrow_mut().locked_sources.extend(ids));
}

/// The source's weight table changed: its operator locks must be taken anew.
pub fn forget_source(id: i64) {
    STATE.with(|state| {
        state.borrow_mut().locked_sources.remove(&id);
    });
}
