//! What the current write transaction on this thread has done so far: the
//! sources it holds locks for, and the counter changes it will write just
//! before it commits. Write transactions run only on writer threads, one at a
//! time per thread, so thread-local state follows exactly one transaction.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
};

use super::models::ContactRow;
use crate::{domain::SourceKey, selector::Candidate};

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

/// An operator row as this transaction sees it, load changes included.
#[derive(Debug, Clone, Copy)]
pub struct OperatorLoad {
    pub is_active: bool,
    pub max_load: i32,
    pub active_load: i32,
}

/// Operator rows this transaction holds locked (or, on SQLite, reads as the
/// only writer), so their loads can be drawn from and changed in memory and
/// written once at commit. Only in the writer's direct mode: a savepoint
/// rollback would release locks behind the cache's back.
#[derive(Default)]
struct LoadCache {
    enabled: bool,
    operators: HashMap<i64, OperatorLoad>,
    tables: HashMap<i64, Vec<(i64, u32)>>,
    /// Load changes of the running unit, undone in memory if it fails.
    unit: BTreeMap<i64, i32>,
    /// Load changes of the units that succeeded, to be written.
    transaction: BTreeMap<i64, i32>,
}

/// Contacts of the batch inserted together at the end (direct mode), with
/// ids taken ahead.
#[derive(Default)]
struct StagedContacts {
    ids: VecDeque<i64>,
    rows: Vec<ContactRow>,
    /// How many rows had been staged when the running unit began.
    unit_start: usize,
}

#[derive(Default)]
struct State {
    contacts: StagedContacts,
    locked_sources: BTreeSet<i64>,
    loads: LoadCache,
    /// Changes of the unit of work running now, dropped if it fails.
    unit: Deltas,
    /// Changes of the units that succeeded, written before commit.
    transaction: Deltas,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// A transaction began, or rolled back: nothing is held or pending.
/// `cache_loads`: whether operator loads may be kept in memory.
pub fn reset(cache_loads: bool) {
    STATE.with(|state| {
        let mut fresh = State::default();
        fresh.loads.enabled = cache_loads;
        *state.borrow_mut() = fresh;
    });
}

/// The unit of work succeeded: its counter changes join the transaction's.
pub fn unit_succeeded() {
    STATE.with(|state| {
        let state = &mut *state.borrow_mut();
        let unit = std::mem::take(&mut state.unit);
        state.transaction.absorb(unit);
        state.contacts.unit_start = state.contacts.rows.len();
        for (operator_id, delta) in std::mem::take(&mut state.loads.unit) {
            *state.loads.transaction.entry(operator_id).or_default() += delta;
        }
    });
}

/// The unit of work was rolled back to its savepoint, which also released
/// the locks it took: forget both.
pub fn unit_failed() {
    STATE.with(|state| {
        let state = &mut *state.borrow_mut();
        state.unit = Deltas::default();
        let start = state.contacts.unit_start;
        state.contacts.rows.truncate(start);
        for (operator_id, delta) in std::mem::take(&mut state.loads.unit) {
            if let Some(load) = state.loads.operators.get_mut(&operator_id) {
                load.active_load -= delta;
            }
        }
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

/// Whether the transaction runs in the writer's direct mode: units without
/// savepoints, operator loads cached in memory.
/// Ids taken ahead for the contacts this batch may insert.
pub fn reserve_contact_ids(ids: impl IntoIterator<Item = i64>) {
    STATE.with(|state| state.borrow_mut().contacts.ids.extend(ids));
}

/// Stages the contact for the batch's insert, giving it an id taken ahead;
/// `None` (nothing staged) when no id is left.
pub fn stage_contact(mut row: ContactRow) -> Option<ContactRow> {
    STATE.with(|state| {
        let contacts = &mut state.borrow_mut().contacts;
        row.id = contacts.ids.pop_front()?;
        contacts.rows.push(row.clone());
        Some(row)
    })
}

/// The staged contacts, to be inserted now.
pub fn take_staged_contacts() -> Vec<ContactRow> {
    STATE.with(|state| {
        let contacts = &mut state.borrow_mut().contacts;
        contacts.unit_start = 0;
        std::mem::take(&mut contacts.rows)
    })
}

pub fn loads_cached() -> bool {
    STATE.with(|state| state.borrow().loads.enabled)
}

pub use loads_cached as direct_mode;

thread_local! {
    /// Source ids by key, as committed transactions on this writer thread saw
    /// them. Sources are never deleted and their keys never change, so an
    /// entry stays true; it is dropped on rollback, in case the source was
    /// created by the transaction rolled back. Writer threads serve one
    /// database each, so the map never mixes databases.
    static KNOWN_SOURCES: RefCell<HashMap<SourceKey, i64>> = RefCell::default();
}

pub fn known_source(key: &SourceKey) -> Option<i64> {
    KNOWN_SOURCES.with(|known| known.borrow().get(key).copied())
}

pub fn remember_source(key: &SourceKey, id: i64) {
    KNOWN_SOURCES.with(|known| known.borrow_mut().insert(key.clone(), id));
}

pub fn forget_known_sources() {
    KNOWN_SOURCES.with(|known| known.borrow_mut().clear());
}

/// The source's candidates from the cache, `None` if it is not cached.
pub fn cached_candidates(source_id: i64) -> Option<Vec<Candidate>> {
    STATE.with(|state| {
        let state = state.borrow();
        let loads = &state.loads;
        let table = loads.tables.get(&source_id)?;
        Some(
            table
                .iter()
                .filter(|(operator_id, _)| {
                    loads
                        .operators
                        .get(operator_id)
                        .is_some_and(|load| load.is_active && load.active_load < load.max_load)
                })
                .map(|&(operator_id, weight)| Candidate {
                    operator_id,
                    weight,
                })
                .collect(),
        )
    })
}

/// Caches the source's weight table and its operators' rows. Rows already
/// cached are kept: they hold load changes not yet written.
pub fn cache_source(source_id: i64, table: Vec<(i64, u32)>, rows: Vec<(i64, OperatorLoad)>) {
    STATE.with(|state| {
        let loads = &mut state.borrow_mut().loads;
        for (operator_id, load) in rows {
            loads.operators.entry(operator_id).or_insert(load);
        }
        loads.tables.insert(source_id, table);
    });
}

/// Takes a unit of the operator's load in memory, if it is cached, active
/// and below its limit.
pub fn take_cached(operator_id: i64) -> bool {
    STATE.with(|state| {
        let loads = &mut state.borrow_mut().loads;
        match loads.operators.get_mut(&operator_id) {
            Some(load) if load.is_active && load.active_load < load.max_load => {
                load.active_load += 1;
                *loads.unit.entry(operator_id).or_default() += 1;
                true
            }
            _ => false,
        }
    })
}

/// Gives back a unit of the operator's load in memory; `false` if the
/// operator is not cached (the caller then writes it).
pub fn release_cached(operator_id: i64) -> bool {
    STATE.with(|state| {
        let loads = &mut state.borrow_mut().loads;
        match loads.operators.get_mut(&operator_id) {
            Some(load) => {
                load.active_load -= 1;
                *loads.unit.entry(operator_id).or_default() -= 1;
                true
            }
            None => false,
        }
    })
}

/// Empties the cache and returns the load changes still to be written,
/// the running unit's included (they are written now, with the rest).
pub fn take_load_changes() -> BTreeMap<i64, i32> {
    STATE.with(|state| {
        let loads = &mut state.borrow_mut().loads;
        loads.operators.clear();
        loads.tables.clear();
        let mut changes = std::mem::take(&mut loads.transaction);
        for (operator_id, delta) in std::mem::take(&mut loads.unit) {
            *changes.entry(operator_id).or_default() += delta;
        }
        changes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(active_load: i32, max_load: i32) -> OperatorLoad {
        OperatorLoad {
            is_active: true,
            max_load,
            active_load,
        }
    }

    #[test]
    fn cached_loads_never_pass_the_limit_and_failed_units_are_undone() {
        reset(true);
        cache_source(
            7,
            vec![(1, 10), (2, 5)],
            vec![(1, load(1, 2)), (2, load(0, 0))],
        );
        let ids = |c: Vec<Candidate>| c.iter().map(|c| c.operator_id).collect::<Vec<_>>();
        assert_eq!(ids(cached_candidates(7).unwrap()), [1]);
        assert!(take_cached(1));
        unit_succeeded();
        assert!(!take_cached(1), "operator 1 is full");
        assert!(!take_cached(2), "operator 2 takes nothing");
        assert!(cached_candidates(7).unwrap().is_empty());

        // A unit that frees a slot and then fails leaves the load as it was.
        assert!(release_cached(1));
        unit_failed();
        assert!(cached_candidates(7).unwrap().is_empty());

        // A unit still running when the loads are written is written too.
        assert!(release_cached(1));
        assert!(take_cached(1));
        assert!(release_cached(1));
        let changes = take_load_changes();
        assert_eq!(
            changes.get(&1),
            Some(&0),
            "+1 committed, -1 in the running unit"
        );
        assert!(cached_candidates(7).is_none(), "the cache is emptied");
        reset(false);
        assert!(!loads_cached());
    }

    fn contact(lead_id: i64) -> ContactRow {
        ContactRow {
            id: 0,
            lead_id,
            source_id: 1,
            operator_id: None,
            status: 2,
            created_at: 0,
            assigned_at: None,
            closed_at: None,
            request_id: None,
            lead_created: false,
        }
    }

    #[test]
    fn staged_contacts_take_reserved_ids_and_failed_units_unstage() {
        reset(true);
        assert!(stage_contact(contact(1)).is_none(), "no id reserved");
        reserve_contact_ids([10, 11]);
        assert_eq!(stage_contact(contact(1)).map(|row| row.id), Some(10));
        unit_succeeded();
        assert_eq!(stage_contact(contact(2)).map(|row| row.id), Some(11));
        unit_failed();
        let staged: Vec<i64> = take_staged_contacts()
            .iter()
            .map(|row| row.lead_id)
            .collect();
        assert_eq!(staged, [1], "the failed unit's contact is gone");
        assert!(
            stage_contact(contact(3)).is_none(),
            "ids are not handed out twice"
        );
        reset(false);
    }

    #[test]
    fn counter_changes_of_failed_units_are_dropped() {
        reset(true);
        add_pending(3, 1);
        unit_succeeded();
        add_pending(3, 5);
        unit_failed();
        add_pair(
            1,
            3,
            PairDelta {
                active: 1,
                closed: 0,
                total: 1,
            },
        );
        unit_succeeded();
        let deltas = take_transaction_deltas();
        assert_eq!(deltas.pending.get(&3), Some(&1));
        assert_eq!(deltas.pairs.get(&(1, 3)).map(|d| d.total), Some(1));
    }
}
