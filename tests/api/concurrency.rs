use std::collections::HashSet;

use minicrm::proto::{self as pb, ContactStatus};
use tokio::task::JoinSet;

use crate::helpers::{TestApp, TestDb, phone_lead};

crate::backend_tests!(
    concurrent_registrations_never_exceed_max_load,
    concurrent_first_registrations_of_one_person_create_one_lead,
    concurrent_calls_with_one_request_id_create_one_contact,
    racing_closes_and_registrations_keep_loads_exact_and_leave_no_needless_pending,
    two_servers_on_one_database_race_for_the_same_operators,
);

async fn register_concurrently(
    apps: &[&TestApp],
    source_id: i64,
    calls: usize,
    lead: impl Fn(usize) -> pb::LeadIdentity,
    request_id: impl Fn(usize) -> String,
) -> Vec<pb::RegisterContactResponse> {
    let mut tasks = JoinSet::new();
    for index in 0..calls {
        let mut client = apps[index % apps.len()].contacts.clone();
        let request = pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source_id)),
            lead: Some(lead(index)),
            request_id: request_id(index),
        };
        tasks.spawn(async move { client.register_contact(request).await });
    }
    let mut responses = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        responses.push(
            joined
                .expect("task")
                .expect("register succeeds")
                .into_inner(),
        );
    }
    responses
}

fn count(responses: &[pb::RegisterContactResponse], status: ContactStatus) -> usize {
    responses
        .iter()
        .filter(|r| r.contact.as_ref().unwrap().status == status as i32)
        .count()
}

async fn concurrent_registrations_never_exceed_max_load(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 3, 5).await;
    let responses = register_concurrently(
        &[&app],
        source.id,
        64,
        |i| phone_lead(&format!("+1555{i:07}")),
        |_| String::new(),
    )
    .await;
    assert_eq!(count(&responses, ContactStatus::Active), 15);
    assert_eq!(count(&responses, ContactStatus::Pending), 49);
    for operator in operators {
        assert_eq!(app.get_operator(operator.id).await.active_load, 5);
    }
    assert_eq!(app.assert_invariant().await, 15);
}

async fn concurrent_first_registrations_of_one_person_create_one_lead(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 2, 100).await;
    let responses = register_concurrently(
        &[&app],
        source.id,
        32,
        |_| pb::LeadIdentity {
            external_id: "person-1".into(),
            phone: "+15550000001".into(),
            email: "person@example.com".into(),
            name: "Person".into(),
        },
        |_| String::new(),
    )
    .await;
    let lead_ids: HashSet<i64> = responses
        .iter()
        .map(|r| r.lead.as_ref().unwrap().id)
        .collect();
    assert_eq!(lead_ids.len(), 1, "one lead: {lead_ids:?}");
    assert_eq!(responses.iter().filter(|r| r.lead_created).count(), 1);
    assert_eq!(app.all_leads().await.len(), 1);
    assert_eq!(app.all_contacts().await.len(), 32);
}

async fn concurrent_calls_with_one_request_id_create_one_contact(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 2, 100).await;
    let responses = register_concurrently(
        &[&app],
        source.id,
        32,
        |i| phone_lead(&format!("+1555{i:07}")),
        |_| "same-key".into(),
    )
    .await;
    let first = &responses[0];
    assert!(
        responses.iter().all(|r| r == first),
        "all get the one result"
    );
    assert!(first.lead_created);
    assert_eq!(app.all_contacts().await.len(), 1);
    assert_eq!(app.all_leads().await.len(), 1);
    let load: i32 = [
        app.get_operator(operators[0].id).await.active_load,
        app.get_operator(operators[1].id).await.active_load,
    ]
    .iter()
    .sum();
    assert_eq!(load, 1);
}

/// After the dust settles, a source with pending contacts has no operator
/// that could take one.
async fn assert_no_needless_pending(app: &TestApp) {
    let operators = app.all_operators().await;
    for contact in app.all_contacts().await {
        if contact.status != ContactStatus::Pending as i32 {
            continue;
        }
        let table = app
            .sources
            .clone()
            .list_source_operators(pb::ListSourceOperatorsRequest {
                source_id: contact.source_id,
            })
            .await
            .unwrap()
            .into_inner()
            .operators;
        for entry in table {
            let operator = operators
                .iter()
                .find(|o| o.id == entry.operator_id)
                .unwrap();
            assert!(
                !operator.is_active || operator.active_load >= operator.max_load,
                "contact {} pending while operator {} has room",
                contact.id,
                operator.id
            );
        }
    }
}

/// `active_before`: ACTIVE contacts of other operators, untouched here.
async fn race_closes_and_registrations(apps: &[&TestApp], active_before: usize) {
    let app = apps[0];
    let (a, ops) = app.source_with_operators("a", 3, 2).await;
    let b = app.create_source("b").await;
    app.set_weights(b.id, &[(ops[1].id, 3), (ops[2].id, 1)])
        .await;
    // Fill every slot first, so that each close below races with registrations.
    let seeded = register_concurrently(
        apps,
        a.id,
        6,
        |i| phone_lead(&format!("+1666{i:07}")),
        |_| String::new(),
    )
    .await;
    assert_eq!(count(&seeded, ContactStatus::Active), 6);

    let mut tasks = JoinSet::new();
    for (index, response) in seeded.iter().enumerate() {
        let mut contacts = apps[index % apps.len()].contacts.clone();
        let id = response.contact.as_ref().unwrap().id;
        tasks.spawn(async move {
            contacts
                .close_contact(pb::CloseContactRequest { id })
                .await
                .map(drop)
        });
    }
    for index in 0..40 {
        let mut contacts = apps[index % apps.len()].contacts.clone();
        let source_id = if index % 2 == 0 { a.id } else { b.id };
        tasks.spawn(async move {
            contacts
                .register_contact(pb::RegisterContactRequest {
                    source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                    lead: Some(phone_lead(&format!("+1777{index:07}"))),
                    request_id: String::new(),
                })
                .await
                .map(drop)
        });
    }
    let mut operators = apps[1 % apps.len()].operators.clone();
    let raised = ops[0].id;
    tasks.spawn(async move {
        operators
            .update_operator(pb::UpdateOperatorRequest {
                id: raised,
                max_load: Some(4),
                ..Default::default()
            })
            .await
            .map(drop)
    });
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("call succeeds");
    }
    // 3 operators with 4 + 2 + 2 slots: exactly 8 ACTIVE, the rest waiting.
    assert_eq!(app.assert_invariant().await, active_before + 8);
    assert_no_needless_pending(app).await;
}

async fn racing_closes_and_registrations_keep_loads_exact_and_leave_no_needless_pending(
    db: TestDb,
) {
    let app = TestApp::spawn(&db).await;
    race_closes_and_registrations(&[&app], 0).await;
}

async fn two_servers_on_one_database_race_for_the_same_operators(db: TestDb) {
    let first = TestApp::spawn(&db).await;
    let second = TestApp::spawn(&db).await;
    let (source, operators) = first.source_with_operators("bot", 3, 5).await;
    let responses = register_concurrently(
        &[&first, &second],
        source.id,
        64,
        |i| phone_lead(&format!("+1888{i:07}")),
        |_| String::new(),
    )
    .await;
    assert_eq!(count(&responses, ContactStatus::Active), 15);
    for operator in &operators {
        assert_eq!(second.get_operator(operator.id).await.active_load, 5);
    }
    // Both replicas close and register at once on the same operators.
    race_closes_and_registrations(&[&first, &second], 15).await;
    assert_eq!(second.assert_invariant().await, 15 + 8);
}
