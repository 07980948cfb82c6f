use diesel::prelude::*;

use super::{
    counts, dispatch, events, leads, loads, locks,
    models::{ContactRow, NewContactRow},
    operators,
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::contacts,
    sources,
    tx::{Mode, WriteTx},
    units::{CheckContext, Checked, OnUniqueViolation, ReadAhead, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{
        Assignment, AssignmentReason, Contact, ContactEventType, ContactFilter, ContactStatus,
        NewContact, Page, PageRequest, Registration, RequestId, Timestamp,
    },
    error::Fault,
};

/// RegisterContact: source, lead, operator, contact.
pub(crate) struct Register(pub(crate) NewContact);

impl WriteUnit for Register {
    type Output = Registration;
    /// The source's id.
    type Plan = i64;
    /// Two first registrations of one new person race for the lead's unique
    /// identifiers; the loser runs again and finds the lead.
    const ON_UNIQUE_VIOLATION: OnUniqueViolation = OnUniqueViolation::Retry;
    const USES_BUFFERS: bool = true;
    const INSERTS: bool = true;

    fn read_ahead(&self, ahead: &mut ReadAhead) {
        ahead.identity(&self.0.lead);
        ahead.sources.push(self.0.source.clone());
    }

    /// A request id already used answers the first call's registration,
    /// whatever the rest of the request says. In `Direct` mode the lookup is
    /// left to the unique index: a repeated request id fails the batch's
    /// contact insert, and the batch runs again in `Savepoints` mode, where
    /// this lookup answers it. Retries are rare; the round trip saved is on
    /// every registration.
    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<i64, Registration>> {
        let Self(new) = self;
        let reader = &mut context.reader;
        if context.mode == Mode::Savepoints
            && let Some(earlier) = replay(reader, new.request_id.as_ref())?
        {
            return Ok(Checked::Answered(earlier));
        }
        match sources::resolve(reader, &new.source, context.mode, context.memory) {
            Ok(source_id) => Ok(Checked::Apply(source_id)),
            Err(unknown @ Error::NotFound(_)) => match replay(reader, new.request_id.as_ref())? {
                Some(earlier) => Ok(Checked::Answered(earlier)),
                None => Err(unknown),
            },
            Err(error) => Err(error),
        }
    }

    fn apply(&self, tx: &mut WriteTx<'_>, source_id: i64) -> Result<Registration, Fault> {
        let Self(new) = self;
        let (lead, lead_created) = leads::find_or_create(tx, &new.lead)?;
        // On PostgreSQL this takes the source's locks (see [`locks`]), under
        // which the candidates are exact: no capacity event can slip in
        // between this draw and the commit.
        let settings = sources::settings(tx, source_id)?;
        let now = Timestamp::now().as_micros();
        let sticky = match settings.sticky_window {
            Some(window) if !lead_created => sticky_operator(tx, source_id, lead.id, now, window)?,
            _ => None,
        };
        // `None` leaves the contact PENDING.
        let assignment = match sticky {
            Some(operator_id) => Some(Assignment {
                reason: AssignmentReason::Sticky,
                operator_id,
                candidates: Vec::new(),
            }),
            None => loads::claim_for_source(tx, source_id)?.map(loads::Claim::assignment),
        };
        let operator_id = assignment.as_ref().map(|assignment| assignment.operator_id);
        let accept_deadline = operator_id.and_then(|_| settings.deadline(now));
        let status = match operator_id {
            Some(_) => ContactStatus::Active,
            None => ContactStatus::Pending,
        };
        let staged = ContactRow {
            id: 0,
            lead_id: lead.id,
            source_id,
            operator_id,
            status: status.code(),
            created_at: now,
            assigned_at: operator_id.map(|_| now),
            closed_at: None,
            request_id: new.request_id.as_ref().map(|id| id.as_str().to_owned()),
            lead_created,
            accepted_at: None,
            accept_deadline,
            lapses: 0,
            lapsed_with: None,
        };
        // In `Direct` mode the contact joins the batch's one multi-row insert
        // at commit.
        let buffered = tx
            .state
            .contacts
            .as_mut()
            .and_then(|overlay| overlay.insert(staged.clone()));
        let row: ContactRow = match buffered {
            Some(buffered) => buffered,
            None => diesel::insert_into(contacts::table)
                .values(NewContactRow {
                    lead_id: staged.lead_id,
                    source_id,
                    operator_id,
                    status: staged.status,
                    created_at: now,
                    assigned_at: staged.assigned_at,
                    request_id: new.request_id.as_ref().map(RequestId::as_str),
                    lead_created,
                    accept_deadline,
                })
                .returning(contacts::all_columns)
                .get_result_on(tx.connection())?,
        };
        match operator_id {
            Some(operator_id) => counts::assigned(tx, operator_id, source_id),
            None => counts::pending(tx, source_id, 1),
        }
        events::record(tx, ContactEventType::Registered, &row, None, assignment);
        Ok(Registration {
            contact: row.into(),
            lead,
            lead_created,
        })
    }
}

/// Sticky routing: the operator of the lead's most recent contact that has
/// one, if that contact was created within `window` (microseconds) and the
/// operator is one of the source's candidates now; its slot is taken.
fn sticky_operator(
    tx: &mut WriteTx<'_>,
    source_id: i64,
    lead_id: i64,
    now: i64,
    window: i64,
) -> Result<Option<i64>, Fault> {
    // Newest first through the (lead_id, id) index: few of a lead's
    // contacts are without an operator.
    let stored: Option<(i64, Option<i64>, i64)> = tx
        .reader()
        .first(
            contacts::table
                .filter(contacts::lead_id.eq(lead_id))
                .filter(contacts::operator_id.is_not_null())
                .order(contacts::id.desc())
                .select((contacts::id, contacts::operator_id, contacts::created_at)),
        )
        .optional()?;
    let buffered = tx
        .state
        .contacts
        .as_ref()
        .and_then(|overlay| overlay.latest_assigned(lead_id));
    let latest = match (stored, buffered) {
        (Some(stored), Some(buffered)) => Some(stored.max(buffered)),
        (stored, buffered) => stored.or(buffered),
    };
    let Some((_, Some(operator_id), created_at)) = latest else {
        return Ok(None);
    };
    if now.saturating_sub(created_at) > window {
        return Ok(None);
    }
    Ok(loads::claim_candidate(tx, source_id, operator_id)?.then_some(operator_id))
}

/// The idempotency rule, in one place: the registration an earlier call made
/// with this request id, if any.
pub(crate) fn replay(
    reader: &mut Reader<'_>,
    request_id: Option<&RequestId>,
) -> Result<Option<Registration>> {
    let Some(request_id) = request_id else {
        return Ok(None);
    };
    let row: Option<ContactRow> = reader
        .first(
            contacts::table
                .filter(contacts::request_id.eq(request_id.as_str()))
                .select(contacts::all_columns),
        )
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lead = leads::get(reader, row.lead_id)?;
    let lead_created = row.lead_created;
    Ok(Some(Registration {
        contact: row.into(),
        lead,
        lead_created,
    }))
}

pub(crate) fn get(reader: &mut Reader<'_>, id: i64) -> Result<Contact> {
    row(reader, id)?
        .map(Contact::from)
        .ok_or_else(|| Error::not_found(format_args!("contact {id}")))
}

fn row(reader: &mut Reader<'_>, id: i64) -> QueryResult<Option<ContactRow>> {
    reader
        .first(contacts::table.find(id).select(contacts::all_columns))
        .optional()
}

pub(crate) fn list(
    reader: &mut Reader<'_>,
    page: PageRequest,
    filter: &ContactFilter,
) -> Result<Page<Contact>> {
    let ContactFilter {
        operator_id,
        source_id,
        lead_id,
        status,
    } = *filter;
    if let Some(id) = operator_id {
        operators::must_exist(reader, id)?;
    }
    if let Some(id) = source_id {
        sources::must_exist(reader, id)?;
    }
    if let Some(id) = lead_id {
        leads::must_exist(reader, id)?;
    }
    let mut query = contacts::table.select(contacts::all_columns).into_boxed();
    if let Some(id) = operator_id {
        query = query.filter(contacts::operator_id.eq(id));
    }
    if let Some(id) = source_id {
        query = query.filter(contacts::source_id.eq(id));
    }
    if let Some(id) = lead_id {
        query = query.filter(contacts::lead_id.eq(id));
    }
    if let Some(status) = status {
        query = query.filter(contacts::status.eq(status.code()));
    }
    Ok(keyset_page!(reader, query, contacts::id, page, ContactRow => Contact)?)
}

/// CloseContact: an ACTIVE or PENDING contact becomes CLOSED. Closing an
/// ACTIVE one frees a unit of its operator's load, which goes to the oldest
/// pending contact it can serve.
pub(crate) struct Close(pub(crate) i64);

impl WriteUnit for Close {
    type Output = Contact;
    /// The contact as the check read it.
    type Plan = ContactRow;

    const USES_BUFFERS: bool = true;

    fn read_ahead(&self, ahead: &mut ReadAhead) {
        ahead.contact_ids.push(self.0);
    }

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<ContactRow, Contact>> {
        let Self(id) = *self;
        let row = context
            .contact(id)?
            .ok_or_else(|| Error::not_found(format_args!("contact {id}")))?;
        if row.status == ContactStatus::Closed.code() {
            return Err(Error::FailedPrecondition(format!(
                "id: contact {id} is already closed"
            )));
        }
        Ok(Checked::Apply(row))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, row: ContactRow) -> Result<Contact, Fault> {
        let active_with = row
            .operator_id
            .filter(|_| row.status == ContactStatus::Active.code());
        let served = match active_with {
            Some(operator_id) => locks::operator_sources(tx, operator_id, Some(row.source_id))?,
            None => {
                locks::sources(tx, &[row.source_id])?;
                Vec::new()
            }
        };
        let now = Timestamp::now().as_micros();
        let close = |row: &mut ContactRow| {
            row.status = ContactStatus::Closed.code();
            row.closed_at = Some(now);
            row.accept_deadline = None;
        };
        let closed = tx.change_contact(&row, close)?;
        events::record(tx, ContactEventType::Closed, &closed, None, None);
        match active_with {
            Some(operator_id) => {
                loads::release(tx, operator_id)?;
                counts::closed(tx, operator_id, row.source_id);
                // After the close's own event: the slot is handed on after it frees.
                dispatch::pending(tx, &served)?;
            }
            None => counts::pending(tx, row.source_id, -1),
        }
        Ok(closed.into())
    }
}
