//! Units of write work, each in two phases, so that "a unit that answers a
//! domain error has written nothing" holds by construction:
//!
//! - `check` gets a [`Reader`], which runs only `SELECT`s. It may answer a
//!   domain error (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION...), or the
//!   unit's whole answer (an idempotent retry), or a plan for `apply`.
//! - `apply` writes. Its error type is [`Fault`], which has no domain
//!   variant: a fault fails the transaction (`Direct` mode) or the unit's
//!   savepoint (`Savepoints` mode), never just answers the caller while
//!   leaving writes behind. Where a concurrent transaction changed what the
//!   check saw, apply answers [`Fault::Conflict`] and the transaction runs
//!   again, so the check sees the change.

use super::{
    models::ContactRow,
    overlay::ContactOverlay,
    reader::Reader,
    schema::contacts,
    tx::{Mode, WriteTx, WriterMemory},
};
use crate::{Result, error::Fault};
use diesel::prelude::*;

/// What a unique violation in this unit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnUniqueViolation {
    /// A conflict to report (INTERNAL).
    Fail,
    /// A concurrent transaction inserted the same row first: run again, and
    /// the check (or a lookup in apply) finds it.
    Retry,
}

/// What a check found.
pub(crate) enum Checked<Plan, Output> {
    /// Go on to apply, with this plan.
    Apply(Plan),
    /// The unit's answer is known without writing (an idempotent retry).
    Answered(Output),
}

/// What the check phase may use: reads, the writer's memory of ids, and the
/// contacts the batch has buffered.
pub(crate) struct CheckContext<'a, 'c> {
    pub(crate) reader: Reader<'c>,
    pub(crate) mode: Mode,
    pub(crate) memory: &'a mut WriterMemory,
    contacts: Option<&'a mut ContactOverlay>,
}

impl CheckContext<'_, '_> {
    /// The contact as this transaction sees it, buffered changes included.
    pub(crate) fn contact(&mut self, id: i64) -> QueryResult<Option<ContactRow>> {
        match &mut self.contacts {
            Some(overlay) => overlay.row(&mut self.reader, id),
            None => self
                .reader
                .first(contacts::table.find(id).select(contacts::all_columns))
                .optional(),
        }
    }
}

/// What the units of a `Direct`-mode batch will read, gathered before any
/// runs so that the batch reads it in one query per table.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    pub(super) external_ids: Vec<String>,
    pub(super) phones: Vec<String>,
    pub(super) emails: Vec<String>,
    pub(super) contact_ids: Vec<i64>,
    /// Sources the units will draw for (PostgreSQL locks the known ones
    /// ahead, see [`super::locks::ahead`]).
    pub(super) sources: Vec<crate::domain::SourceKey>,
}

pub(crate) trait WriteUnit: Send + 'static {
    type Output: Send + 'static;
    type Plan;

    const ON_UNIQUE_VIOLATION: OnUniqueViolation = OnUniqueViolation::Fail;
    /// Whether the unit reads and writes contacts and leads only through the
    /// transaction's buffers ([`ContactOverlay`], the lead index), which in
    /// `Direct` mode hold rows not written yet. Units that do not are run
    /// only after the buffers are written, so that they see every row.
    const USES_BUFFERS: bool = false;

    /// Whether check reads operator loads: in `Direct` mode the loads the
    /// batch changed in memory are written first, so that it reads them.
    const READS_LOADS: bool = false;

    /// Whether apply may create one lead and one contact: a `Direct`-mode
    /// batch takes ids ahead for each such unit.
    const INSERTS: bool = false;

    /// Adds what check and apply will read, so that a `Direct`-mode batch
    /// reads it for all its units at once.
    fn read_ahead(&self, _ahead: &mut ReadAhead) {}

    /// Read-only: may answer a domain error; writes nothing.
    fn check(
        &self,
        context: &mut CheckContext<'_, '_>,
    ) -> Result<Checked<Self::Plan, Self::Output>>;

    /// Writes the change; cannot answer a domain error.
    fn apply(&self, tx: &mut WriteTx<'_>, plan: Self::Plan) -> Result<Self::Output, Fault>;
}

/// Runs the unit inside the transaction: check, then apply.
pub(crate) fn run<U: WriteUnit>(tx: &mut WriteTx<'_>, unit: &U) -> Result<U::Output> {
    if !U::USES_BUFFERS {
        tx.flush_buffers()?;
    }
    if U::READS_LOADS {
        tx.write_loads()?;
    }
    tx.unit(|tx| {
        let mode = tx.mode();
        let checked = {
            let WriteTx {
                connection,
                memory,
                state,
                ..
            } = tx;
            unit.check(&mut CheckContext {
                reader: Reader::new(connection),
                mode,
                memory,
                // A unit that does not use the buffers reads the stored
                // rows (the buffers were just written), and leaves no copy
                // in the overlay that its own statements would make stale.
                contacts: if U::USES_BUFFERS {
                    state.contacts.as_mut()
                } else {
                    None
                },
            })?
        };
        match checked {
            Checked::Answered(output) => Ok(output),
            Checked::Apply(plan) => Ok(unit.apply(tx, plan)?),
        }
    })
}
