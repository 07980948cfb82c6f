use std::time::{Duration, Instant};

use minicrm::proto::{
    self as pb, AssignmentReason, ContactEventType, ContactStatus,
    contact_service_client::ContactServiceClient,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::helpers::{TestApp, TestDb, assert_code, phone_lead};

crate::backend_tests!(
    every_change_records_its_event_with_the_contact_after_it,
    a_weighted_draw_records_every_candidate_as_it_was,
    an_idempotent_retry_records_nothing,
    events_filter_by_contact_operator_and_source_and_paginate,
    filters_naming_nothing_are_not_found,
    watch_replays_then_continues_live,
    watch_without_a_start_begins_with_the_next_event,
    watch_filters_by_operator_and_source,
    a_slow_watcher_catches_up_from_the_database,
    events_no_longer_retained_are_out_of_range,
    shutdown_ends_watch_streams_with_unavailable,
    resuming_across_two_servers_misses_and_repeats_nothing,
);

fn kinds(events: &[pb::ContactEvent]) -> Vec<ContactEventType> {
    events
        .iter()
        .map(|event| ContactEventType::try_from(event.r#type).unwrap())
        .collect()
}

fn of_contact(contact_id: i64) -> pb::ListContactEventsRequest {
    pb::ListContactEventsRequest {
        contact_id: Some(contact_id),
        ..Default::default()
    }
}

async fn watch(
    app: &TestApp,
    request: pb::WatchContactEventsRequest,
) -> Streaming<pb::ContactEvent> {
    app.contacts
        .clone()
        .watch_contact_events(request)
        .await
        .expect("watch")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::ContactEvent>) -> pb::ContactEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

async fn every_change_records_its_event_with_the_contact_after_it(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 1).await;
    let first = app
        .register(source.id, phone_lead("+15550001"), "")
        .await
        .unwrap();
    let second = app
        .register(source.id, phone_lead("+15550002"), "")
        .await
        .unwrap();
    let (first, second) = (first.contact.unwrap(), second.contact.unwrap());
    assert_eq!(second.status, ContactStatus::Pending as i32);
    app.close(first.id).await.unwrap();
    app.close(second.id).await.unwrap();

    let history = app.all_events(of_contact(first.id)).await;
    assert_eq!(
        kinds(&history),
        [ContactEventType::Registered, ContactEventType::Closed]
    );
    assert_eq!(history[0].contact.as_ref(), Some(&first));
    assert_eq!(history[1].contact, Some(app.get_contact(first.id).await));
    assert_eq!(
        history[1].contact.as_ref().unwrap().operator_id,
        Some(operators[0].id)
    );
    assert!(history[1].assignment.is_none());
    assert!(
        history
            .iter()
            .all(|event| event.previous_operator_id.is_none())
    );

    // Registered PENDING, assigned by the close's dispatch, then closed.
    let history = app.all_events(of_contact(second.id)).await;
    assert_eq!(
        kinds(&history),
        [
            ContactEventType::Registered,
            ContactEventType::Assigned,
            ContactEventType::Closed
        ]
    );
    assert_eq!(history[0].contact.as_ref(), Some(&second));
    assert!(
        history[0].assignment.is_none(),
        "a pending contact has no operator"
    );
    let assigned = history[1].contact.as_ref().unwrap();
    assert_eq!(assigned.status, ContactStatus::Active as i32);
    assert_eq!(assigned.operator_id, Some(operators[0].id));
    let assignment = history[1].assignment.as_ref().expect("the why");
    assert_eq!(assignment.reason, AssignmentReason::WeightedDraw as i32);
    assert_eq!(assignment.operator_id, operators[0].id);
    assert_eq!(history[2].contact, Some(app.get_contact(second.id).await));

    // Ids increase in the order the changes were made; times are set.
    let all = app.all_events(Default::default()).await;
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(all.iter().all(|event| event.id > 0 && event.time.is_some()));
    app.assert_invariant().await;
}

async fn a_weighted_draw_records_every_candidate_as_it_was(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let light = app.create_operator("light", 3).await;
    let heavy = app.create_operator("heavy", 2).await;
    let full = app.create_operator("full", 0).await;
    app.set_weights(source.id, &[(light.id, 1), (heavy.id, 7), (full.id, 5)])
        .await;
    let mut loads = std::collections::HashMap::from([(light.id, 0), (heavy.id, 0)]);
    for index in 0..5 {
        let registered = app
            .register(source.id, phone_lead(&format!("+1555100{index}")), "")
            .await
            .unwrap();
        let contact = registered.contact.unwrap();
        let history = app.all_events(of_contact(contact.id)).await;
        let assignment = history[0].assignment.clone().expect("the why");
        assert_eq!(assignment.reason, AssignmentReason::WeightedDraw as i32);
        assert_eq!(Some(assignment.operator_id), contact.operator_id);
        // Every candidate with room, with its weight and load just before
        // the draw; the operator with max_load 0 never is one.
        let mut expected: Vec<pb::Candidate> = [(light.id, 1, 3), (heavy.id, 7, 2)]
            .into_iter()
            .filter(|&(id, _, max)| loads[&id] < max)
            .map(|(operator_id, weight, max_load)| pb::Candidate {
                operator_id,
                weight,
                active_load: loads[&operator_id],
                max_load,
            })
            .collect();
        expected.sort_by_key(|candidate| candidate.operator_id);
        let mut candidates = assignment.candidates.clone();
        candidates.sort_by_key(|candidate| candidate.operator_id);
        assert_eq!(candidates, expected, "registration {index}");
        *loads.get_mut(&assignment.operator_id).unwrap() += 1;
    }
    app.assert_invariant().await;
}

async fn an_idempotent_retry_records_nothing(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 1, 5).await;
    let first = app
        .register(source.id, phone_lead("+15550001"), "key-1")
        .await
        .unwrap();
    let retry = app
        .register(source.id, phone_lead("+15550001"), "key-1")
        .await
        .unwrap();
    assert_eq!(first, retry);
    let events = app.all_events(Default::default()).await;
    assert_eq!(kinds(&events), [ContactEventType::Registered]);
    app.assert_invariant().await;
}

async fn events_filter_by_contact_operator_and_source_and_paginate(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (a, a_operators) = app.source_with_operators("a", 1, 10).await;
    let (b, b_operators) = app.source_with_operators("b", 1, 10).await;
    let mut contacts = Vec::new();
    for index in 0..6 {
        let source = if index % 2 == 0 { &a } else { &b };
        let registered = app
            .register(source.id, phone_lead(&format!("+1555200{index}")), "")
            .await
            .unwrap();
        contacts.push(registered.contact.unwrap());
    }
    app.close(contacts[0].id).await.unwrap();

    let of_source = app
        .all_events(pb::ListContactEventsRequest {
            source_id: Some(b.id),
            ..Default::default()
        })
        .await;
    assert_eq!(of_source.len(), 3);
    assert!(
        of_source
            .iter()
            .all(|e| e.contact.as_ref().unwrap().source_id == b.id)
    );
    let of_operator = app
        .all_events(pb::ListContactEventsRequest {
            operator_id: Some(a_operators[0].id),
            ..Default::default()
        })
        .await;
    assert_eq!(of_operator.len(), 4, "3 registrations and a close");
    let both = app
        .all_events(pb::ListContactEventsRequest {
            operator_id: Some(b_operators[0].id),
            source_id: Some(a.id),
            ..Default::default()
        })
        .await;
    assert!(both.is_empty(), "filters combine with AND");
    assert_eq!(app.all_events(of_contact(contacts[0].id)).await.len(), 2);

    // Pages of 2, by id, to the end; then an empty token.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .contacts
            .clone()
            .list_contact_events(pb::ListContactEventsRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.iter().map(|event| event.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, (1..=7).collect::<Vec<i64>>());
    let bad = app
        .contacts
        .clone()
        .list_contact_events(pb::ListContactEventsRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await;
    assert_code(bad, Code::InvalidArgument, "page_token");
    let negative = app
        .contacts
        .clone()
        .list_contact_events(pb::ListContactEventsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await;
    assert_code(negative, Code::InvalidArgument, "page_size");
}

async fn filters_naming_nothing_are_not_found(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut client = app.contacts.clone();
    for (request, what) in [
        (of_contact(404), "contact 404"),
        (
            pb::ListContactEventsRequest {
                operator_id: Some(404),
                ..Default::default()
            },
            "operator 404",
        ),
        (
            pb::ListContactEventsRequest {
                source_id: Some(404),
                ..Default::default()
            },
            "source 404",
        ),
    ] {
        assert_code(
            client.list_contact_events(request).await,
            Code::NotFound,
            what,
        );
    }
    for (request, what) in [
        (
            pb::WatchContactEventsRequest {
                operator_id: Some(404),
                ..Default::default()
            },
            "operator 404",
        ),
        (
            pb::WatchContactEventsRequest {
                source_id: Some(404),
                ..Default::default()
            },
            "source 404",
        ),
    ] {
        let answer = client.watch_contact_events(request).await.map(drop);
        assert_code(answer, Code::NotFound, what);
    }
    let negative = client
        .watch_contact_events(pb::WatchContactEventsRequest {
            after_event_id: Some(-1),
            ..Default::default()
        })
        .await
        .map(drop);
    assert_code(negative, Code::InvalidArgument, "after_event_id");
}

async fn watch_replays_then_continues_live(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 1, 10).await;
    for index in 0..3 {
        app.register(source.id, phone_lead(&format!("+1555300{index}")), "")
            .await
            .unwrap();
    }
    let mut stream = watch(
        &app,
        pb::WatchContactEventsRequest {
            after_event_id: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next(&mut stream).await.id, 2);
    assert_eq!(next(&mut stream).await.id, 3);

    // Live: an event written by this server reaches the stream at once.
    let mut slowest = Duration::ZERO;
    for index in 0..5 {
        let started = Instant::now();
        let registered = app
            .register(source.id, phone_lead(&format!("+1555310{index}")), "")
            .await
            .unwrap();
        let event = next(&mut stream).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(event.id, 4 + index);
        assert_eq!(event.contact, registered.contact);
    }
    eprintln!("slowest live event after its call returned: {slowest:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
}

async fn watch_without_a_start_begins_with_the_next_event(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 1, 10).await;
    app.register(source.id, phone_lead("+15554000"), "")
        .await
        .unwrap();
    let mut stream = watch(&app, Default::default()).await;
    app.register(source.id, phone_lead("+15554001"), "")
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.id, 2);
}

async fn watch_filters_by_operator_and_source(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (a, _) = app.source_with_operators("a", 1, 10).await;
    let (b, b_operators) = app.source_with_operators("b", 1, 10).await;
    let mut by_source = watch(
        &app,
        pb::WatchContactEventsRequest {
            source_id: Some(b.id),
            ..Default::default()
        },
    )
    .await;
    let mut by_operator = watch(
        &app,
        pb::WatchContactEventsRequest {
            operator_id: Some(b_operators[0].id),
            ..Default::default()
        },
    )
    .await;
    app.register(a.id, phone_lead("+15555000"), "")
        .await
        .unwrap();
    let wanted = app
        .register(b.id, phone_lead("+15555001"), "")
        .await
        .unwrap();
    for stream in [&mut by_source, &mut by_operator] {
        let event = next(stream).await;
        assert_eq!(event.contact, wanted.contact);
    }
}

async fn a_slow_watcher_catches_up_from_the_database(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 2, 1_000).await;
    let mut stream = watch(&app, Default::default()).await;
    // Far more events than a stream buffers, while nobody reads it.
    let calls = 600;
    let mut tasks = Vec::new();
    for index in 0..calls {
        let client = app.contacts.clone();
        let source_id = source.id;
        tasks.push(tokio::spawn(async move {
            let mut client: ContactServiceClient<_> = client;
            client
                .register_contact(pb::RegisterContactRequest {
                    source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                    lead: Some(phone_lead(&format!("+1556{index:06}"))),
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for id in 1..=calls {
        assert_eq!(next(&mut stream).await.id, id as i64);
    }
    app.assert_invariant().await;
}

async fn events_no_longer_retained_are_out_of_range(db: TestDb) {
    let app = TestApp::spawn_with(&db, |settings| {
        settings.events.event_retention = Duration::from_secs(1);
    })
    .await;
    let (source, _) = app.source_with_operators("bot", 1, 10).await;
    for index in 0..3 {
        app.register(source.id, phone_lead(&format!("+1555600{index}")), "")
            .await
            .unwrap();
    }
    // Retention runs every second with a one-second retention.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.all_events(Default::default()).await.is_empty() {
        assert!(Instant::now() < deadline, "old events were not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = app.contacts.clone();
    let resumed = client
        .watch_contact_events(pb::WatchContactEventsRequest {
            after_event_id: Some(1),
            ..Default::default()
        })
        .await
        .map(drop);
    assert_code(resumed, Code::OutOfRange, "retained");
    let listed = client
        .list_contact_events(pb::ListContactEventsRequest {
            page_token: minicrm::domain::page_token_after(1),
            ..Default::default()
        })
        .await;
    assert_code(listed, Code::OutOfRange, "retained");
    // After the last event: nothing is missed, so that is fine.
    let mut stream = watch(
        &app,
        pb::WatchContactEventsRequest {
            after_event_id: Some(3),
            ..Default::default()
        },
    )
    .await;
    app.register(source.id, phone_lead("+15556010"), "")
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.id, 4);
    let beyond = client
        .watch_contact_events(pb::WatchContactEventsRequest {
            after_event_id: Some(99),
            ..Default::default()
        })
        .await
        .map(drop);
    assert_code(beyond, Code::OutOfRange, "99");
}

async fn shutdown_ends_watch_streams_with_unavailable(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut stream = watch(&app, Default::default()).await;
    let client = app.contacts.clone();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopped.is_ok(), "the server stopped with a stream open");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends");
    match ended {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    drop(client);
}

/// Two servers on one database register at once while a reader follows the
/// events, reconnecting every few events to the other server with the last
/// id it saw: it must see every event exactly once, in id order.
async fn resuming_across_two_servers_misses_and_repeats_nothing(db: TestDb) {
    let servers = [TestApp::spawn(&db).await, TestApp::spawn(&db).await];
    let (source, _) = servers[0].source_with_operators("bot", 3, 100_000).await;
    let per_server = 150;
    let mut writers = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        for task in 0..3 {
            let client = server.contacts.clone();
            let source_id = source.id;
            writers.push(tokio::spawn(async move {
                let mut client = client;
                for call in 0..per_server / 3 {
                    client
                        .register_contact(pb::RegisterContactRequest {
                            source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                            lead: Some(phone_lead(&format!("+1557{index}{task}{call:05}"))),
                            request_id: String::new(),
                        })
                        .await
                        .unwrap();
                }
            }));
        }
    }
    let total = (per_server / 3 * 3 * servers.len()) as i64;
    let mut seen: Vec<i64> = Vec::new();
    let mut reconnections = 0;
    while (seen.len() as i64) < total {
        let server = &servers[reconnections % 2];
        reconnections += 1;
        let mut stream = watch(
            server,
            pb::WatchContactEventsRequest {
                after_event_id: Some(seen.last().copied().unwrap_or(0)),
                ..Default::default()
            },
        )
        .await;
        for _ in 0..7 {
            if seen.len() as i64 == total {
                break;
            }
            seen.push(next(&mut stream).await.id);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(seen, (1..=total).collect::<Vec<i64>>(), "gaps or repeats");
    assert!(reconnections > 10);
    servers[1].assert_invariant().await;
}
