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
    leads::ReadAhead,
    reader::Reader,
    tx::{Mode, WriteTx, WriterMemory},
};
use crate::{Result, error::Fault};

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

/// What the check phase may use: reads, and the writer's memory of ids.
pub(crate) struct CheckContext<'a, 'c> {
    pub(crate) reader: Reader<'c>,
    pub(crate) mode: Mode,
    pub(crate) memory: &'a mut WriterMemory,
}

pub(crate) trait WriteUnit: Send + 'static {
    type Output: Send + 'static;
    type Plan;

    const ON_UNIQUE_VIOLATION: OnUniqueViolation = OnUniqueViolation::Fail;
    /// Whether apply may stage new leads and contacts for the batch's
    /// multi-row inserts. Units that do not are run only after the staged
    /// rows are written, so that they see them.
    const STAGES_INSERTS: bool = false;

    /// Adds the lead identifiers apply will look up, so that a `Direct`-mode
    /// batch reads them all in one query.
    fn read_ahead(&self, _leads: &mut ReadAhead) {}

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
    if !U::STAGES_INSERTS {
        tx.flush_staged()?;
    }
    tx.unit(|tx| {
        let mode = tx.mode();
        let checked = {
            let WriteTx {
                connection, memory, ..
            } = tx;
            unit.check(&mut CheckContext {
                reader: Reader::new(connection),
                mode,
                memory,
            })?
        };
        match checked {
            Checked::Answered(output) => Ok(output),
            Checked::Apply(plan) => Ok(unit.apply(tx, plan)?),
        }
    })
}
