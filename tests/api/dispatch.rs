use minicrm::proto::{self as pb, ContactStatus};

use crate::helpers::{TestApp, TestDb, phone_lead};

crate::backend_tests!(
    closing_hands_the_slot_to_the_oldest_pending_contact,
    oldest_pending_first_across_every_source_the_operator_serves,
    activating_an_operator_dispatches_pending_contacts,
    raising_max_load_dispatches_as_many_as_fit,
    changing_the_weight_table_dispatches_the_sources_pending_contacts,
    deactivated_operator_keeps_contacts_and_gets_nothing_new,
);

async fn register_n(app: &TestApp, source_id: i64, prefix: &str, n: usize) -> Vec<pb::Contact> {
    let mut contacts = Vec::new();
    for index in 0..n {
        let phone = format!("+1{prefix}{index:06}");
        contacts.push(
            app.register(source_id, phone_lead(&phone), "")
                .await
                .unwrap()
                .contact
                .unwrap(),
        );
    }
    contacts
}

async fn statuses(app: &TestApp, contacts: &[pb::Contact]) -> Vec<ContactStatus> {
    let mut out = Vec::new();
    for contact in contacts {
        out.push(ContactStatus::try_from(app.get_contact(contact.id).await.status).unwrap());
    }
    out
}

use ContactStatus::{Active, Closed, Pending};

async fn closing_hands_the_slot_to_the_oldest_pending_contact(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 1).await;
    let contacts = register_n(&app, source.id, "555", 3).await;
    assert_eq!(statuses(&app, &contacts).await, [Active, Pending, Pending]);

    app.close(contacts[0].id).await.unwrap();
    assert_eq!(statuses(&app, &contacts).await, [Closed, Active, Pending]);
    let assigned = app.get_contact(contacts[1].id).await;
    assert_eq!(assigned.operator_id, Some(operators[0].id));
    assert!(assigned.assigned_at.is_some());
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);

    // Closing a pending contact frees nothing.
    app.close(contacts[2].id).await.unwrap();
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);
    app.assert_invariant().await;
}

async fn oldest_pending_first_across_every_source_the_operator_serves(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (a, operators) = app.source_with_operators("a", 1, 1).await;
    let b = app.create_source("b").await;
    app.set_weights(b.id, &[(operators[0].id, 1)]).await;
    let holder = register_n(&app, a.id, "555", 1).await;
    let older_in_b = register_n(&app, b.id, "556", 1).await;
    let newer_in_a = register_n(&app, a.id, "557", 1).await;
    assert_eq!(statuses(&app, &older_in_b).await, [Pending]);
    assert_eq!(statuses(&app, &newer_in_a).await, [Pending]);

    app.close(holder[0].id).await.unwrap();
    assert_eq!(statuses(&app, &older_in_b).await, [Active]);
    assert_eq!(statuses(&app, &newer_in_a).await, [Pending]);
}

async fn activating_an_operator_dispatches_pending_contacts(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let away = app
        .operators
        .clone()
        .create_operator(pb::CreateOperatorRequest {
            name: "away".into(),
            is_active: Some(false),
            max_load: 2,
        })
        .await
        .unwrap()
        .into_inner();
    app.set_weights(source.id, &[(away.id, 1)]).await;
    let contacts = register_n(&app, source.id, "555", 3).await;
    assert_eq!(statuses(&app, &contacts).await, [Pending, Pending, Pending]);

    let activated = app
        .operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id: away.id,
            is_active: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        activated.active_load, 2,
        "the answer already counts the dispatch"
    );
    assert_eq!(statuses(&app, &contacts).await, [Active, Active, Pending]);
    app.assert_invariant().await;
}

async fn raising_max_load_dispatches_as_many_as_fit(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 0).await;
    let contacts = register_n(&app, source.id, "555", 5).await;
    assert!(
        statuses(&app, &contacts)
            .await
            .iter()
            .all(|s| *s == Pending)
    );

    let raised = app
        .operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id: operators[0].id,
            max_load: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((raised.max_load, raised.active_load), (3, 3));
    assert_eq!(
        statuses(&app, &contacts).await,
        [Active, Active, Active, Pending, Pending]
    );
    app.assert_invariant().await;
}

async fn changing_the_weight_table_dispatches_the_sources_pending_contacts(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let other = app.create_source("other").await;
    let contacts = register_n(&app, source.id, "555", 2).await;
    let elsewhere = register_n(&app, other.id, "556", 1).await;
    let operator = app.create_operator("new", 5).await;
    app.set_weights(source.id, &[(operator.id, 7)]).await;
    assert_eq!(statuses(&app, &contacts).await, [Active, Active]);
    assert_eq!(
        statuses(&app, &elsewhere).await,
        [Pending],
        "other sources wait"
    );
    assert_eq!(app.get_operator(operator.id).await.active_load, 2);
    app.assert_invariant().await;
}

async fn deactivated_operator_keeps_contacts_and_gets_nothing_new(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 5).await;
    let kept = register_n(&app, source.id, "555", 2).await;
    app.operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id: operators[0].id,
            is_active: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let waiting = register_n(&app, source.id, "556", 1).await;
    assert_eq!(statuses(&app, &kept).await, [Active, Active]);
    assert_eq!(statuses(&app, &waiting).await, [Pending]);
    // A close frees a slot, but an inactive operator takes nothing new.
    app.close(kept[0].id).await.unwrap();
    assert_eq!(statuses(&app, &waiting).await, [Pending]);
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);
    app.assert_invariant().await;
}
