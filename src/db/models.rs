//! Row structs: the database's shape, converted into domain types at once.

use diesel::prelude::*;

use super::schema::{contact_events, contacts, leads, operators, source_operators, sources};
use crate::domain::{Contact, ContactStatus, Lead, Operator, Source, Timestamp};

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = operators)]
pub struct OperatorRow {
    pub id: i64,
    pub name: String,
    pub is_active: bool,
    pub max_load: i32,
    pub active_load: i32,
    pub created_at: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = operators)]
pub struct NewOperatorRow<'a> {
    pub name: &'a str,
    pub is_active: bool,
    pub max_load: i32,
    pub active_load: i32,
    pub created_at: i64,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = sources)]
pub struct SourceRow {
    pub id: i64,
    pub bot_id: String,
    pub name: String,
    pub created_at: i64,
    pub accept_timeout_nanos: Option<i64>,
    pub sticky_window_nanos: Option<i64>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sources)]
pub struct NewSourceRow<'a> {
    pub bot_id: &'a str,
    pub name: &'a str,
    pub created_at: i64,
    pub accept_timeout_nanos: Option<i64>,
    pub sticky_window_nanos: Option<i64>,
}

/// A duration as the `sources` table stores it: nanoseconds.
pub fn nanos(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

fn duration(nanos: i64) -> std::time::Duration {
    std::time::Duration::from_nanos(nanos.unsigned_abs())
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = source_operators)]
pub struct WeightRow {
    pub source_id: i64,
    pub operator_id: i64,
    pub weight: i32,
}

/// Also inserted as is, by a batch that took the ids ahead (see
/// [`ContactRow`]).
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = leads, treat_none_as_default_value = false)]
pub struct LeadRow {
    pub id: i64,
    pub external_id: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = leads)]
pub struct NewLeadRow<'a> {
    pub external_id: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub email: Option<&'a str>,
    pub name: &'a str,
    pub created_at: i64,
}

/// Also inserted as is, by a batch that took the ids ahead: NULL, not
/// DEFAULT, for absent values, since SQLite's multi-row insert has no DEFAULT.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = contacts, treat_none_as_default_value = false)]
pub struct ContactRow {
    pub id: i64,
    pub lead_id: i64,
    pub source_id: i64,
    pub operator_id: Option<i64>,
    pub status: i32,
    pub created_at: i64,
    pub assigned_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub request_id: Option<String>,
    pub lead_created: bool,
    pub accepted_at: Option<i64>,
    pub accept_deadline: Option<i64>,
    pub lapses: i32,
    /// The operators it lapsed with since it was last PENDING (see
    /// [`ContactRow::lapsed_with`]).
    pub lapsed_with: Option<String>,
}

/// See [`ContactRow::lifecycle`]. `None` writes NULL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = contacts, treat_none_as_null = true)]
pub struct ContactLifecycle<'a> {
    pub status: i32,
    pub operator_id: Option<i64>,
    pub assigned_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub accepted_at: Option<i64>,
    pub accept_deadline: Option<i64>,
    pub lapses: i32,
    pub lapsed_with: Option<&'a str>,
}

impl ContactRow {
    /// The operators the contact lapsed with since it was last PENDING.
    pub fn lapsed_with(&self) -> Vec<i64> {
        self.lapsed_with
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|id| id.trim().parse().ok())
            .collect()
    }

    /// Every column a contact's lifecycle changes after its insert, as this
    /// row has them: one changeset for every statement that writes a
    /// contact's new state, so none of them can leave a column out.
    pub(super) fn lifecycle(&self) -> ContactLifecycle<'_> {
        let Self {
            id: _,
            lead_id: _,
            source_id: _,
            operator_id,
            status,
            created_at: _,
            assigned_at,
            closed_at,
            request_id: _,
            lead_created: _,
            accepted_at,
            accept_deadline,
            lapses,
            lapsed_with,
        } = self;
        ContactLifecycle {
            status: *status,
            operator_id: *operator_id,
            assigned_at: *assigned_at,
            closed_at: *closed_at,
            accepted_at: *accepted_at,
            accept_deadline: *accept_deadline,
            lapses: *lapses,
            lapsed_with: lapsed_with.as_deref(),
        }
    }

    pub fn set_lapsed_with(&mut self, operators: &[i64]) {
        self.lapsed_with = (!operators.is_empty()).then(|| {
            operators
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = contacts)]
pub struct NewContactRow<'a> {
    pub lead_id: i64,
    pub source_id: i64,
    pub operator_id: Option<i64>,
    pub status: i32,
    pub created_at: i64,
    pub assigned_at: Option<i64>,
    pub request_id: Option<&'a str>,
    pub lead_created: bool,
    pub accept_deadline: Option<i64>,
}

impl From<OperatorRow> for Operator {
    fn from(row: OperatorRow) -> Self {
        let OperatorRow {
            id,
            name,
            is_active,
            max_load,
            active_load,
            created_at,
        } = row;
        Self {
            id,
            name,
            is_active,
            max_load,
            active_load,
            created_at: Timestamp::from_micros(created_at),
        }
    }
}

impl From<SourceRow> for Source {
    fn from(row: SourceRow) -> Self {
        let SourceRow {
            id,
            bot_id,
            name,
            created_at,
            accept_timeout_nanos,
            sticky_window_nanos,
        } = row;
        Self {
            id,
            bot_id,
            name,
            created_at: Timestamp::from_micros(created_at),
            accept_timeout: accept_timeout_nanos.map(duration),
            sticky_window: sticky_window_nanos.map(duration),
        }
    }
}

impl From<LeadRow> for Lead {
    fn from(row: LeadRow) -> Self {
        let LeadRow {
            id,
            external_id,
            phone,
            email,
            name,
            created_at,
        } = row;
        Self {
            id,
            external_id,
            phone,
            email,
            name,
            created_at: Timestamp::from_micros(created_at),
        }
    }
}

impl From<ContactRow> for Contact {
    fn from(row: ContactRow) -> Self {
        let ContactRow {
            id,
            lead_id,
            source_id,
            operator_id,
            status,
            created_at,
            assigned_at,
            closed_at,
            request_id,
            lead_created: _,
            accepted_at,
            accept_deadline,
            lapses,
            lapsed_with: _,
        } = row;
        Self {
            id,
            lead_id,
            source_id,
            operator_id,
            // The schema's CHECK admits only the three known codes.
            status: ContactStatus::from_code(status).unwrap_or(ContactStatus::Closed),
            created_at: Timestamp::from_micros(created_at),
            assigned_at: assigned_at.map(Timestamp::from_micros),
            closed_at: closed_at.map(Timestamp::from_micros),
            request_id,
            accepted_at: accepted_at.map(Timestamp::from_micros),
            accept_deadline: accept_deadline.map(Timestamp::from_micros),
            lapses,
        }
    }
}

/// A recorded event; see the `contact_events` migration.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = contact_events, treat_none_as_default_value = false)]
pub struct EventRow {
    pub id: i64,
    pub contact_id: i64,
    pub source_id: i64,
    pub kind: i32,
    pub time: i64,
    pub status: i32,
    pub operator_id: Option<i64>,
    pub previous_operator_id: Option<i64>,
    pub assigned_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub reason: Option<i32>,
    pub candidates: Option<Vec<u8>>,
    pub accepted_at: Option<i64>,
    pub accept_deadline: Option<i64>,
    pub lapses: i32,
}
