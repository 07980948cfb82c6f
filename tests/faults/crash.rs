//! `kill -9` of the real binary under concurrent load, several rounds: every
//! acknowledged call is there after a restart, and `check` passes.

use std::time::Duration;

use rand::Rng;
use tonic::Code;

use crate::{
    helpers::TestDb,
    load::{Load, assert_acknowledged_present, codes, seed},
    server::{Server, tool},
};

crate::backend_tests!(acknowledged_calls_survive_kill_9_under_load);

const ROUNDS: usize = 3;

async fn acknowledged_calls_survive_kill_9_under_load(db: TestDb) {
    let url = db.url();
    let mut source_id = None;
    let mut all_records = Vec::new();
    for round in 0..ROUNDS {
        let mut server = Server::start(&url, &[]).await;
        if round > 0 {
            // Everything acknowledged before the earlier kills is still there.
            let (registrations, closes) =
                assert_acknowledged_present(&server.channel, &all_records).await;
            eprintln!(
                "kill -9, round {round}: after restart all {registrations} acknowledged \
                 registrations and {closes} closes so far are present"
            );
        }
        let source_id = match source_id {
            Some(id) => id,
            None => *source_id.insert(seed(&server.channel, "crash", 4, 40).await),
        };
        let load = Load::start(&server.channel, source_id, &format!("r{round}"), 8, 0);
        let kill_after = Duration::from_millis(rand::rng().random_range(400..1_200));
        tokio::time::sleep(kill_after).await;
        server.kill();
        let records = load.stop().await;
        let acknowledged = records.iter().filter(|r| r.code == Code::Ok).count();
        eprintln!(
            "kill -9, round {round}: killed after {kill_after:?} with {} calls made: {:?}",
            records.len(),
            codes(&records)
        );
        assert!(acknowledged > 0, "round {round}: the load got nothing done");
        assert!(
            records.iter().all(|r| r.code != Code::Internal),
            "round {round}: INTERNAL answers: {:?}",
            codes(&records)
        );
        all_records.extend(records);

        let check = tool(&["check", "--database-url", &url]);
        assert!(
            check.status.success(),
            "round {round}: check after kill -9 fails:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let server = Server::start(&url, &[]).await;
    let (registrations, closes) = assert_acknowledged_present(&server.channel, &all_records).await;
    eprintln!(
        "kill -9: {ROUNDS} rounds, all {registrations} acknowledged registrations and {closes} \
         acknowledged closes present after the last restart; check passed after each kill"
    );
    assert!(registrations >= ROUNDS);
}
