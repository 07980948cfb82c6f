//! Contact events: recorded by the write units into the transaction's state,
//! written at commit with ids taken from the `event_ids` counter row (see the
//! migration), and read back with the contacts' unchanging fields.

use diesel::prelude::*;

use super::{
    DbConnection,
    cached::insert_kept_prepared,
    models::{ContactRow, EventRow},
    reader::Reader,
    run::RunOn,
    schema::{contact_events, contacts, event_ids},
    tx::WriteTx,
    units::{CheckContext, Checked, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{
        Assignment, CandidateLoad, Contact, ContactEvent, ContactEventType, ContactStatus,
        EventFilter, Page, PageRequest, Timestamp,
    },
    error::Fault,
};

/// An event of the running transaction, without its id yet.
#[derive(Debug, Clone)]
pub(super) struct NewEvent {
    kind: ContactEventType,
    time: i64,
    contact: ContactRow,
    previous_operator_id: Option<i64>,
    assignment: Option<Assignment>,
}

/// Records an event of the contact, `contact` being the row right after it.
pub(super) fn record(
    tx: &mut WriteTx<'_>,
    kind: ContactEventType,
    contact: &ContactRow,
    previous_operator_id: Option<i64>,
    assignment: Option<Assignment>,
) {
    tx.state.events.push(NewEvent {
        kind,
        time: Timestamp::now().as_micros(),
        contact: contact.clone(),
        previous_operator_id,
        assignment,
    });
}

/// Writes the transaction's events with the next ids of the counter row,
/// whose lock (held to commit) makes ids increase in commit order. Returns
/// the last id written, if any.
pub(super) fn flush(tx: &mut WriteTx<'_>) -> Result<Option<i64>, Fault> {
    let events = std::mem::take(&mut tx.state.events);
    if events.is_empty() {
        return Ok(None);
    }
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let last = match tx.connection() {
        // The ids are taken in the insert itself: rows numbered from 1.
        DbConnection::Postgres(pg) => super::bulk::events(pg, &rows(events, 1))?,
        DbConnection::Sqlite(sqlite) => {
            let last: i64 = diesel::update(event_ids::table.find(1))
                .set(event_ids::last.eq(event_ids::last + count))
                .returning(event_ids::last)
                .get_result(sqlite)?;
            let rows = rows(events, last - count + 1);
            insert_kept_prepared!(sqlite, contact_events::table, &rows)?;
            last
        }
    };
    Ok(Some(last))
}

/// The events as rows, with ids from `first` on.
fn rows(events: Vec<NewEvent>, first: i64) -> Vec<EventRow> {
    events
        .into_iter()
        .zip(first..)
        .map(|(event, id)| {
            let NewEvent {
                kind,
                time,
                contact,
                previous_operator_id,
                assignment,
            } = event;
            EventRow {
                id,
                contact_id: contact.id,
                source_id: contact.source_id,
                kind: kind.code(),
                time,
                status: contact.status,
                operator_id: contact.operator_id,
                previous_operator_id,
                assigned_at: contact.assigned_at,
                closed_at: contact.closed_at,
                reason: assignment.as_ref().map(|a| a.reason.code()),
                candidates: assignment.map(|a| CandidateLoad::pack(&a.candidates)),
                accepted_at: contact.accepted_at,
                accept_deadline: contact.accept_deadline,
                lapses: contact.lapses,
            }
        })
        .collect()
}

/// The events' contact fields that never change, read from `contacts`.
type Unchanging = (i64, i64, Option<String>);

fn unchanging() -> (
    contacts::lead_id,
    contacts::created_at,
    contacts::request_id,
) {
    (
        contacts::lead_id,
        contacts::created_at,
        contacts::request_id,
    )
}

impl From<(EventRow, Unchanging)> for ContactEvent {
    fn from((row, (lead_id, created_at, request_id)): (EventRow, Unchanging)) -> Self {
        let EventRow {
            id,
            contact_id,
            source_id,
            kind,
            time,
            status,
            operator_id,
            previous_operator_id,
            assigned_at,
            closed_at,
            reason,
            candidates,
            accepted_at,
            accept_deadline,
            lapses,
        } = row;
        let assignment = reason
            .and_then(crate::domain::AssignmentReason::from_code)
            .zip(operator_id)
            .map(|(reason, operator_id)| Assignment {
                reason,
                operator_id,
                candidates: candidates
                    .as_deref()
                    .and_then(CandidateLoad::unpack)
                    .unwrap_or_default(),
            });
        Self {
            id,
            // The schema's CHECK admits only the known codes.
            kind: ContactEventType::from_code(kind).unwrap_or(ContactEventType::Registered),
            time: Timestamp::from_micros(time),
            contact: Contact {
                id: contact_id,
                lead_id,
                source_id,
                operator_id,
                status: ContactStatus::from_code(status).unwrap_or(ContactStatus::Closed),
                created_at: Timestamp::from_micros(created_at),
                assigned_at: assigned_at.map(Timestamp::from_micros),
                closed_at: closed_at.map(Timestamp::from_micros),
                request_id,
                accepted_at: accepted_at.map(Timestamp::from_micros),
                accept_deadline: accept_deadline.map(Timestamp::from_micros),
                lapses,
            },
            previous_operator_id,
            assignment,
        }
    }
}

/// Up to `limit` events after the id `after` that pass the filter, in id
/// order: a page of a list, or the next events of a watch.
pub(crate) fn after(
    reader: &mut Reader<'_>,
    filter: &EventFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<ContactEvent>> {
    let EventFilter {
        contact_id,
        operator_id,
        source_id,
    } = *filter;
    let mut query = contact_events::table
        .inner_join(contacts::table)
        .select((EventRow::as_select(), unchanging()))
        .filter(contact_events::id.gt(after))
        .order(contact_events::id)
        .limit(limit)
        .into_boxed();
    if let Some(id) = contact_id {
        query = query.filter(contact_events::contact_id.eq(id));
    }
    if let Some(id) = operator_id {
        query = query.filter(
            contact_events::operator_id
                .eq(id)
                .or(contact_events::previous_operator_id.eq(id)),
        );
    }
    if let Some(id) = source_id {
        query = query.filter(contact_events::source_id.eq(id));
    }
    let rows: Vec<(EventRow, Unchanging)> = reader.load_boxed(query)?;
    Ok(rows.into_iter().map(ContactEvent::from).collect())
}

/// ListContactEvents: NOT_FOUND for a filter naming what does not exist,
/// OUT_OF_RANGE for a page token before the oldest retained event.
pub(crate) fn list(
    reader: &mut Reader<'_>,
    page: PageRequest,
    filter: &EventFilter,
) -> Result<Page<ContactEvent>> {
    must_name_existing(reader, filter)?;
    if page.after() > 0 {
        check_retained(reader, page.after())?;
    }
    let events = after(reader, filter, page.after(), page.size() + 1)?;
    Ok(page.paginate(events, |event| event.id))
}

/// NOT_FOUND when the filter names a contact, operator or source that does
/// not exist.
pub(crate) fn must_name_existing(reader: &mut Reader<'_>, filter: &EventFilter) -> Result<()> {
    let EventFilter {
        contact_id,
        operator_id,
        source_id,
    } = *filter;
    if let Some(id) = contact_id {
        reader.must_find(contacts::table.find(id), format_args!("contact {id}"))?;
    }
    if let Some(id) = operator_id {
        super::operators::must_exist(reader, id)?;
    }
    if let Some(id) = source_id {
        super::sources::must_exist(reader, id)?;
    }
    Ok(())
}

/// Deletes up to `limit` of the oldest events recorded before `before`
/// (microseconds); returns how many. Small batches keep each transaction
/// short, so retention never stalls the writes around it.
pub(crate) struct Purge {
    pub(crate) before: i64,
    pub(crate) limit: i64,
}

impl WriteUnit for Purge {
    type Output = usize;
    type Plan = Vec<i64>;

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<Vec<i64>, usize>> {
        let ids: Vec<i64> = context.reader.load(
            contact_events::table
                .filter(contact_events::time.lt(self.before))
                .order(contact_events::id)
                .limit(self.limit)
                .select(contact_events::id),
        )?;
        Ok(Checked::Apply(ids))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, ids: Vec<i64>) -> Result<usize, Fault> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(
            diesel::delete(contact_events::table.filter(contact_events::id.eq_any(&ids)))
                .execute_on(tx.connection())?,
        )
    }
}

/// The retained range: the oldest event id still kept (the last one + 1
/// when none is), and the last id handed out.
pub(crate) fn horizon(reader: &mut Reader<'_>) -> Result<(i64, i64)> {
    let last: i64 = reader.first(event_ids::table.find(1).select(event_ids::last))?;
    let oldest: Option<i64> =
        reader.get_result(contact_events::table.select(diesel::dsl::min(contact_events::id)))?;
    Ok((oldest.unwrap_or(last + 1), last))
}

/// When the oldest retained event was recorded, if any.
pub(crate) fn oldest_time(reader: &mut Reader<'_>) -> Result<Option<Timestamp>> {
    let oldest: Option<i64> = reader
        .first(
            contact_events::table
                .order(contact_events::id)
                .select(contact_events::time),
        )
        .optional()?;
    Ok(oldest.map(Timestamp::from_micros))
}

/// OUT_OF_RANGE unless the events after `after` are all still retained.
pub(crate) fn check_retained(reader: &mut Reader<'_>, after: i64) -> Result<i64> {
    let (oldest, last) = horizon(reader)?;
    if after + 1 < oldest {
        return Err(Error::OutOfRange(format!(
            "events after {after} are no longer retained (the oldest is {oldest}): \
             resync with the List calls"
        )));
    }
    if after > last {
        return Err(Error::OutOfRange(format!(
            "event {after} does not exist yet (the last is {last}): resync with the List calls"
        )));
    }
    Ok(last)
}
