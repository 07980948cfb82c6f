//! PostgreSQL inserts of many rows as `INSERT … SELECT * FROM unnest(…)`:
//! one array per column, so the statement is short and the same for any
//! number of rows, and kept prepared ([`Prepared`]). diesel's multi-row
//! insert sends `VALUES ($1, …), …` with a bind per cell, which PostgreSQL
//! parses and plans anew for every batch: measured at 1.6 ms of a
//! registration batch of ~30 (leads, contacts and events), more than any
//! statement's execution.
//!
//! Each function names every field of its row type, so a new column fails
//! to compile here until it is written too.

use diesel::{
    PgConnection, QueryResult, QueryableByName, RunQueryDsl,
    sql_types::{Array, BigInt, Binary, Bool, Integer, Nullable, Text},
};

use super::{
    models::{ContactRow, EventRow, LeadRow},
    prepared::Prepared,
};

/// Collects one column of the rows.
fn column<'r, R, T>(rows: &'r [R], get: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(get).collect()
}

/// Inserts new leads and new contacts in one statement (the leads in a
/// data-modifying CTE; the contacts' foreign keys are checked at the end of
/// the statement, when both are written). Either list may be empty.
pub(super) fn new_rows(
    pg: &mut PgConnection,
    leads: &[LeadRow],
    contacts: &[ContactRow],
) -> QueryResult<usize> {
    // Every field is written: a new one fails to compile here.
    let _every_field = |lead: &LeadRow, contact: &ContactRow| {
        let LeadRow {
            id: _,
            external_id: _,
            phone: _,
            email: _,
            name: _,
            created_at: _,
        } = lead;
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
        } = contact;
    };
    Prepared::new(
        "WITH new_leads AS (\
           INSERT INTO leads (id, external_id, phone, email, name, created_at) \
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
                                $5::text[], $6::bigint[])) \
         INSERT INTO contacts (id, lead_id, source_id, operator_id, status, created_at, \
                               assigned_at, closed_at, request_id, lead_created, accepted_at, \
                               accept_deadline, lapses, lapsed_with) \
         SELECT * FROM unnest($7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
                              $11::int[], $12::bigint[], $13::bigint[], $14::bigint[], \
                              $15::text[], $16::bool[], $17::bigint[], $18::bigint[], \
                              $19::int[], $20::text[])",
    )
    .bind::<Array<BigInt>, _>(column(leads, |r| r.id))
    .bind::<Array<Nullable<Text>>, _>(column(leads, |r| r.external_id.as_deref()))
    .bind::<Array<Nullable<Text>>, _>(column(leads, |r| r.phone.as_deref()))
    .bind::<Array<Nullable<Text>>, _>(column(leads, |r| r.email.as_deref()))
    .bind::<Array<Text>, _>(column(leads, |r| r.name.as_str()))
    .bind::<Array<BigInt>, _>(column(leads, |r| r.created_at))
    .bind::<Array<BigInt>, _>(column(contacts, |r| r.id))
    .bind::<Array<BigInt>, _>(column(contacts, |r| r.lead_id))
    .bind::<Array<BigInt>, _>(column(contacts, |r| r.source_id))
    .bind::<Array<Nullable<BigInt>>, _>(column(contacts, |r| r.operator_id))
    .bind::<Array<Integer>, _>(column(contacts, |r| r.status))
    .bind::<Array<BigInt>, _>(column(contacts, |r| r.created_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(contacts, |r| r.assigned_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(contacts, |r| r.closed_at))
    .bind::<Array<Nullable<Text>>, _>(column(contacts, |r| r.request_id.as_deref()))
    .bind::<Array<Bool>, _>(column(contacts, |r| r.lead_created))
    .bind::<Array<Nullable<BigInt>>, _>(column(contacts, |r| r.accepted_at))
    .bind::<Array<Nullable<BigInt>>, _>(column(contacts, |r| r.accept_deadline))
    .bind::<Array<Integer>, _>(column(contacts, |r| r.lapses))
    .bind::<Array<Nullable<Text>>, _>(column(contacts, |r| r.lapsed_with.as_deref()))
    .execute(pg)
}

/// Inserts the events with ids taken from the `event_ids` counter row in the
/// same statement, and returns the last id taken. The rows' own ids count
/// from 1 (their order in the transaction); the statement adds the id
/// before the first one taken.
pub(super) fn events(pg: &mut PgConnection, rows: &[EventRow]) -> QueryResult<i64> {
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
    Prepared::new(
        "WITH v AS (\
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], \
                                $5::bigint[], $6::int[], $7::bigint[], $8::bigint[], \
                                $9::bigint[], $10::bigint[], $11::int[], $12::bytea[], \
                                $13::bigint[], $14::bigint[], $15::int[]) \
             AS v(id, contact_id, source_id, kind, time, status, operator_id, \
                  previous_operator_id, assigned_at, closed_at, reason, candidates, \
                  accepted_at, accept_deadline, lapses)), \
         taken AS (\
           UPDATE event_ids SET last = last + (SELECT count(*) FROM v) WHERE id = 1 \
           RETURNING last - (SELECT count(*) FROM v) AS before, last), \
         written AS (\
           INSERT INTO contact_events (id, contact_id, source_id, kind, time, status, \
                                       operator_id, previous_operator_id, assigned_at, \
                                       closed_at, reason, candidates, accepted_at, \
                                       accept_deadline, lapses) \
           SELECT taken.before + v.id, v.contact_id, v.source_id, v.kind, v.time, v.status, \
                  v.operator_id, v.previous_operator_id, v.assigned_at, v.closed_at, \
                  v.reason, v.candidates, v.accepted_at, v.accept_deadline, v.lapses \
           FROM taken, v) \
         SELECT last FROM taken",
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
    .get_result::<Taken>(pg)
    .map(|taken| taken.last)
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = BigInt)]
    last: i64,
}
