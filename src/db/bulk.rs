//! PostgreSQL inserts of many rows as `INSERT … SELECT * FROM unnest(…)`:
//! one array per column, so the statement is short and the same for any
//! number of rows. diesel's multi-row insert sends `VALUES ($1, …), …` with
//! a bind per cell, which PostgreSQL parses and plans anew for every batch:
//! measured at 1.6 ms of a registration batch of ~30 (leads, contacts and
//! events), more than any statement's execution.
//!
//! Each function names every field of its row type, so a new column fails
//! to compile here until it is written too.

use diesel::{
    PgConnection, QueryResult, RunQueryDsl,
    sql_types::{Array, BigInt, Binary, Bool, Integer, Nullable, Text},
};

use super::models::{ContactRow, EventRow, LeadRow};

/// Collects one column of the rows.
fn column<'r, R, T>(rows: &'r [R], get: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(get).collect()
}

pub(super) fn leads(pg: &mut PgConnection, rows: &[LeadRow]) -> QueryResult<usize> {
    // Every field is written: a new one fails to compile here.
    let _every_field = |row: &LeadRow| {
        let LeadRow {
            id: _,
            external_id: _,
            phone: _,
            email: _,
            name: _,
            created_at: _,
        } = row;
    };
    diesel::sql_query(
        "INSERT INTO leads (id, external_id, phone, email, name, created_at) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::bigint[])",
    )
    .bind::<Array<BigInt>, _>(column(rows, |r| r.id))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.external_id.as_deref()))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.phone.as_deref()))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.email.as_deref()))
    .bind::<Array<Text>, _>(column(rows, |r| r.name.as_str()))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.created_at))
    .execute(pg)
}

pub(super) fn contacts(pg: &mut PgConnection, rows: &[ContactRow]) -> QueryResult<usize> {
    // Every field is written: a new one fails to compile here.
    let _every_field = |row: &ContactRow| {
        let ContactRow {
            id: _,
            lead_id: _,
            source_id: _,
            operator_id: _,
            status: _,
            created_at: _,
            assigned_at: _,
            closed_at: _,
            request_id: _,
            lead_created: _,
            accepted_at: _,
            accept_deadline: _,
            lapses: _,
            lapsed_with: _,
        } = row;
    };
    diesel::sql_query(
        "INSERT INTO contacts (id, lead_id, source_id, operator_id, status, created_at, \
                               assigned_at, closed_at, request_id, lead_created, accepted_at, \
                               accept_deadline, lapses, lapsed_with) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                              $5::int[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], \
                              $10::bool[], $11::bigint[], $12::bigint[], $13::int[], \
                              $14::text[])",
    )
    .bind::<Array<BigInt>, _>(column(rows, |r| r.id))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.lead_id))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.source_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.operator_id))
    .bind::<Array<Integer>, _>(column(rows, |r| r.status))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.created_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.assigned_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.closed_at))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.request_id.as_deref()))
    .bind::<Array<Bool>, _>(column(rows, |r| r.lead_created))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.accepted_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.accept_deadline))
    .bind::<Array<Integer>, _>(column(rows, |r| r.lapses))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.lapsed_with.as_deref()))
    .execute(pg)
}

pub(super) fn events(pg: &mut PgConnection, rows: &[EventRow]) -> QueryResult<usize> {
    // Every field is written: a new one fails to compile here.
    let _every_field = |row: &EventRow| {
        let EventRow {
            id: _,
            contact_id: _,
            source_id: _,
            kind: _,
            time: _,
            status: _,
            operator_id: _,
            previous_operator_id: _,
            assigned_at: _,
            closed_at: _,
            reason: _,
            candidates: _,
            accepted_at: _,
            accept_deadline: _,
            lapses: _,
        } = row;
    };
    diesel::sql_query(
        "INSERT INTO contact_events (id, contact_id, source_id, kind, time, status, operator_id, \
                                     previous_operator_id, assigned_at, closed_at, reason, \
                                     candidates, accepted_at, accept_deadline, lapses) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], \
                              $5::bigint[], $6::int[], $7::bigint[], $8::bigint[], \
                              $9::bigint[], $10::bigint[], $11::int[], $12::bytea[], \
                              $13::bigint[], $14::bigint[], $15::int[])",
    )
    .bind::<Array<BigInt>, _>(column(rows, |r| r.id))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.contact_id))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.source_id))
    .bind::<Array<Integer>, _>(column(rows, |r| r.kind))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.time))
    .bind::<Array<Integer>, _>(column(rows, |r| r.status))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.operator_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.previous_operator_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.assigned_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.closed_at))
    .bind::<Array<Nullable<Integer>>, _>(column(rows, |r| r.reason))
    .bind::<Array<Nullable<Binary>>, _>(column(rows, |r| r.candidates.as_deref()))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.accepted_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.accept_deadline))
    .bind::<Array<Integer>, _>(column(rows, |r| r.lapses))
    .execute(pg)
}
