//! API.md "Acceptance, lapses and transfers", "Sticky routing" and the
//! routing settings of sources: lapses with real (short) deadlines, accept,
//! transfer, release, sticky returns, UpdateSource, and all of it at once
//! on two replicas.

use std::time::{Duration, Instant};

use minicrm::proto::{self as pb, AssignmentReason, ContactEventType, ContactStatus};
use tokio::task::JoinSet;
use tonic::{Code, Status};

use crate::helpers::{TestApp, TestDb, assert_code, phone_lead};

crate::backend_tests!(
    lapse_moves_the_contact_to_the_other_operator,
    repeated_lapses_exclude_each_lapsed_operator_in_turn,
    lapse_with_nobody_left_goes_pending_first_in_line_and_forgets_exclusions,
    accept_racing_the_deadline_has_exactly_one_outcome,
    accept_is_idempotent_and_refused_for_the_wrong_operator_or_status,
    transfer_to_a_named_operator_or_by_draw,
    transfer_refusals_change_nothing,
    release_moves_unaccepted_or_all_contacts,
    sticky_routing_returns_a_lead_to_its_operator_within_the_window,
    sticky_routing_falls_back_to_the_draw,
    create_source_checks_the_routing_settings,
    update_source_changes_the_fields_present,
    turning_accept_timeout_off_keeps_waiting_contacts_without_deadline,
    two_replicas_lapse_accept_transfer_and_close_at_once,
);

fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn micros(time: &Option<prost_types::Timestamp>) -> i64 {
    let time = time.as_ref().expect("a timestamp");
    time.seconds * 1_000_000 + i64::from(time.nanos) / 1_000
}

fn status(contact: &pb::Contact) -> ContactStatus {
    ContactStatus::try_from(contact.status).expect("known status")
}

async fn routed_source(
    app: &TestApp,
    bot_id: &str,
    accept_timeout: Option<prost_types::Duration>,
    sticky_window: Option<prost_types::Duration>,
) -> pb::Source {
    app.sources
        .clone()
        .create_source(pb::CreateSourceRequest {
            bot_id: bot_id.into(),
            name: bot_id.into(),
            accept_timeout,
            sticky_window,
        })
        .await
        .expect("create source")
        .into_inner()
}

async fn operators(app: &TestApp, prefix: &str, count: usize, max_load: i32) -> Vec<pb::Operator> {
    let mut created = Vec::new();
    for index in 0..count {
        created.push(
            app.create_operator(&format!("{prefix}{index}"), max_load)
                .await,
        );
    }
    created
}

async fn weights(app: &TestApp, source: &pb::Source, operators: &[&pb::Operator]) {
    let table: Vec<_> = operators.iter().map(|op| (op.id, 1)).collect();
    app.set_weights(source.id, &table).await;
}

async fn register(app: &TestApp, source: &pb::Source, phone: &str) -> pb::Contact {
    app.register(source.id, phone_lead(phone), "")
        .await
        .expect("register")
        .contact
        .expect("contact")
}

async fn accept(app: &TestApp, id: i64, operator_id: i64) -> Result<pb::Contact, Status> {
    app.contacts
        .clone()
        .accept_contact(pb::AcceptContactRequest { id, operator_id })
        .await
        .map(tonic::Response::into_inner)
}

async fn transfer(app: &TestApp, id: i64, operator_id: Option<i64>) -> Result<pb::Contact, Status> {
    app.contacts
        .clone()
        .transfer_contact(pb::TransferContactRequest { id, operator_id })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(
    app: &TestApp,
    operator_id: i64,
    include_accepted: bool,
) -> Result<Vec<pb::Contact>, Status> {
    app.operators
        .clone()
        .release_operator_contacts(pb::ReleaseOperatorContactsRequest {
            operator_id,
            include_accepted,
        })
        .await
        .map(|response| response.into_inner().contacts)
}

async fn set_active(app: &TestApp, id: i64, is_active: bool) {
    app.operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id,
            is_active: Some(is_active),
            ..Default::default()
        })
        .await
        .expect("update operator");
}

async fn update_source(
    app: &TestApp,
    request: pb::UpdateSourceRequest,
) -> Result<pb::Source, Status> {
    app.sources
        .clone()
        .update_source(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn events_of(app: &TestApp, contact_id: i64) -> Vec<pb::ContactEvent> {
    app.all_events(pb::ListContactEventsRequest {
        contact_id: Some(contact_id),
        ..Default::default()
    })
    .await
}

/// Polls the contact until `done` holds; panics after `within`.
async fn wait_for(
    app: &TestApp,
    id: i64,
    within: Duration,
    done: impl Fn(&pb::Contact) -> bool,
) -> pb::Contact {
    let started = Instant::now();
    loop {
        let contact = app.get_contact(id).await;
        if done(&contact) {
            return contact;
        }
        assert!(
            started.elapsed() < within,
            "contact {id} did not get there in {within:?}: {contact:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepts the contact by whoever holds it now (it may lapse meanwhile).
async fn accept_where_it_is(app: &TestApp, id: i64) -> pb::Contact {
    loop {
        let contact = app.get_contact(id).await;
        if status(&contact) != ContactStatus::Active || contact.accepted_at.is_some() {
            return contact;
        }
        if let Ok(accepted) = accept(app, id, contact.operator_id.unwrap()).await {
            return accepted;
        }
    }
}

fn reason(event: &pb::ContactEvent) -> AssignmentReason {
    let assignment = event.assignment.as_ref().expect("an assignment");
    AssignmentReason::try_from(assignment.reason).expect("known reason")
}

fn kind(event: &pb::ContactEvent) -> ContactEventType {
    ContactEventType::try_from(event.r#type).expect("known type")
}

fn candidate_ids(event: &pb::ContactEvent) -> Vec<i64> {
    event
        .assignment
        .as_ref()
        .expect("an assignment")
        .candidates
        .iter()
        .map(|candidate| candidate.operator_id)
        .collect()
}

async fn stats_row(
    app: &TestApp,
    operator_id: i64,
    source_id: i64,
) -> Option<pb::OperatorSourceStats> {
    app.contacts
        .clone()
        .get_operator_stats(pb::GetOperatorStatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .rows
        .into_iter()
        .find(|row| row.operator_id == operator_id && row.source_id == source_id)
}

async fn lapse_moves_the_contact_to_the_other_operator(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(1), None).await;
    let ops = operators(&app, "op", 2, 5).await;
    weights(&app, &source, &[&ops[0], &ops[1]]).await;

    let offered = register(&app, &source, "+15550000001").await;
    let first = offered.operator_id.expect("assigned");
    assert_eq!(offered.lapses, 0);
    assert_eq!(offered.accepted_at, None);
    assert_eq!(
        micros(&offered.accept_deadline),
        micros(&offered.assigned_at) + 1_000_000,
        "deadline = assigned_at + accept_timeout"
    );

    let moved = wait_for(&app, offered.id, Duration::from_secs(3), |c| c.lapses == 1).await;
    let second = moved.operator_id.expect("redrawn");
    assert_ne!(second, first, "never back to the operator it lapsed with");
    assert_eq!(status(&moved), ContactStatus::Active);
    assert_eq!(
        micros(&moved.accept_deadline),
        micros(&moved.assigned_at) + 1_000_000
    );
    assert!(micros(&moved.assigned_at) >= micros(&offered.accept_deadline));
    assert!(
        micros(&moved.assigned_at) - micros(&offered.accept_deadline) < 1_000_000,
        "taken within one second of the deadline"
    );
    assert_eq!(app.get_operator(first).await.active_load, 0);
    assert_eq!(app.get_operator(second).await.active_load, 1);

    let events = events_of(&app, offered.id).await;
    let redraw = &events[1];
    assert_eq!(kind(redraw), ContactEventType::Assigned);
    assert_eq!(redraw.previous_operator_id, Some(first));
    assert_eq!(reason(redraw), AssignmentReason::WeightedDraw);
    assert_eq!(
        candidate_ids(redraw),
        [second],
        "the lapsed one is no candidate"
    );
    assert_eq!(redraw.contact.as_ref(), Some(&moved));

    let accepted = accept_where_it_is(&app, offered.id).await;
    assert_eq!(accepted.lapses, 1);
    let lapsed = stats_row(&app, first, source.id).await.expect("row");
    assert_eq!((lapsed.active, lapsed.total, lapsed.lapsed), (0, 0, 1));
    app.assert_invariant().await;
}

async fn repeated_lapses_exclude_each_lapsed_operator_in_turn(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(1), None).await;
    let ops = operators(&app, "op", 3, 5).await;
    weights(&app, &source, &[&ops[0], &ops[1], &ops[2]]).await;

    let offered = register(&app, &source, "+15550000001").await;
    wait_for(&app, offered.id, Duration::from_secs(6), |c| c.lapses >= 3).await;
    let events = events_of(&app, offered.id).await;
    // Registered, two redraws, then nobody left: unassigned, and at once
    // dispatched again by the freed slot, its exclusions forgotten.
    let kinds: Vec<_> = events.iter().take(5).map(kind).collect();
    assert_eq!(
        kinds,
        [
            ContactEventType::Registered,
            ContactEventType::Assigned,
            ContactEventType::Assigned,
            ContactEventType::Unassigned,
            ContactEventType::Assigned,
        ]
    );
    let holders: Vec<i64> = events[..3]
        .iter()
        .map(|event| event.contact.as_ref().unwrap().operator_id.unwrap())
        .collect();
    let mut distinct = holders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "each lapse excludes every earlier one: {holders:?}"
    );
    assert_eq!(candidate_ids(&events[1]).len(), 2);
    assert!(!candidate_ids(&events[1]).contains(&holders[0]));
    assert_eq!(candidate_ids(&events[2]), [holders[2]]);
    assert_eq!(events[3].previous_operator_id, Some(holders[2]));
    let unassigned = events[3].contact.as_ref().unwrap();
    assert_eq!(status(unassigned), ContactStatus::Pending);
    assert_eq!(unassigned.lapses, 3);
    assert_eq!(events[4].previous_operator_id, None);
    assert_eq!(candidate_ids(&events[4]).len(), 3, "exclusions forgotten");

    accept_where_it_is(&app, offered.id).await;
    for op in &ops {
        assert_eq!(stats_row(&app, op.id, source.id).await.unwrap().lapsed, 1);
    }
    app.assert_invariant().await;
}

async fn lapse_with_nobody_left_goes_pending_first_in_line_and_forgets_exclusions(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(1), None).await;
    let other = app.create_source("other").await;
    let ops = operators(&app, "op", 2, 1).await;
    let (a, b) = (&ops[0], &ops[1]);
    weights(&app, &source, &[a, b]).await;
    weights(&app, &other, &[b]).await;
    // B is full with a contact of the other source; the offer goes to A.
    let busy = register(&app, &other, "+15550000001").await;
    assert_eq!(busy.operator_id, Some(b.id));
    let offered = register(&app, &source, "+15550000002").await;
    assert_eq!(offered.operator_id, Some(a.id));
    // A leaves without taking it; a later contact waits.
    set_active(&app, a.id, false).await;
    let later = register(&app, &source, "+15550000003").await;
    assert_eq!(status(&later), ContactStatus::Pending);

    let pending = wait_for(&app, offered.id, Duration::from_secs(3), |c| c.lapses == 1).await;
    assert_eq!(status(&pending), ContactStatus::Pending);
    assert_eq!(pending.operator_id, None);
    assert_eq!(pending.assigned_at, None);
    assert_eq!(pending.accept_deadline, None);
    let events = events_of(&app, offered.id).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), ContactEventType::Unassigned);
    assert_eq!(last.previous_operator_id, Some(a.id));
    assert!(last.assignment.is_none());
    assert_eq!(app.get_operator(a.id).await.active_load, 0);
    app.assert_invariant().await;

    // Capacity appears: the lapsed contact is first in line, by its id.
    app.close(busy.id).await.unwrap();
    let served = app.get_contact(offered.id).await;
    assert_eq!(served.operator_id, Some(b.id));
    assert_eq!(
        status(&app.get_contact(later.id).await),
        ContactStatus::Pending
    );

    // Its exclusions were forgotten: lapsing from B it may go to A again.
    app.close(later.id).await.unwrap();
    set_active(&app, a.id, true).await;
    let back = wait_for(&app, offered.id, Duration::from_secs(3), |c| c.lapses == 2).await;
    assert_eq!(back.operator_id, Some(a.id));
    accept_where_it_is(&app, offered.id).await;
    app.assert_invariant().await;
}

async fn accept_racing_the_deadline_has_exactly_one_outcome(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(1), None).await;
    let ops = operators(&app, "op", 2, 50).await;
    weights(&app, &source, &[&ops[0], &ops[1]]).await;
    let mut offers = Vec::new();
    for index in 0..24 {
        offers.push(register(&app, &source, &format!("+1555100{index:04}")).await);
    }
    // Accept each offer around its deadline, while the lapse task runs.
    let deadline = offers
        .iter()
        .map(|c| micros(&c.accept_deadline))
        .max()
        .unwrap();
    let now = micros(&Some(prost_types::Timestamp::from(
        std::time::SystemTime::now(),
    )));
    tokio::time::sleep(Duration::from_micros(
        (deadline - now - 150_000).max(0).unsigned_abs(),
    ))
    .await;
    let mut tasks = JoinSet::new();
    for (index, offer) in offers.iter().enumerate() {
        let mut client = app.contacts.clone();
        let (id, operator_id) = (offer.id, offer.operator_id.unwrap());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * index as u64)).await;
            let outcome = client
                .accept_contact(pb::AcceptContactRequest { id, operator_id })
                .await;
            (id, operator_id, outcome.map(tonic::Response::into_inner))
        });
    }
    let mut accepted = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, operator_id, outcome) = joined.unwrap();
        let now = app.get_contact(id).await;
        match outcome {
            Ok(contact) => {
                accepted += 1;
                assert_eq!(contact.operator_id, Some(operator_id));
                assert_eq!(contact.lapses, 0, "an accepted offer did not lapse");
                assert!(contact.accepted_at.is_some() && contact.accept_deadline.is_none());
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(now.lapses >= 1, "refused only because it lapsed: {now:?}");
            }
        }
    }
    eprintln!("{accepted} of {} accepted before their lapse", offers.len());
    // Accepted offers stay put.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for offer in &offers {
        accept_where_it_is(&app, offer.id).await;
    }
    for offer in &offers {
        let events = events_of(&app, offer.id).await;
        let accepts = events
            .iter()
            .filter(|e| kind(e) == ContactEventType::Accepted)
            .count();
        assert_eq!(accepts, 1, "one accept per contact: {events:?}");
    }
    app.assert_invariant().await;
}

async fn accept_is_idempotent_and_refused_for_the_wrong_operator_or_status(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(60), None).await;
    let plain = app.create_source("plain").await;
    let ops = operators(&app, "op", 2, 1).await;
    weights(&app, &source, &[&ops[0]]).await;
    weights(&app, &plain, &[&ops[1]]).await;
    let offered = register(&app, &source, "+15550000001").await;
    let a = ops[0].id;

    assert_code(
        accept(&app, offered.id, ops[1].id).await,
        Code::FailedPrecondition,
        "operator_id",
    );
    assert_code(
        accept(&app, offered.id, 999_999).await,
        Code::NotFound,
        "operator 999999",
    );
    assert_code(
        accept(&app, 999_999, a).await,
        Code::NotFound,
        "contact 999999",
    );
    assert_eq!(
        app.get_contact(offered.id).await,
        offered,
        "refusals change nothing"
    );

    let accepted = accept(&app, offered.id, a).await.unwrap();
    assert!(accepted.accepted_at.is_some());
    assert_eq!(accepted.accept_deadline, None);
    assert_eq!(accepted.assigned_at, offered.assigned_at);
    let again = accept(&app, offered.id, a).await.unwrap();
    assert_eq!(again, accepted, "repeating it is harmless");
    let events = events_of(&app, offered.id).await;
    assert_eq!(events.len(), 2);
    assert_eq!(kind(&events[1]), ContactEventType::Accepted);
    assert_eq!(events[1].contact.as_ref(), Some(&accepted));

    // Not ACTIVE: PENDING, then CLOSED.
    let waiting = register(&app, &source, "+15550000002").await;
    assert_eq!(status(&waiting), ContactStatus::Pending);
    assert_code(
        accept(&app, waiting.id, a).await,
        Code::FailedPrecondition,
        "PENDING",
    );
    app.close(offered.id).await.unwrap();
    assert_code(
        accept(&app, offered.id, a).await,
        Code::FailedPrecondition,
        "CLOSED",
    );

    // Without an accept_timeout: no deadline, accepted_at is just recorded.
    let free = register(&app, &plain, "+15550000003").await;
    assert_eq!(free.accept_deadline, None);
    let accepted = accept(&app, free.id, ops[1].id).await.unwrap();
    assert!(accepted.accepted_at.is_some());
    assert_eq!(accepted.accept_deadline, None);
    app.assert_invariant().await;
}

async fn transfer_to_a_named_operator_or_by_draw(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(60), None).await;
    let ops = operators(&app, "op", 3, 5).await;
    let (a, b, outsider) = (&ops[0], &ops[1], &ops[2]);
    weights(&app, &source, &[a, b]).await;
    let offered = register(&app, &source, "+15550000001").await;
    let first = offered.operator_id.unwrap();
    accept(&app, offered.id, first).await.unwrap();

    // To a named operator outside the weight table.
    let moved = transfer(&app, offered.id, Some(outsider.id)).await.unwrap();
    assert_eq!(moved.operator_id, Some(outsider.id));
    assert_eq!(status(&moved), ContactStatus::Active);
    assert_eq!(moved.accepted_at, None, "accepted_at is cleared");
    assert!(micros(&moved.assigned_at) > micros(&offered.assigned_at));
    assert_eq!(
        micros(&moved.accept_deadline),
        micros(&moved.assigned_at) + 60_000_000
    );
    assert_eq!(app.get_contact(offered.id).await, moved);
    assert_eq!(app.get_operator(first).await.active_load, 0);
    assert_eq!(app.get_operator(outsider.id).await.active_load, 1);
    let events = events_of(&app, offered.id).await;
    let named = events.last().unwrap();
    assert_eq!(kind(named), ContactEventType::Assigned);
    assert_eq!(named.previous_operator_id, Some(first));
    assert_eq!(reason(named), AssignmentReason::Transfer);
    assert_eq!(named.assignment.as_ref().unwrap().operator_id, outsider.id);
    assert!(candidate_ids(named).is_empty());
    let row = stats_row(&app, outsider.id, source.id)
        .await
        .expect("a row for the new pair");
    assert_eq!((row.active, row.total), (1, 1));
    app.assert_invariant().await;

    // By draw: among the source's candidates other than the current one.
    let drawn = transfer(&app, offered.id, None).await.unwrap();
    let to = drawn.operator_id.unwrap();
    assert!(to == a.id || to == b.id);
    let events = events_of(&app, offered.id).await;
    let draw = events.last().unwrap();
    assert_eq!(reason(draw), AssignmentReason::WeightedDraw);
    assert_eq!(draw.previous_operator_id, Some(outsider.id));
    assert_eq!(candidate_ids(draw), [a.id, b.id]);
    let again = transfer(&app, offered.id, None).await.unwrap();
    assert_ne!(again.operator_id, Some(to), "never to the current operator");
    app.assert_invariant().await;

    // The old operator's freed slot goes to a pending contact at once.
    let plain = app.create_source("plain").await;
    let small = operators(&app, "small", 2, 1).await;
    weights(&app, &plain, &[&small[0]]).await;
    let held = register(&app, &plain, "+15550000002").await;
    let waiting = register(&app, &plain, "+15550000003").await;
    assert_eq!(status(&waiting), ContactStatus::Pending);
    transfer(&app, held.id, Some(small[1].id)).await.unwrap();
    let dispatched = app.get_contact(waiting.id).await;
    assert_eq!(dispatched.operator_id, Some(small[0].id));
    assert_eq!(
        dispatched.accept_deadline, None,
        "no timeout on this source"
    );
    app.assert_invariant().await;
}

async fn transfer_refusals_change_nothing(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(60), None).await;
    let ops = operators(&app, "op", 4, 1).await;
    let (a, full, inactive, spare) = (&ops[0], &ops[1], &ops[2], &ops[3]);
    weights(&app, &source, &[a]).await;
    let offered = register(&app, &source, "+15550000001").await;
    assert_eq!(offered.operator_id, Some(a.id));
    let other = app.create_source("other").await;
    weights(&app, &other, &[full]).await;
    register(&app, &other, "+15550000002").await;
    set_active(&app, inactive.id, false).await;
    let waiting = register(&app, &source, "+15550000003").await;
    assert_eq!(status(&waiting), ContactStatus::Pending);
    let closed = register(&app, &other, "+15550000004").await;
    app.close(closed.id).await.unwrap();

    let contacts = app.all_contacts().await;
    let operators_before = app.all_operators().await;
    let events = app.all_events(Default::default()).await.len();
    let id = offered.id;
    assert_code(
        transfer(&app, 999_999, None).await,
        Code::NotFound,
        "contact 999999",
    );
    assert_code(
        transfer(&app, id, Some(999_999)).await,
        Code::NotFound,
        "operator 999999",
    );
    assert_code(
        transfer(&app, id, Some(a.id)).await,
        Code::FailedPrecondition,
        "operator_id",
    );
    assert_code(
        transfer(&app, id, Some(full.id)).await,
        Code::FailedPrecondition,
        "max_load",
    );
    assert_code(
        transfer(&app, id, Some(inactive.id)).await,
        Code::FailedPrecondition,
        "not active",
    );
    assert_code(
        transfer(&app, id, None).await,
        Code::FailedPrecondition,
        "no other operator",
    );
    assert_code(
        transfer(&app, waiting.id, Some(spare.id)).await,
        Code::FailedPrecondition,
        "PENDING",
    );
    assert_code(
        transfer(&app, closed.id, Some(spare.id)).await,
        Code::FailedPrecondition,
        "CLOSED",
    );
    assert_eq!(app.all_contacts().await, contacts);
    assert_eq!(app.all_operators().await, operators_before);
    assert_eq!(app.all_events(Default::default()).await.len(), events);
    app.assert_invariant().await;
}

async fn release_moves_unaccepted_or_all_contacts(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(60), None).await;
    let only_a = app.create_source("only-a").await;
    let ops = operators(&app, "op", 2, 5).await;
    let (a, b) = (&ops[0], &ops[1]);
    weights(&app, &source, &[a]).await;
    weights(&app, &only_a, &[a]).await;
    let mut held = Vec::new();
    for index in 0..3 {
        held.push(register(&app, &source, &format!("+1555000000{index}")).await);
    }
    let alone = register(&app, &only_a, "+15550000009").await;
    accept(&app, held[1].id, a.id).await.unwrap();
    weights(&app, &source, &[a, b]).await;
    set_active(&app, a.id, false).await;
    assert_code(
        release(&app, 999_999, false).await,
        Code::NotFound,
        "operator 999999",
    );

    let moved = release(&app, a.id, false).await.unwrap();
    let ids: Vec<i64> = moved.iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        [held[0].id, held[2].id, alone.id],
        "unaccepted ones, by id"
    );
    for contact in &moved[..2] {
        assert_eq!(contact.operator_id, Some(b.id));
        assert_eq!(contact.lapses, 0, "a release is no lapse");
        assert_eq!(
            micros(&contact.accept_deadline),
            micros(&contact.assigned_at) + 60_000_000
        );
        assert_eq!(&app.get_contact(contact.id).await, contact);
        let events = events_of(&app, contact.id).await;
        let last = events.last().unwrap();
        assert_eq!(last.previous_operator_id, Some(a.id));
        assert_eq!(reason(last), AssignmentReason::WeightedDraw);
        assert_eq!(candidate_ids(last), [b.id]);
    }
    // Nobody else serves its source: PENDING.
    assert_eq!(status(&moved[2]), ContactStatus::Pending);
    assert_eq!(moved[2].operator_id, None);
    assert_eq!(moved[2].lapses, 0);
    let last = events_of(&app, alone.id).await.pop().unwrap();
    assert_eq!(kind(&last), ContactEventType::Unassigned);
    assert_eq!(app.get_contact(held[1].id).await.operator_id, Some(a.id));
    app.assert_invariant().await;

    let moved = release(&app, a.id, true).await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].id, held[1].id);
    assert_eq!(moved[0].operator_id, Some(b.id));
    assert_eq!(moved[0].accepted_at, None);
    assert_eq!(app.get_operator(a.id).await.active_load, 0);
    assert!(release(&app, a.id, true).await.unwrap().is_empty());
    let row = stats_row(&app, a.id, source.id).await;
    assert!(row.is_none(), "A holds nothing and lapsed nothing: {row:?}");
    app.assert_invariant().await;
}

async fn sticky_routing_returns_a_lead_to_its_operator_within_the_window(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", None, seconds(3_600)).await;
    let plain = app.create_source("plain").await;
    let ops = operators(&app, "op", 4, 50).await;
    weights(&app, &source, &[&ops[0], &ops[1], &ops[2], &ops[3]]).await;
    weights(&app, &plain, &[&ops[0], &ops[1], &ops[2], &ops[3]]).await;

    let first = register(&app, &source, "+15550000001").await;
    let operator = first.operator_id.unwrap();
    app.close(first.id).await.unwrap();
    for _ in 0..6 {
        let again = register(&app, &source, "+15550000001").await;
        assert_eq!(again.operator_id, Some(operator), "the same operator");
        let registered = &events_of(&app, again.id).await[0];
        assert_eq!(reason(registered), AssignmentReason::Sticky);
        assert_eq!(
            registered.assignment.as_ref().unwrap().operator_id,
            operator
        );
        assert!(candidate_ids(registered).is_empty());
    }
    // From another source: the lead's most recent assigned contact counts.
    let elsewhere = register(&app, &plain, "+15550000002").await;
    let there = elsewhere.operator_id.unwrap();
    let here = register(&app, &source, "+15550000002").await;
    assert_eq!(here.operator_id, Some(there));
    assert_eq!(
        reason(&events_of(&app, here.id).await[0]),
        AssignmentReason::Sticky
    );
    // A source without a sticky window draws.
    let drawn = register(&app, &plain, "+15550000002").await;
    assert_eq!(
        reason(&events_of(&app, drawn.id).await[0]),
        AssignmentReason::WeightedDraw
    );
    app.assert_invariant().await;
}

async fn sticky_routing_falls_back_to_the_draw(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let short = routed_source(&app, "short", None, seconds(1)).await;
    let long = routed_source(&app, "long", None, seconds(3_600)).await;
    let ops = operators(&app, "op", 3, 3).await;
    let (a, b, outsider) = (&ops[0], &ops[1], &ops[2]);
    weights(&app, &short, &[a, b]).await;
    weights(&app, &long, &[a, b]).await;
    let drawn = |contact: &pb::Contact| {
        let app = &app;
        let id = contact.id;
        async move { reason(&events_of(app, id).await[0]) == AssignmentReason::WeightedDraw }
    };

    // Outside the window: a draw.
    let old = register(&app, &short, "+15550000001").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let later = register(&app, &short, "+15550000001").await;
    assert!(drawn(&later).await);
    app.close(old.id).await.unwrap();
    app.close(later.id).await.unwrap();

    // An inactive operator: a draw, to the other one.
    let first = register(&app, &long, "+15550000002").await;
    let holder = first.operator_id.unwrap();
    let other = if holder == a.id { b.id } else { a.id };
    set_active(&app, holder, false).await;
    let again = register(&app, &long, "+15550000002").await;
    assert_eq!(again.operator_id, Some(other));
    assert!(drawn(&again).await);
    set_active(&app, holder, true).await;
    app.close(again.id).await.unwrap();

    // A full operator: a draw. The most recent assigned contact is `again`
    // (closed, with `other`): the next goes to `other` by stickiness, then
    // `other` fills up with another lead's contact.
    let third = register(&app, &long, "+15550000002").await;
    assert_eq!(third.operator_id, Some(other), "sticky to the latest");
    let mut filler = 0;
    while app.get_operator(other).await.active_load < 3 {
        filler += 1;
        let contact = register(&app, &long, &format!("+1555900{filler:04}")).await;
        if contact.operator_id != Some(other) {
            app.close(contact.id).await.unwrap();
        }
    }
    let full = register(&app, &long, "+15550000002").await;
    assert_eq!(full.operator_id, Some(holder));
    assert!(drawn(&full).await);

    // Not in this source's weight table: a draw.
    let plain = app.create_source("plain").await;
    weights(&app, &plain, &[outsider]).await;
    register(&app, &plain, "+15550000003").await;
    let back = register(&app, &long, "+15550000003").await;
    assert_ne!(back.operator_id, Some(outsider.id));
    assert!(drawn(&back).await);

    // Pending dispatch does not apply stickiness: a draw when capacity appears.
    for contact in app.all_contacts().await {
        if status(&contact) == ContactStatus::Active && contact.source_id == long.id {
            app.close(contact.id).await.unwrap();
        }
    }
    set_active(&app, a.id, false).await;
    set_active(&app, b.id, false).await;
    let waiting = register(&app, &long, "+15550000002").await;
    assert_eq!(status(&waiting), ContactStatus::Pending);
    set_active(&app, other, true).await;
    let events = events_of(&app, waiting.id).await;
    assert_eq!(kind(&events[1]), ContactEventType::Assigned);
    assert_eq!(reason(&events[1]), AssignmentReason::WeightedDraw);
    app.assert_invariant().await;
}

async fn create_source_checks_the_routing_settings(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let create = |bot_id: &str, accept_timeout, sticky_window| {
        let mut client = app.sources.clone();
        let request = pb::CreateSourceRequest {
            bot_id: bot_id.into(),
            name: String::new(),
            accept_timeout,
            sticky_window,
        };
        async move {
            client
                .create_source(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let half = Some(prost_types::Duration {
        seconds: 0,
        nanos: 500_000_000,
    });
    let day_and_a_bit = Some(prost_types::Duration {
        seconds: 86_400,
        nanos: 1,
    });
    assert_code(
        create("a", seconds(0), None).await,
        Code::InvalidArgument,
        "accept_timeout",
    );
    assert_code(
        create("a", half, None).await,
        Code::InvalidArgument,
        "accept_timeout",
    );
    assert_code(
        create("a", day_and_a_bit, None).await,
        Code::InvalidArgument,
        "accept_timeout",
    );
    assert_code(
        create("a", seconds(-5), None).await,
        Code::InvalidArgument,
        "accept_timeout",
    );
    assert_code(
        create("a", None, seconds(0)).await,
        Code::InvalidArgument,
        "sticky_window",
    );
    assert_code(
        create("a", None, seconds(367 * 86_400)).await,
        Code::InvalidArgument,
        "sticky_window",
    );
    assert!(app.all_sources().await.is_empty(), "nothing created");

    let edges = create("a", seconds(86_400), seconds(366 * 86_400))
        .await
        .unwrap();
    assert_eq!(edges.accept_timeout, seconds(86_400));
    assert_eq!(edges.sticky_window, seconds(366 * 86_400));
    let precise = Some(prost_types::Duration {
        seconds: 1,
        nanos: 250_000_000,
    });
    let small = create("b", seconds(1), precise).await.unwrap();
    assert_eq!(small.accept_timeout, seconds(1));
    assert_eq!(small.sticky_window, precise);
    let off = create("c", None, None).await.unwrap();
    assert_eq!((off.accept_timeout, off.sticky_window), (None, None));
    assert_eq!(app.all_sources().await, [edges, small, off]);
}

async fn update_source_changes_the_fields_present(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(60), seconds(3_600)).await;
    let ops = operators(&app, "op", 1, 10).await;
    weights(&app, &source, &[&ops[0]]).await;
    let update = |request: pb::UpdateSourceRequest| update_source(&app, request);

    let none = pb::UpdateSourceRequest {
        id: source.id,
        ..Default::default()
    };
    assert_code(
        update(none.clone()).await,
        Code::InvalidArgument,
        "at least one",
    );
    assert_code(
        update(pb::UpdateSourceRequest {
            id: 999_999,
            ..none.clone()
        })
        .await,
        Code::NotFound,
        "source 999999",
    );
    assert_code(
        update(pb::UpdateSourceRequest {
            id: 999_999,
            name: Some("x".into()),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "source 999999",
    );
    assert_code(
        update(pb::UpdateSourceRequest {
            accept_timeout: seconds(86_401),
            ..none.clone()
        })
        .await,
        Code::InvalidArgument,
        "accept_timeout",
    );
    assert_code(
        update(pb::UpdateSourceRequest {
            sticky_window: seconds(-1),
            ..none.clone()
        })
        .await,
        Code::InvalidArgument,
        "sticky_window",
    );
    assert_eq!(
        app.all_sources().await,
        std::slice::from_ref(&source),
        "refusals change nothing"
    );

    let waiting = register(&app, &source, "+15550000001").await;
    let renamed = update(pb::UpdateSourceRequest {
        name: Some(" Renamed ".into()),
        ..none.clone()
    })
    .await
    .unwrap();
    assert_eq!(renamed.name, "Renamed");
    assert_eq!(renamed.accept_timeout, seconds(60), "absent fields stay");
    assert_eq!(renamed.sticky_window, seconds(3_600));

    // A new timeout applies to contacts assigned from now on.
    let shorter = update(pb::UpdateSourceRequest {
        accept_timeout: seconds(30),
        ..none.clone()
    })
    .await
    .unwrap();
    assert_eq!(shorter.accept_timeout, seconds(30));
    assert_eq!(shorter.name, "Renamed");
    assert_eq!(
        app.get_contact(waiting.id).await,
        waiting,
        "it keeps its deadline"
    );
    let next = register(&app, &source, "+15550000002").await;
    assert_eq!(
        micros(&next.accept_deadline),
        micros(&next.assigned_at) + 30_000_000
    );

    // Zero turns a feature off.
    let off = update(pb::UpdateSourceRequest {
        sticky_window: seconds(0),
        ..none.clone()
    })
    .await
    .unwrap();
    assert_eq!(off.sticky_window, None);
    assert_eq!(off.accept_timeout, seconds(30));
    let got = app
        .sources
        .clone()
        .get_source(pb::GetSourceRequest {
            key: Some(pb::get_source_request::Key::Id(source.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, off);
    let again = register(&app, &source, "+15550000001").await;
    assert_eq!(
        reason(&events_of(&app, again.id).await[0]),
        AssignmentReason::WeightedDraw,
        "no sticky routing"
    );
    app.assert_invariant().await;
}

async fn turning_accept_timeout_off_keeps_waiting_contacts_without_deadline(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = routed_source(&app, "bot", seconds(1), None).await;
    let ops = operators(&app, "op", 2, 10).await;
    weights(&app, &source, &[&ops[0], &ops[1]]).await;
    let mut waiting = Vec::new();
    for index in 0..4 {
        waiting.push(register(&app, &source, &format!("+1555000000{index}")).await);
    }
    let off = update_source(
        &app,
        pb::UpdateSourceRequest {
            id: source.id,
            accept_timeout: seconds(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(off.accept_timeout, None);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for contact in &waiting {
        let now = app.get_contact(contact.id).await;
        assert_eq!(
            now.operator_id, contact.operator_id,
            "stays with its operator"
        );
        assert_eq!(now.assigned_at, contact.assigned_at);
        assert_eq!(now.lapses, 0);
        assert_eq!(now.accept_deadline, None);
    }
    let later = register(&app, &source, "+15550000009").await;
    assert_eq!(later.accept_deadline, None);
    app.assert_invariant().await;
}

/// Two servers on one database, 1 s deadlines, and 160 contacts lapsing,
/// being accepted, transferred, released and closed at once.
async fn two_replicas_lapse_accept_transfer_and_close_at_once(db: TestDb) {
    let first = TestApp::spawn(&db).await;
    let second = TestApp::spawn(&db).await;
    let apps = [&first, &second];
    let source = routed_source(&first, "bot", seconds(1), None).await;
    let ops = operators(&first, "op", 6, 25).await;
    let refs: Vec<&pb::Operator> = ops.iter().collect();
    weights(&first, &source, &refs).await;

    let mut tasks = JoinSet::new();
    for index in 0..160 {
        let mut client = apps[index % 2].contacts.clone();
        let source_id = source.id;
        tasks.spawn(async move {
            client
                .register_contact(pb::RegisterContactRequest {
                    source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                    lead: Some(phone_lead(&format!("+1555200{index:04}"))),
                    request_id: String::new(),
                })
                .await
                .expect("register")
                .into_inner()
                .contact
                .unwrap()
                .id
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    ids.sort_unstable();

    // For three seconds, the first 100 contacts are touched now and then by
    // one of the replicas while the lapse tasks of both run; the others are
    // left to lapse again and again.
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..8usize {
        let contacts = apps[worker % 2].contacts.clone();
        let operators = apps[worker % 2].operators.clone();
        let ids = ids[..100].to_vec();
        let op_ids: Vec<i64> = ops.iter().map(|op| op.id).collect();
        workers.spawn(async move {
            let mut contacts = contacts;
            let mut operators = operators;
            let mut step = worker;
            // A release moves every waiting contact of an operator (and so
            // renews its deadline): a few, from one worker.
            let mut releases = 0;
            while started.elapsed() < Duration::from_secs(3) {
                step += 7;
                let id = ids[step % ids.len()];
                let Ok(contact) = contacts.get_contact(pb::GetContactRequest { id }).await else {
                    continue;
                };
                let contact = contact.into_inner();
                let outcome = match step % 11 {
                    0..=2 => contacts
                        .accept_contact(pb::AcceptContactRequest {
                            id,
                            operator_id: contact.operator_id.unwrap_or(0),
                        })
                        .await
                        .map(drop),
                    3..=4 => contacts
                        .transfer_contact(pb::TransferContactRequest {
                            id,
                            operator_id: Some(op_ids[step % op_ids.len()]),
                        })
                        .await
                        .map(drop),
                    5..=6 => contacts
                        .transfer_contact(pb::TransferContactRequest {
                            id,
                            operator_id: None,
                        })
                        .await
                        .map(drop),
                    7 => contacts
                        .close_contact(pb::CloseContactRequest { id })
                        .await
                        .map(drop),
                    8 if worker == 0
                        && started.elapsed() > Duration::from_millis(800 * (releases + 1)) =>
                    {
                        releases += 1;
                        operators
                            .release_operator_contacts(pb::ReleaseOperatorContactsRequest {
                                operator_id: op_ids[step % op_ids.len()],
                                include_accepted: releases % 2 == 0,
                            })
                            .await
                            .map(drop)
                    }
                    _ => Ok(()),
                };
                if let Err(status) = outcome {
                    assert!(
                        matches!(status.code(), Code::FailedPrecondition | Code::NotFound),
                        "unexpected {status:?}"
                    );
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let lapsed: i32 = first.all_contacts().await.iter().map(|c| c.lapses).sum();
    assert!(lapsed > 50, "contacts lapsed meanwhile: {lapsed}");

    // Stop the lapses, let what is in flight land, then check everything.
    update_source(
        &second,
        pb::UpdateSourceRequest {
            id: source.id,
            accept_timeout: seconds(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let active = first.assert_invariant().await;
    let contacts = first.all_contacts().await;
    assert!(contacts.iter().all(|c| c.accept_deadline.is_none()));
    assert_eq!(
        active,
        contacts
            .iter()
            .filter(|c| status(c) == ContactStatus::Active)
            .count()
    );
    second.assert_invariant().await;
}
