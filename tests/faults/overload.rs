//! Overload and client deadlines, on a server whose writer is plugged by a
//! lock held from outside: beyond --max-queued-writes a write answers
//! RESOURCE_EXHAUSTED at once and writes nothing; a call whose deadline
//! passes while it waits answers DEADLINE_EXCEEDED and is not carried out.

use std::time::{Duration, Instant};

use minicrm::proto as pb;
use tonic::Code;

use crate::helpers::{OutsideLock, TestApp, TestDb, phone_lead};

crate::backend_tests!(
    beyond_max_queued_writes_calls_are_refused_at_once,
    a_call_whose_deadline_passes_while_it_waits_is_not_carried_out,
);

const MAX_QUEUED: u32 = 4;
const CALLS: usize = 40;

fn registration(source_id: i64, index: usize, key: &str) -> pb::RegisterContactRequest {
    pb::RegisterContactRequest {
        source: Some(pb::register_contact_request::Source::SourceId(source_id)),
        lead: Some(phone_lead(&format!("+1555{index:07}"))),
        request_id: key.into(),
    }
}

async fn beyond_max_queued_writes_calls_are_refused_at_once(db: TestDb) {
    let app = TestApp::spawn_with(&db, |settings| {
        settings.limits.max_queued_writes = MAX_QUEUED;
        settings.limits.db_timeout = Duration::from_secs(10);
    })
    .await;
    let (source, operators) = app.source_with_operators("bot", 1, 1_000).await;
    let lock = OutsideLock::take(&db, operators[0].id);
    // The writer takes this one and waits for the lock; the queue is empty.
    let mut client = app.contacts.clone();
    let first = tokio::spawn(async move {
        client
            .register_contact(registration(source.id, 0, "first"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut calls = Vec::new();
    for index in 1..=CALLS {
        let mut client = app.contacts.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = client
                .register_contact(registration(source.id, index, &format!("key-{index}")))
                .await;
            (index, answer.map(|r| r.into_inner()), started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Refusals come at once, before the lock goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release();
    first.await.unwrap().expect("the first call goes through");

    let (mut accepted, mut refused, mut slowest_refusal) = (Vec::new(), Vec::new(), Duration::ZERO);
    for call in calls {
        let (index, answer, elapsed) = call.await.unwrap();
        match answer {
            Ok(_) => accepted.push(format!("key-{index}")),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                slowest_refusal = slowest_refusal.max(elapsed);
                refused.push(format!("key-{index}"));
            }
        }
    }
    eprintln!(
        "overload: --max-queued-writes {MAX_QUEUED}, {CALLS} calls behind a plugged writer: {} \
         accepted, {} RESOURCE_EXHAUSTED, the slowest refusal in {slowest_refusal:?}",
        accepted.len(),
        refused.len()
    );
    assert_eq!(accepted.len(), MAX_QUEUED as usize, "as many as may wait");
    assert_eq!(refused.len(), CALLS - MAX_QUEUED as usize);
    assert!(slowest_refusal < Duration::from_millis(250), "at once");

    let stored: Vec<String> = app
        .all_contacts()
        .await
        .into_iter()
        .map(|contact| contact.request_id)
        .collect();
    assert_eq!(stored.len(), 1 + MAX_QUEUED as usize, "{stored:?}");
    for key in &refused {
        assert!(!stored.contains(key), "refused {key} was written");
    }
    app.assert_invariant().await;
}

async fn a_call_whose_deadline_passes_while_it_waits_is_not_carried_out(db: TestDb) {
    let app = TestApp::spawn_with(&db, |settings| {
        settings.limits.db_timeout = Duration::from_secs(10);
    })
    .await;
    let (source, operators) = app.source_with_operators("bot", 1, 1_000).await;
    let lock = OutsideLock::take(&db, operators[0].id);
    let mut client = app.contacts.clone();
    let plug = tokio::spawn(async move {
        client
            .register_contact(registration(source.id, 0, "plug"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let call = |index: usize, key: &str, timeout: Duration| {
        let mut client = app.contacts.clone();
        let mut request = tonic::Request::new(registration(source.id, index, key));
        request.set_timeout(timeout);
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client.register_contact(request).await;
            (answer.map(|r| r.into_inner()), started.elapsed())
        })
    };
    let late = call(1, "late", Duration::from_millis(300));
    let patient = call(2, "patient", Duration::from_secs(30));
    let (late, late_after) = late.await.unwrap();
    let status = late.expect_err("the deadline passes while the call waits");
    eprintln!(
        "deadline: a call with a 300 ms deadline behind a plugged writer answered {:?} after \
         {late_after:?}",
        status.code()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        late_after >= Duration::from_millis(250) && late_after < Duration::from_millis(300),
        "{late_after:?}"
    );
    lock.release();
    plug.await.unwrap().expect("the plug goes through");
    let (patient, _) = patient.await.unwrap();
    patient.expect("a call within its deadline goes through");

    let stored: Vec<String> = app
        .all_contacts()
        .await
        .into_iter()
        .map(|contact| contact.request_id)
        .collect();
    assert_eq!(
        stored,
        ["plug", "patient"],
        "the late call was not carried out"
    );

    // A deadline that passes at once: never carried out. (tonic's client
    // enforces the deadline itself too and may answer CANCELLED first.)
    let (expired, _) = call(3, "expired", Duration::from_nanos(1)).await.unwrap();
    let code = expired.unwrap_err().code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.all_contacts().await.len(), 2);
}
