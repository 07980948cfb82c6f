use super::run::RunOn;
use diesel::prelude::*;

use super::{
    DbConnection,
    models::{LeadRow, NewLeadRow},
    schema::leads,
};
use crate::{
    Error, Result,
    domain::{Lead, LeadIdentity, Page, PageRequest, Timestamp},
};

/// Finds the lead by `external_id`, then `phone`, then `email` (the first
/// identifier that finds one wins) and fills in what it lacks; or creates one.
/// Returns the lead and whether it was created.
///
/// Two racing first registrations of one person both try to insert; the
/// unique indexes let one through and abort the other, whose whole
/// transaction is then retried and finds the lead.
pub fn find_or_create(
    connection: &mut DbConnection,
    identity: &LeadIdentity,
) -> Result<(Lead, bool)> {
    let identifiers = Identifier::of(identity);
    let mut found = None;
    for identifier in &identifiers {
        found = holder(connection, *identifier)?;
        if found.is_some() {
            break;
        }
    }
    match found {
        Some(lead) => Ok((fill_in(connection, lead, &identifiers, identity)?, false)),
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
                .get_result_on(connection)?;
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
fn holder(connection: &mut DbConnection, identifier: Identifier) -> Result<Option<LeadRow>> {
    let query = leads::table.select(leads::all_columns);
    let row = match identifier {
        Identifier::ExternalId(value) => query
            .filter(leads::external_id.eq(value))
            .first_on(connection),
        Identifier::Phone(value) => query.filter(leads::phone.eq(value)).first_on(connection),
        Identifier::Email(value) => query.filter(leads::email.eq(value)).first_on(connection),
    };
    Ok(row.optional()?)
}

/// Gives the lead the identifiers (and the name) it lacks, unless another lead
/// already holds them; never overwrites a value it has.
fn fill_in(
    connection: &mut DbConnection,
    lead: LeadRow,
    identifiers: &[Identifier],
    identity: &LeadIdentity,
) -> Result<Lead> {
    let mut changed = false;
    for identifier in identifiers {
        if identifier.is_held_by(&lead) || holder(connection, *identifier)?.is_some() {
            continue;
        }
        // Guarded by IS NULL: a value a concurrent call filled in first stays.
        let target = leads::table.find(lead.id);
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
            .execute_on(connection)?;
        changed = true;
    }
    if changed {
        get(connection, lead.id)
    } else {
        Ok(lead.into())
    }
}

pub fn get(connection: &mut DbConnection, id: i64) -> Result<Lead> {
    leads::table
        .find(id)
        .select(leads::all_columns)
        .first_on::<LeadRow>(connection)
        .optional()?
        .map(Lead::from)
        .ok_or_else(|| Error::not_found(format_args!("lead {id}")))
}

pub fn exists(connection: &mut DbConnection, id: i64) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(leads::table.find(id))).get_result_on(connection)?)
}

pub fn list(connection: &mut DbConnection, page: PageRequest) -> Result<Page<Lead>> {
    let rows: Vec<Lead> = leads::table
        .filter(leads::id.gt(page.after()))
        .order(leads::id)
        .limit(page.size() + 1)
        .select(leads::all_columns)
        .load_on::<LeadRow>(connection)?
        .into_iter()
        .map(Lead::from)
        .collect();
    Ok(page.paginate(rows, |lead| lead.id))
}
