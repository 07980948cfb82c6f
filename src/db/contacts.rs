use super::run::RunOn;
use diesel::prelude::*;
use rand::Rng;

use super::{
    DbConnection, counts, dispatch, leads, locks,
    models::{ContactRow, NewContactRow},
    operators,
    schema::contacts,
    sources, tx_state,
};
use crate::{
    Error, Result,
    domain::{
        Contact, ContactFilter, ContactStatus, NewContact, Page, PageRequest, Registration,
        RequestId, Timestamp,
    },
};

/// RegisterContact as one unit of work: source, lead, operator, contact.
pub fn register<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    new: &NewContact,
    rng: &mut R,
) -> Result<Registration> {
    // In the writer's direct mode the lookup is left to the unique index: a
    // repeated request id fails the contact insert, and the batch runs again
    // in careful mode, where this lookup answers it. Retries are rare; the
    // round trip saved is on every registration.
    if !tx_state::direct_mode()
        && let Some(request_id) = &new.request_id
        && let Some(earlier) = find_registration(connection, request_id)?
    {
        return Ok(earlier);
    }
    let source_id = match sources::resolve(connection, &new.source) {
        Ok(source_id) => source_id,
        // A retry gets the first call's result whatever source it names.
        Err(unknown @ Error::NotFound(_)) => {
            return match &new.request_id {
                Some(request_id) => find_registration(connection, request_id)?.ok_or(unknown),
                None => Err(unknown),
            };
        }
        Err(error) => return Err(error),
    };
    let (lead, lead_created) = leads::find_or_create(connection, &new.lead)?;
    // Under the source's locks (see [`locks`]) the candidates are exact: no
    // capacity event can slip in between this draw and the commit. `None`
    // leaves the contact PENDING.
    let operator_id = operators::claim_for_source(connection, source_id, rng)?;
    let now = Timestamp::now().as_micros();
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
    };
    // In direct mode the contact joins the batch's one multi-row insert at
    // commit; a unique violation there (a repeated request id) sends the
    // batch to careful mode, which inserts one by one.
    let row: ContactRow = match tx_state::stage_contact(staged.clone()) {
        Some(staged) => staged,
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
            })
            .returning(contacts::all_columns)
            .get_result_on(connection)?,
    };
    match operator_id {
        Some(operator_id) => counts::assigned(operator_id, source_id),
        None => counts::pending(source_id, 1),
    }
    Ok(Registration {
        contact: row.into(),
        lead,
        lead_created,
    })
}

/// Takes `count` contact ids ahead for the batch's registrations (direct
/// mode). On SQLite the writer holds the only write lock, so the ids after
/// the largest one are free; on PostgreSQL they come from the sequence.
pub fn reserve_ids(connection: &mut DbConnection, count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    match connection {
        DbConnection::Postgres(pg) => {
            let ids: Vec<Id> = diesel::sql_query(
                "SELECT nextval(pg_get_serial_sequence('contacts', 'id')) AS id \
                 FROM generate_series(1, $1)",
            )
            .bind::<diesel::sql_types::BigInt, _>(count)
            .load(pg)?;
            tx_state::reserve_contact_ids(ids.into_iter().map(|row| row.id));
        }
        DbConnection::Sqlite(_) => {
            let largest: Option<i64> = contacts::table
                .select(diesel::dsl::max(contacts::id))
                .get_result_on(connection)?;
            let first = largest.unwrap_or(0) + 1;
            tx_state::reserve_contact_ids(first..first + count);
        }
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Inserts the contacts staged so far, all in one statement.
pub fn flush_staged(connection: &mut DbConnection) -> Result<()> {
    let staged = tx_state::take_staged_contacts();
    if !staged.is_empty() {
        diesel::insert_into(contacts::table)
            .values(&staged)
            .execute_on(connection)?;
    }
    Ok(())
}

/// The result of the earlier call that used this request id, if any.
pub fn find_registration(
    connection: &mut DbConnection,
    request_id: &RequestId,
) -> Result<Option<Registration>> {
    let row: Option<ContactRow> = contacts::table
        .filter(contacts::request_id.eq(request_id.as_str()))
        .select(contacts::all_columns)
        .first_on(connection)
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lead = leads::get(connection, row.lead_id)?;
    let lead_created = row.lead_created;
    Ok(Some(Registration {
        contact: row.into(),
        lead,
        lead_created,
    }))
}

pub fn get(connection: &mut DbConnection, id: i64) -> Result<Contact> {
    row(connection, id)?
        .map(Contact::from)
        .ok_or_else(|| Error::not_found(format_args!("contact {id}")))
}

fn row(connection: &mut DbConnection, id: i64) -> Result<Option<ContactRow>> {
    Ok(contacts::table
        .find(id)
        .select(contacts::all_columns)
        .first_on(connection)
        .optional()?)
}

pub fn list(
    connection: &mut DbConnection,
    page: PageRequest,
    filter: &ContactFilter,
) -> Result<Page<Contact>> {
    let ContactFilter {
        operator_id,
        source_id,
        lead_id,
        status,
    } = filter;
    if let Some(id) = *operator_id
        && !operators::exists(connection, id)?
    {
        return Err(Error::not_found(format_args!("operator {id}")));
    }
    if let Some(id) = *source_id
        && !sources::exists(connection, id)?
    {
        return Err(Error::not_found(format_args!("source {id}")));
    }
    if let Some(id) = *lead_id
        && !leads::exists(connection, id)?
    {
        return Err(Error::not_found(format_args!("lead {id}")));
    }
    let mut query = contacts::table
        .filter(contacts::id.gt(page.after()))
        .order(contacts::id)
        .limit(page.size() + 1)
        .select(contacts::all_columns)
        .into_boxed();
    if let Some(id) = *operator_id {
        query = query.filter(contacts::operator_id.eq(id));
    }
    if let Some(id) = *source_id {
        query = query.filter(contacts::source_id.eq(id));
    }
    if let Some(id) = *lead_id {
        query = query.filter(contacts::lead_id.eq(id));
    }
    if let Some(status) = *status {
        query = query.filter(contacts::status.eq(status.code()));
    }
    let rows: Vec<Contact> = query
        .load::<ContactRow>(connection)?
        .into_iter()
        .map(Contact::from)
        .collect();
    Ok(page.paginate(rows, |contact| contact.id))
}

/// Closes an ACTIVE or PENDING contact. Closing an ACTIVE one frees a unit of
/// its operator's load, which goes to the oldest pending contact it can serve.
pub fn close<R: Rng + ?Sized>(
    connection: &mut DbConnection,
    id: i64,
    rng: &mut R,
) -> Result<Contact> {
    loop {
        let contact: Contact = row(connection, id)?
            .map(Contact::from)
            .ok_or_else(|| Error::not_found(format_args!("contact {id}")))?;
        let served = match (contact.status, contact.operator_id) {
            (ContactStatus::Closed, _) => {
                return Err(Error::FailedPrecondition(format!(
                    "id: contact {id} is already closed"
                )));
            }
            (ContactStatus::Active, Some(operator_id)) => {
                locks::operator_sources(connection, operator_id, Some(contact.source_id))?
            }
            _ => {
                locks::sources(connection, &[contact.source_id])?;
                Vec::new()
            }
        };
        // Guarded by the status just read: if a concurrent dispatch or close
        // changed the contact meanwhile, this matches nothing and the loop
        // reads it again.
        let closed = diesel::update(
            contacts::table
                .find(id)
                .filter(contacts::status.eq(contact.status.code())),
        )
        .set((
            contacts::status.eq(ContactStatus::Closed.code()),
            contacts::closed_at.eq(Some(Timestamp::now().as_micros())),
        ))
        .execute_on(connection)?;
        if closed == 0 {
            continue;
        }
        match (contact.status, contact.operator_id) {
            (ContactStatus::Active, Some(operator_id)) => {
                operators::release_slot(connection, operator_id)?;
                counts::closed(operator_id, contact.source_id);
                dispatch::pending(connection, &served, rng)?;
            }
            _ => counts::pending(contact.source_id, -1),
        }
        return get(connection, id);
    }
}
