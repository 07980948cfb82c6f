//! The contacts a scenario closes or accepts, in order.

use std::{collections::VecDeque, sync::Mutex};

use crate::db::Sql;

/// Work for later calls of a run, oldest first.
pub struct Queue<T>(Mutex<VecDeque<T>>);

impl<T> Queue<T> {
    pub fn pop(&self) -> Option<T> {
        self.0.lock().unwrap().pop_front()
    }

    pub fn push(&self, item: T) {
        self.0.lock().unwrap().push_back(item);
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }
}

/// Contact ids to close, oldest first: first the ACTIVE contacts of full
/// operators, then pending ones. Closing an ACTIVE one frees a slot that the
/// oldest pending contact of its source takes, so by the time the queue
/// reaches a contact that was pending, it is ACTIVE (given more slots than
/// calls in flight).
pub type CloseQueue = Queue<i64>;

impl CloseQueue {
    /// Every contact of these sources, by id.
    pub fn of_sources(sql: &mut Sql, sources: &[i64]) -> Self {
        let list = sources.iter().map(i64::to_string).collect::<Vec<_>>();
        let ids = sql.numbers(&format!(
            "SELECT id AS n FROM contacts WHERE source_id IN ({}) ORDER BY id",
            list.join(", ")
        ));
        Self(Mutex::new(ids.into()))
    }
}

/// An offered contact to accept: its id and the operator it was offered to.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub contact_id: i64,
    pub operator_id: i64,
}
