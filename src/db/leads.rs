use diesel::prelude::*;

use super::{
    models::{LeadRow, NewLeadRow},
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::leads,
    tx::WriteTx,
};
use crate::{
    Error, Result,
    domain::{Lead, LeadIdentity, Page, PageRequest, Timestamp},
    error::Fault,
};

/// Finds the lead by `external_id`, then `phone`, then `email` (the first
/// identifier that finds one wins) and fills in what it lacks; or creates one.
/// Returns the lead and whether it was created.
///
/// Two racing first registrations of one person both try to insert; the
/// unique indexes let one through and abort the other, whose whole
/// transaction is then retried and finds the lead.
pub(super) fn find_or_create(
    tx: &mut WriteTx<'_>,
    identity: &LeadIdentity,
) -> Result<(Lead, bool), Fault> {
    let identifiers = Identifier::of(identity);
    let mut found = None;
    for identifier in &identifiers {
        found = holder(&mut tx.reader(), *identifier)?;
        if found.is_some() {
            break;
        }
    }
    match found {
        Some(lead) => Ok((fill_in(tx, lead, &identifiers, identity)?, false)),
        None => {
            let row: LeadRow = diesel::insert_into(leads::table)
                .values(NewLeadRow {
                    external_id: identity.external_id().map(|v| v.as_str()),
                    phone: identity.phone().map(|v| v.as_str()),
                    email: identity.email().map(|v| v.as_str()),
                    name: identity.name().as_str(),
                    created_at: Timestamp::now().as_micros(),
                })
                .returning(leads::all_columns)
                .get_result_on(tx.connection())?;
            Ok((row.into(), true))
        }
    }
}

/// One identifier of a person, each unique among leads.
#[derive(Debug, Clone, Copy)]
enum Identifier<'a> {
    ExternalId(&'a str),
    Phone(&'a str),
    Email(&'a str),
}

impl<'a> Identifier<'a> {
    /// The identity's identifiers in lookup priority order.
    fn of(identity: &'a LeadIdentity) -> Vec<Self> {
        let external_id = identity.external_id().map(|v| Self::ExternalId(v.as_str()));
        let phone = identity.phone().map(|v| Self::Phone(v.as_str()));
        let email = identity.email().map(|v| Self::Email(v.as_str()));
        [external_id, phone, email].into_iter().flatten().collect()
    }

    fn is_held_by(self, lead: &LeadRow) -> bool {
        match self {
            Self::ExternalId(_) => lead.external_id.is_some(),
            Self::Phone(_) => lead.phone.is_some(),
            Self::Email(_) => lead.email.is_some(),
        }
    }
}

/// The lead holding the identifier, if any.
fn holder(reader: &mut Reader<'_>, identifier: Identifier) -> QueryResult<Option<LeadRow>> {
    let query = leads::table.select(leads::all_columns);
    let row = match identifier {
        Identifier::ExternalId(value) => reader.first(query.filter(leads::external_id.eq(value))),
        Identifier::Phone(value) => reader.first(query.filter(leads::phone.eq(value))),
        Identifier::Email(value) => reader.first(query.filter(leads::email.eq(value))),
    };
    row.optional()
}

/// Gives the lead the identifiers (and the name) it lacks, unless another lead
/// already holds them; never overwrites a value it has.
fn fill_in(
    tx: &mut WriteTx<'_>,
    lead: LeadRow,
    identifiers: &[Identifier],
    identity: &LeadIdentity,
) -> Result<Lead, Fault> {
    let mut changed = false;
    for identifier in identifiers {
        if identifier.is_held_by(&lead) || holder(&mut tx.reader(), *identifier)?.is_some() {
            continue;
        }
        // Guarded by IS NULL: a value a concurrent call filled in first stays.
        let target = leads::table.find(lead.id);
        let connection = tx.connection();
        match *identifier {
            Identifier::ExternalId(value) => {
                diesel::update(target.filter(leads::external_id.is_null()))
                    .set(leads::external_id.eq(value))
                    .execute_on(connection)?
            }
            Identifier::Phone(value) => diesel::update(target.filter(leads::phone.is_null()))
                .set(leads::phone.eq(value))
                .execute_on(connection)?,
            Identifier::Email(value) => diesel::update(target.filter(leads::email.is_null()))
                .set(leads::email.eq(value))
                .execute_on(connection)?,
        };
        changed = true;
    }
    let name = identity.name().as_str();
    if lead.name.is_empty() && !name.is_empty() {
        diesel::update(leads::table.find(lead.id).filter(leads::name.eq("")))
            .set(leads::name.eq(name))
            .execute_on(tx.connection())?;
        changed = true;
    }
    if changed {
        find(&mut tx.reader(), lead.id)?
            .ok_or_else(|| Fault::vanished(format_args!("lead {}", lead.id)))
    } else {
        Ok(lead.into())
    }
}

pub(crate) fn get(reader: &mut Reader<'_>, id: i64) -> Result<Lead> {
    find(reader, id)?.ok_or_else(|| Error::not_found(format_args!("lead {id}")))
}

fn find(reader: &mut Reader<'_>, id: i64) -> QueryResult<Option<Lead>> {
    Ok(reader
        .first::<_, LeadRow>(leads::table.find(id).select(leads::all_columns))
        .optional()?
        .map(Lead::from))
}

/// NOT_FOUND unless the lead exists.
pub(crate) fn must_exist(reader: &mut Reader<'_>, id: i64) -> Result<()> {
    reader.must_find(leads::table.find(id), format_args!("lead {id}"))
}

pub(crate) fn list(reader: &mut Reader<'_>, page: PageRequest) -> Result<Page<Lead>> {
    let query = leads::table.select(leads::all_columns).into_boxed();
    Ok(keyset_page!(reader, query, leads::id, page, LeadRow => Lead)?)
}
