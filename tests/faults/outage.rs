//! PostgreSQL unreachable for a few seconds under load, through a proxy
//! that is cut and restored: no INTERNAL, no call slower than --db-timeout
//! plus one second, health NOT_SERVING meanwhile and SERVING after, recovery
//! without a restart, nothing acknowledged lost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::{TestDb, on_postgres},
    load::{Load, assert_acknowledged_present, codes, seed},
    proxy::{Proxy, server_of, through},
    server::{Server, tool},
};

const DB_TIMEOUT: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_under_load() {
    on_postgres(cut_off_under_load).await;
}

async fn cut_off_under_load(db: TestDb) {
    let direct = db.url();
    let proxy = Proxy::start(server_of(&direct)).await;
    let proxied = through(&direct, proxy.address);
    let server = Server::start(&proxied, &["--db-timeout", "2s"]).await;
    let source_id = seed(&server.channel, "outage", 4, 1_000).await;

    let load = Load::start(&server.channel, source_id, "outage", 6, 2);
    let stop_watching = Arc::new(AtomicBool::new(false));
    let health = {
        let channel = server.channel.clone();
        let started = load.started;
        let stop = Arc::clone(&stop_watching);
        tokio::spawn(async move { watch_health(channel, started, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cut_at = load.started.elapsed();
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    let restored_at = load.started.elapsed();
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let records = load.stop().await;
    stop_watching.store(true, Ordering::Relaxed);
    let statuses = health.await.unwrap();

    let slowest = records.iter().map(|r| r.latency).max().unwrap_or_default();
    let during = |r: &&crate::load::Record| r.at >= cut_at && r.at < restored_at;
    let unavailable = records
        .iter()
        .filter(during)
        .filter(|r| r.code == Code::Unavailable)
        .count();
    let after: Vec<_> = records
        .iter()
        .filter(|r| r.at >= restored_at + Duration::from_secs(2))
        .collect();
    let ok_after = after.iter().filter(|r| r.code == Code::Ok).count();
    let not_serving_at = statuses
        .iter()
        .find(|(at, status)| *at >= cut_at && *status == Some(ServingStatus::NotServing as i32))
        .map(|(at, _)| *at - cut_at);
    let serving_again_at = statuses
        .iter()
        .find(|(at, status)| *at >= restored_at && *status == Some(ServingStatus::Serving as i32))
        .map(|(at, _)| *at - restored_at);
    eprintln!(
        "outage of {OUTAGE:?} under load: {} calls {:?}; slowest {slowest:?}; {unavailable} \
         UNAVAILABLE during the outage; {ok_after}/{} OK from 2 s after the restore; health \
         NOT_SERVING {not_serving_at:?} after the cut, SERVING {serving_again_at:?} after the restore",
        records.len(),
        codes(&records),
        after.len()
    );
    for record in &records {
        assert!(
            matches!(record.code, Code::Ok | Code::Unavailable),
            "{record:?}: only OK and UNAVAILABLE are allowed\n{}",
            server.log()
        );
        assert!(
            record.latency <= DB_TIMEOUT + Duration::from_secs(1),
            "{record:?}: slower than --db-timeout plus one second"
        );
    }
    assert!(unavailable > 0, "the outage was not felt");
    assert!(
        not_serving_at.is_some_and(|at| at <= DB_TIMEOUT + Duration::from_secs(1)),
        "health did not turn NOT_SERVING: {statuses:?}"
    );
    assert!(
        serving_again_at.is_some_and(|at| at <= Duration::from_secs(3)),
        "health did not turn SERVING again: {statuses:?}\n{}",
        server.log()
    );
    assert!(
        !after.is_empty() && ok_after == after.len(),
        "no recovery: {:?}",
        codes(&records)
    );
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(1))
        .await;

    let (registrations, closes) = assert_acknowledged_present(&server.channel, &records).await;
    eprintln!("outage: all {registrations} acknowledged registrations and {closes} closes present");
    let check = tool(&["check", "--database-url", &direct]);
    assert!(
        check.status.success(),
        "check after the outage fails:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// The overall health every 100 ms, with when it was asked.
async fn watch_health(
    channel: tonic::transport::Channel,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, Option<i32>)> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(channel);
    let mut statuses = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = started.elapsed();
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
            .map(|response| response.into_inner().status);
        statuses.push((at, status));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    statuses
}
