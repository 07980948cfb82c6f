//! SIGTERM to the real binary: health turns NOT_SERVING, new calls are
//! refused, in-flight unary calls finish, streams end with UNAVAILABLE, and
//! the process exits within --shutdown-grace even if clients keep streams or
//! calls open.

use std::time::{Duration, Instant};

use minicrm::proto as pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::{
    helpers::{OutsideLock, TestDb, phone_lead},
    load::seed,
    server::Server,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_watch_stream_open_ends_it_and_exits() {
    let db = TestDb::sqlite();
    let mut server = Server::start(
        &db.url(),
        &["--shutdown-grace", "5s", "--db-timeout", "10s"],
    )
    .await;
    let source_id = seed(&server.channel, "bot", 1, 10).await;

    let mut watch = server
        .health()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // An in-flight unary call: it waits for the write lock held here.
    let lock = OutsideLock::take(&db, 1);
    let mut contacts = server.contacts();
    let in_flight = tokio::spawn(async move {
        contacts
            .register_contact(pb::RegisterContactRequest {
                source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                lead: Some(phone_lead("+15550000001")),
                request_id: "in-flight".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    server.terminate();
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the stream hears of the shutdown");
    assert_eq!(
        next.expect("a status").expect("a message").status,
        ServingStatus::NotServing as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the stream ends");
    let stream_ended_after = signalled.elapsed();
    assert_eq!(
        end.expect_err("ends with a status").code(),
        Code::Unavailable
    );

    // New calls are refused.
    let refused = server
        .operators()
        .get_operator(pb::GetOperatorRequest { id: 1 })
        .await
        .expect_err("refused while shutting down");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // The in-flight call finishes once it gets its lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the call is still in flight");
    lock.release();
    let registered = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finishes");
    let exit = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the process exits within --shutdown-grace");
    let exited_after = signalled.elapsed();
    eprintln!(
        "SIGTERM with a Watch stream and a call in flight: the stream ended with UNAVAILABLE \
         after {stream_ended_after:?}, the call finished OK, the process exited ({exit}) after \
         {exited_after:?}"
    );
    assert!(exit.success(), "{exit}\n{}", server.log());
    assert!(exited_after < Duration::from_secs(3), "{exited_after:?}");

    // What the in-flight call was told is there.
    let restarted = Server::start(&db.url(), &[]).await;
    let contact = restarted
        .contacts()
        .get_contact(pb::GetContactRequest {
            id: registered.into_inner().contact.unwrap().id,
        })
        .await
        .expect("the acknowledged contact")
        .into_inner();
    assert_eq!(contact.request_id, "in-flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_even_with_a_call_stuck() {
    let db = TestDb::sqlite();
    let mut server = Server::start(
        &db.url(),
        &["--shutdown-grace", "1s", "--db-timeout", "30s"],
    )
    .await;
    let source_id = seed(&server.channel, "bot", 1, 10).await;
    let _watch = server
        .health()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    // Held past the grace: the call never gets the lock.
    let lock = OutsideLock::take(&db, 1);
    let mut contacts = server.contacts();
    let stuck = tokio::spawn(async move {
        contacts
            .register_contact(pb::RegisterContactRequest {
                source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                lead: Some(phone_lead("+15550000001")),
                request_id: "stuck".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    server.terminate();
    let exit = server
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the process exits");
    let exited_after = signalled.elapsed();
    drop(lock);
    let answer = stuck.await.unwrap();
    eprintln!(
        "SIGTERM with a call stuck past --shutdown-grace 1s: exited ({exit}) after \
         {exited_after:?}; the stuck call got {:?}",
        answer.as_ref().map_err(|status| status.code())
    );
    assert!(
        exited_after >= Duration::from_millis(900) && exited_after < Duration::from_millis(2_500),
        "{exited_after:?}"
    );
    assert!(answer.is_err(), "it was never done");
}
