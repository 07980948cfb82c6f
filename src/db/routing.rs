//! The assignment as a lifecycle (API.md "Acceptance, lapses and
//! transfers"): AcceptContact, TransferContact, ReleaseOperatorContacts and
//! the lapse of an offer whose deadline passed.
//!
//! AcceptContact changes nothing but its contact and goes through the
//! batch's buffers like a close. The others read their contacts themselves
//! (`USES_BUFFERS` is false: the writer writes the buffers before each of
//! them), take the locks of [`locks`], and change a contact only after
//! finding its row still as read ([`still_as_read`], FOR UPDATE on
//! PostgreSQL); every change goes through [`WriteTx::change_contact`], which
//! in `Direct` mode joins it to the batch's guarded update at commit. So a lapse racing an accept, a transfer or a close on
//! another replica has exactly one winner.

use diesel::prelude::*;

use super::{
    DbConnection, counts, dispatch, events,
    guard::unchanged,
    loads, locks,
    models::ContactRow,
    operators, overlay,
    schema::{contacts, operators as operator_rows},
    sources,
    tx::WriteTx,
    units::{CheckContext, Checked, OnUniqueViolation, ReadAhead, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{Assignment, AssignmentReason, Contact, ContactEventType, ContactStatus, Timestamp},
    error::Fault,
};

/// Whether the contact's row is still as `row` shows it; on PostgreSQL it
/// is locked until commit from here on.
fn still_as_read(tx: &mut WriteTx<'_>, row: &ContactRow) -> Result<bool, Fault> {
    let query = unchanged!(row).select(contacts::id);
    let found: Vec<i64> = match &mut *tx.connection {
        DbConnection::Postgres(pg) => query.for_update().load(pg)?,
        DbConnection::Sqlite(_) => tx.reader().load(query)?,
    };
    Ok(!found.is_empty())
}

/// [`still_as_read`] for many contacts in one statement: their rows as they
/// are now, locked until commit on PostgreSQL (in id order, after the
/// sources' locks: the global order).
fn rows_for_update(
    tx: &mut WriteTx<'_>,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, ContactRow>, Fault> {
    let query = contacts::table
        .filter(contacts::id.eq_any(ids))
        .order(contacts::id)
        .select(contacts::all_columns);
    let rows: Vec<ContactRow> = match &mut *tx.connection {
        DbConnection::Postgres(pg) => query.for_update().load(pg)?,
        DbConnection::Sqlite(_) => tx.reader().load(query)?,
    };
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

fn not_found(id: i64) -> Error {
    Error::not_found(format_args!("contact {id}"))
}

/// FAILED_PRECONDITION unless the contact is ACTIVE.
fn must_be_active(row: &ContactRow) -> Result<()> {
    if row.status == ContactStatus::Active.code() {
        return Ok(());
    }
    let status = match ContactStatus::from_code(row.status) {
        Some(ContactStatus::Pending) => "PENDING",
        _ => "CLOSED",
    };
    Err(Error::FailedPrecondition(format!(
        "id: contact {} is {status}, not ACTIVE",
        row.id
    )))
}

/// Why a contact is taken from its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Its accept deadline passed: `lapses` grows and the operator joins
    /// the operators it lapsed with.
    Lapse,
    /// ReleaseOperatorContacts: the operator is excluded from this draw only.
    Release,
}

/// Takes the ACTIVE contact from its operator and redraws it among its
/// source's candidates, excluding the operators it lapsed with (and, on a
/// release, this one), or makes it PENDING (its exclusions forgotten).
/// The caller holds the locks of the operator and the contact's source and
/// found the row [`still_as_read`]; it dispatches the freed slot after.
/// Returns the contact as it is now.
fn take_and_redraw(
    tx: &mut WriteTx<'_>,
    row: &ContactRow,
    why: Taken,
) -> Result<ContactRow, Fault> {
    let from = row
        .operator_id
        .ok_or_else(|| Fault::Internal(format!("contact {} has no operator", row.id)))?;
    let source_id = row.source_id;
    let mut lapsed_with = row.lapsed_with();
    let mut excluded = lapsed_with.clone();
    if !excluded.contains(&from) {
        excluded.push(from);
    }
    if why == Taken::Lapse {
        lapsed_with = excluded.clone();
    }
    loads::release(tx, from)?;
    counts::taken_away(tx, from, source_id);
    if why == Taken::Lapse {
        counts::lapsed(tx, from, source_id);
    }
    let settings = sources::settings(tx, source_id)?;
    let claim = loads::claim_excluding(tx, source_id, &excluded)?;
    let now = Timestamp::now().as_micros();
    let mut moved = row.clone();
    moved.accepted_at = None;
    if why == Taken::Lapse {
        moved.lapses += 1;
    }
    match claim {
        Some(claim) => {
            moved.operator_id = Some(claim.operator_id);
            moved.assigned_at = Some(now);
            moved.accept_deadline = settings.deadline(now);
            moved.set_lapsed_with(&lapsed_with);
            tx.change_contact(row, |now| *now = moved.clone())?;
            counts::assigned(tx, claim.operator_id, source_id);
            let assignment = Some(claim.assignment());
            events::record(
                tx,
                ContactEventType::Assigned,
                &moved,
                Some(from),
                assignment,
            );
        }
        None => {
            moved.status = ContactStatus::Pending.code();
            moved.operator_id = None;
            moved.assigned_at = None;
            moved.accept_deadline = None;
            moved.set_lapsed_with(&[]);
            tx.change_contact(row, |now| *now = moved.clone())?;
            counts::pending(tx, source_id, 1);
            events::record(tx, ContactEventType::Unassigned, &moved, Some(from), None);
        }
    }
    Ok(moved)
}

/// AcceptContact: the contact's current operator takes it on.
pub(crate) struct Accept {
    pub(crate) id: i64,
    pub(crate) operator_id: i64,
}

impl WriteUnit for Accept {
    type Output = Contact;
    type Plan = ContactRow;

    /// It changes nothing but the contact: in `Direct` mode the change joins
    /// the batch's guarded update at commit (see [`ContactOverlay`]), so an
    /// accept costs its batch no flush and no statement of its own.
    ///
    /// [`ContactOverlay`]: super::overlay::ContactOverlay
    const USES_BUFFERS: bool = true;

    fn read_ahead(&self, ahead: &mut ReadAhead) {
        ahead.contact_ids.push(self.id);
    }

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<ContactRow, Contact>> {
        let Self { id, operator_id } = *self;
        let row = context.contact(id)?.ok_or_else(|| not_found(id))?;
        operators::must_exist(&mut context.reader, operator_id)?;
        must_be_active(&row)?;
        if row.operator_id != Some(operator_id) {
            return Err(Error::FailedPrecondition(format!(
                "operator_id: contact {id} is not with operator {operator_id}"
            )));
        }
        if row.accepted_at.is_some() {
            // Accepted already: the same answer, nothing changes.
            return Ok(Checked::Answered(row.into()));
        }
        Ok(Checked::Apply(row))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, row: ContactRow) -> Result<Contact, Fault> {
        let now = Timestamp::now().as_micros();
        let accept = |row: &mut ContactRow| {
            row.accepted_at = Some(now);
            row.accept_deadline = None;
        };
        // A lapse or a transfer that got there first changed the row: the
        // transaction runs again and the check answers FAILED_PRECONDITION.
        let accepted = tx.change_contact(&row, accept)?;
        events::record(tx, ContactEventType::Accepted, &accepted, None, None);
        Ok(accepted.into())
    }
}

/// TransferContact: moves an ACTIVE contact to the named operator, or to one
/// drawn among its source's candidates other than its current operator.
pub(crate) struct Transfer {
    pub(crate) id: i64,
    pub(crate) operator_id: Option<i64>,
}

impl WriteUnit for Transfer {
    type Output = Contact;
    type Plan = ContactRow;
    /// The named operator's counters for the source may be created by two
    /// transactions at once; the loser runs again.
    const ON_UNIQUE_VIOLATION: OnUniqueViolation = OnUniqueViolation::Retry;
    const READS_LOADS: bool = true;

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<ContactRow, Contact>> {
        let Self { id, operator_id } = *self;
        let row = context.contact(id)?.ok_or_else(|| not_found(id))?;
        let named: Option<(bool, i32, i32)> = match operator_id {
            Some(to) => Some(
                context
                    .reader
                    .first(operator_rows::table.find(to).select((
                        operator_rows::is_active,
                        operator_rows::active_load,
                        operator_rows::max_load,
                    )))
                    .optional()?
                    .ok_or_else(|| Error::not_found(format_args!("operator {to}")))?,
            ),
            None => None,
        };
        must_be_active(&row)?;
        match (operator_id, named) {
            (Some(to), Some((is_active, active_load, max_load))) => {
                let refusal = if row.operator_id == Some(to) {
                    Some("is the contact's current operator")
                } else if !is_active {
                    Some("is not active")
                } else if active_load >= max_load {
                    Some("has reached its max_load")
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    return Err(Error::FailedPrecondition(format!(
                        "operator_id: operator {to} {refusal}"
                    )));
                }
            }
            _ => {
                let others = loads::candidates(&mut context.reader, row.source_id)?
                    .into_iter()
                    .filter(|candidate| Some(candidate.operator_id) != row.operator_id)
                    .count();
                if others == 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "operator_id: no other operator of source {} can take contact {id} now",
                        row.source_id
                    )));
                }
            }
        }
        Ok(Checked::Apply(row))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, row: ContactRow) -> Result<Contact, Fault> {
        let conflict = || Fault::Conflict(format!("contact {} or its operators changed", row.id));
        let from = row.operator_id.ok_or_else(conflict)?;
        let source_id = row.source_id;
        let served = locks::operator_sources(tx, from, Some(source_id))?;
        if !still_as_read(tx, &row)? {
            return Err(conflict());
        }
        let assignment = match self.operator_id {
            Some(to) => {
                // Guarded in SQL: a limit reached meanwhile is a conflict,
                // and the check runs again.
                if !loads::take(tx, to)? {
                    return Err(conflict());
                }
                counts::add_pair(tx, to, source_id)?;
                Assignment {
                    reason: AssignmentReason::Transfer,
                    operator_id: to,
                    candidates: Vec::new(),
                }
            }
            None => loads::claim_excluding(tx, source_id, &[from])?
                .ok_or_else(conflict)?
                .assignment(),
        };
        let to = assignment.operator_id;
        loads::release(tx, from)?;
        counts::taken_away(tx, from, source_id);
        counts::assigned(tx, to, source_id);
        let now = Timestamp::now().as_micros();
        let mut moved = row.clone();
        moved.operator_id = Some(to);
        moved.assigned_at = Some(now);
        moved.accepted_at = None;
        moved.accept_deadline = sources::settings(tx, source_id)?.deadline(now);
        tx.change_contact(&row, |now| *now = moved.clone())?;
        events::record(
            tx,
            ContactEventType::Assigned,
            &moved,
            Some(from),
            Some(assignment),
        );
        // The old operator's freed slot goes to pending contacts.
        dispatch::pending(tx, &served)?;
        Ok(moved.into())
    }
}

/// ReleaseOperatorContacts: each of the operator's ACTIVE contacts not yet
/// accepted (all with `include_accepted`) is redrawn as after a lapse,
/// excluding the operator, without counting a lapse.
pub(crate) struct Release {
    pub(crate) operator_id: i64,
    pub(crate) include_accepted: bool,
}

impl WriteUnit for Release {
    type Output = Vec<Contact>;
    /// The contacts to move, in id order.
    type Plan = Vec<ContactRow>;

    fn check(
        &self,
        context: &mut CheckContext<'_, '_>,
    ) -> Result<Checked<Vec<ContactRow>, Vec<Contact>>> {
        let Self {
            operator_id,
            include_accepted,
        } = *self;
        let reader = &mut context.reader;
        operators::must_exist(reader, operator_id)?;
        let active = contacts::table
            .filter(contacts::operator_id.eq(operator_id))
            .filter(contacts::status.eq(ContactStatus::Active.code()))
            .order(contacts::id)
            .select(contacts::all_columns);
        let rows: Vec<ContactRow> = if include_accepted {
            reader.load(active)?
        } else {
            reader.load(active.filter(contacts::accepted_at.is_null()))?
        };
        Ok(Checked::Apply(rows))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, rows: Vec<ContactRow>) -> Result<Vec<Contact>, Fault> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let served = locks::operator_sources(tx, self.operator_id, None)?;
        let mut sources: Vec<i64> = rows.iter().map(|row| row.source_id).collect();
        sources.sort_unstable();
        sources.dedup();
        locks::sources(tx, &sources)?;
        for row in &rows {
            if !still_as_read(tx, row)? {
                return Err(Fault::Conflict(format!("contact {} changed", row.id)));
            }
            take_and_redraw(tx, row, Taken::Release)?;
        }
        dispatch::pending(tx, &served)?;
        // As they are now: a contact made PENDING may have been dispatched.
        rows.iter()
            .map(|row| {
                tx.contact(row.id)?
                    .map(Contact::from)
                    .ok_or_else(|| Fault::vanished(format_args!("contact {}", row.id)))
            })
            .collect()
    }
}

/// The lapse of offers whose accept deadline passed without an accept, a
/// round's worth in one unit: one flush of the batch's buffers and one set
/// of locks for all of them, where a unit per offer paid both each time
/// (and split the registrations of its batch into many small inserts).
/// Answers how many lapsed; a contact that changed meanwhile (an accept, a
/// transfer, a close or another replica's lapse got there first) is left
/// as it is.
pub(crate) struct Lapses {
    pub(crate) contact_ids: Vec<i64>,
}

impl WriteUnit for Lapses {
    type Output = usize;
    /// The contacts still due, as the check read them.
    type Plan = Vec<ContactRow>;

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<Vec<ContactRow>, usize>> {
        let now = Timestamp::now().as_micros();
        let due: Vec<ContactRow> = context.reader.load(
            contacts::table
                .filter(contacts::id.eq_any(&self.contact_ids))
                .filter(contacts::status.eq(ContactStatus::Active.code()))
                .filter(contacts::accept_deadline.le(now))
                .order(contacts::id)
                .select(contacts::all_columns),
        )?;
        Ok(if due.is_empty() {
            Checked::Answered(0)
        } else {
            Checked::Apply(due)
        })
    }

    fn apply(&self, tx: &mut WriteTx<'_>, due: Vec<ContactRow>) -> Result<usize, Fault> {
        // The locks first, for all of them (mostly the same few sources),
        // then the contacts: the global lock order.
        let mut lapsing = Vec::with_capacity(due.len());
        for row in due {
            if let Some(from) = row.operator_id {
                let served = locks::operator_sources(tx, from, Some(row.source_id))?;
                lapsing.push((row, served));
            }
        }
        let ids: Vec<i64> = lapsing.iter().map(|(row, _)| row.id).collect();
        let now = rows_for_update(tx, &ids)?;
        let mut lapsed = 0;
        for (row, served) in lapsing {
            let still = now
                .get(&row.id)
                .is_some_and(|now| overlay::unchanged(&row, now));
            if !still {
                continue;
            }
            take_and_redraw(tx, &row, Taken::Lapse)?;
            dispatch::pending(tx, &served)?;
            lapsed += 1;
        }
        Ok(lapsed)
    }
}

/// The contacts whose accept deadline has passed by `now`, soonest first.
pub(crate) fn due(
    reader: &mut super::reader::Reader<'_>,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<i64>> {
    Ok(reader.load(
        contacts::table
            .filter(contacts::accept_deadline.le(now.as_micros()))
            .order((contacts::accept_deadline, contacts::id))
            .limit(limit)
            .select(contacts::id),
    )?)
}
