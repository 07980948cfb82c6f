//! Idempotency when calls with one `request_id` meet in one write batch.

use std::time::Duration;

use minicrm::proto as pb;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::helpers::{OutsideLock, TestApp, TestDb, phone_lead};

crate::backend_tests!(calls_with_one_request_id_in_one_batch_all_get_the_one_contact);

type Answer = JoinHandle<Result<pb::RegisterContactResponse, Status>>;

fn register(app: &TestApp, source: pb::register_contact_request::Source, key: &str) -> Answer {
    let mut client = app.contacts.clone();
    let request = pb::RegisterContactRequest {
        source: Some(source),
        lead: Some(phone_lead("+15550000001")),
        request_id: key.into(),
    };
    tokio::spawn(async move {
        client
            .register_contact(request)
            .await
            .map(|r| r.into_inner())
    })
}

/// Calls with one `request_id`, some naming a source that does not exist,
/// queue up behind a plugged writer and so run in one batch. Whatever order
/// they come in, exactly one creates the contact and every one of them gets
/// it back (API.md, "Idempotency").
async fn calls_with_one_request_id_in_one_batch_all_get_the_one_contact(db: TestDb) {
    use pb::register_contact_request::Source;
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 1, 100).await;
    let plug = app.create_operator("plug", 1).await;
    let known = Source::SourceId(source.id);
    let unknown_id = Source::SourceId(source.id + 1000);
    let unknown_bot = Source::BotId("no-such-bot".into());
    let rounds = [
        vec![known.clone(), unknown_id.clone()],
        vec![unknown_id.clone(), known.clone()],
        vec![unknown_bot.clone(), known.clone(), unknown_id.clone()],
    ];
    for (round, sources) in rounds.into_iter().enumerate() {
        let lock = OutsideLock::take(&db, plug.id);
        let mut operators = app.operators.clone();
        let plugged = tokio::spawn(async move {
            operators
                .update_operator(pb::UpdateOperatorRequest {
                    id: plug.id,
                    name: Some(format!("plug {round}")),
                    is_active: None,
                    max_load: None,
                })
                .await
        });
        // The writer is busy with the plug; these queue up behind it, in order.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let key = format!("key-{round}");
        let mut answers = Vec::new();
        for source in sources {
            answers.push(register(&app, source, &key));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lock.release();
        plugged.await.unwrap().expect("the plug goes through");
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        let first = results
            .iter()
            .find_map(|result| result.as_ref().ok())
            .cloned()
            .expect("one call registers");
        for result in &results {
            assert_eq!(
                result.as_ref().map_err(Status::code),
                Ok(&first),
                "round {round}: every call gets the one contact back"
            );
        }
        assert_eq!(first.contact.as_ref().unwrap().request_id, key);
    }
    let contacts = app.all_contacts().await;
    assert_eq!(contacts.len(), 3, "one contact per request_id");
    app.assert_invariant().await;
}
