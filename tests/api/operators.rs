use minicrm::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, TestDb, assert_code, phone_lead};

crate::backend_tests!(
    create_operator_defaults_to_active_and_starts_unloaded,
    create_operator_rejects_blank_name_and_negative_max_load,
    get_operator_of_unknown_id_is_not_found,
    list_operators_pages_in_id_order_and_filters_by_activity,
    list_operators_rejects_negative_size_and_malformed_token,
    update_operator_changes_only_the_fields_present,
    update_operator_rejects_bad_input_and_unknown_id,
    lowering_max_load_below_active_load_takes_nothing_away,
);

async fn create_operator_defaults_to_active_and_starts_unloaded(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let created = app.create_operator("  Ann  ", 3).await;
    assert!(created.id > 0);
    assert_eq!(created.name, "Ann");
    assert!(created.is_active);
    assert_eq!((created.max_load, created.active_load), (3, 0));
    assert!(created.created_at.is_some());

    let inactive = app
        .operators
        .clone()
        .create_operator(pb::CreateOperatorRequest {
            name: "Bob".into(),
            is_active: Some(false),
            max_load: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!inactive.is_active);
    assert!(inactive.id > created.id);
    assert_eq!(app.get_operator(created.id).await, created);
}

async fn create_operator_rejects_blank_name_and_negative_max_load(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut client = app.operators.clone();
    for (name, max_load, field) in [
        ("", 1, "name"),
        ("   ", 1, "name"),
        ("Ann", -1, "max_load"),
        (&*"x".repeat(256), 1, "name"),
    ] {
        let result = client
            .create_operator(pb::CreateOperatorRequest {
                name: name.into(),
                is_active: None,
                max_load,
            })
            .await;
        assert_code(result, Code::InvalidArgument, field);
    }
    assert!(app.all_operators().await.is_empty(), "nothing was created");
}

async fn get_operator_of_unknown_id_is_not_found(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    for id in [0, 999, -5] {
        let result = app
            .operators
            .clone()
            .get_operator(pb::GetOperatorRequest { id })
            .await;
        assert_code(result, Code::NotFound, "operator");
    }
}

async fn list_operators_pages_in_id_order_and_filters_by_activity(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(app.create_operator(&format!("op{index}"), 1).await.id);
    }
    app.operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id: ids[1],
            is_active: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .operators
            .clone()
            .list_operators(pb::ListOperatorsRequest {
                page_size: 2,
                page_token,
                is_active: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.operators.len() <= 2);
        seen.extend(page.operators.iter().map(|op| op.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);

    let active: Vec<i64> = app
        .operators
        .clone()
        .list_operators(pb::ListOperatorsRequest {
            is_active: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operators
        .iter()
        .map(|op| op.id)
        .collect();
    assert_eq!(active, [ids[0], ids[2], ids[3], ids[4]]);
    let inactive = app
        .operators
        .clone()
        .list_operators(pb::ListOperatorsRequest {
            is_active: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inactive.operators.len(), 1);
    assert_eq!(inactive.operators[0].id, ids[1]);
    assert!(inactive.next_page_token.is_empty());
}

async fn list_operators_rejects_negative_size_and_malformed_token(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let result = app
        .operators
        .clone()
        .list_operators(pb::ListOperatorsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await;
    assert_code(result, Code::InvalidArgument, "page_size");
    let result = app
        .operators
        .clone()
        .list_operators(pb::ListOperatorsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await;
    assert_code(result, Code::InvalidArgument, "page_token");
}

async fn update_operator_changes_only_the_fields_present(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let created = app.create_operator("Ann", 3).await;
    let mut client = app.operators.clone();

    let renamed = client
        .update_operator(pb::UpdateOperatorRequest {
            id: created.id,
            name: Some(" Anna ".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "Anna");
    assert_eq!((renamed.is_active, renamed.max_load), (true, 3));

    let changed = client
        .update_operator(pb::UpdateOperatorRequest {
            id: created.id,
            name: None,
            is_active: Some(false),
            max_load: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.name, "Anna");
    assert!(!changed.is_active);
    assert_eq!(changed.max_load, 0);
    assert_eq!(changed.created_at, created.created_at);
    assert_eq!(app.get_operator(created.id).await, changed);
}

async fn update_operator_rejects_bad_input_and_unknown_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let created = app.create_operator("Ann", 3).await;
    let mut client = app.operators.clone();
    let bad = [
        (
            pb::UpdateOperatorRequest {
                id: created.id,
                ..Default::default()
            },
            "name",
        ),
        (
            pb::UpdateOperatorRequest {
                id: created.id,
                name: Some("  ".into()),
                is_active: Some(false),
                ..Default::default()
            },
            "name",
        ),
        (
            pb::UpdateOperatorRequest {
                id: created.id,
                max_load: Some(-2),
                is_active: Some(false),
                ..Default::default()
            },
            "max_load",
        ),
    ];
    for (request, field) in bad {
        assert_code(
            client.update_operator(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_eq!(
        app.get_operator(created.id).await,
        created,
        "nothing changed"
    );
    let result = client
        .update_operator(pb::UpdateOperatorRequest {
            id: created.id + 100,
            max_load: Some(1),
            ..Default::default()
        })
        .await;
    assert_code(result, Code::NotFound, "operator");
    let nothing_for_nobody = client
        .update_operator(pb::UpdateOperatorRequest {
            id: created.id + 100,
            ..Default::default()
        })
        .await;
    assert_code(nothing_for_nobody, Code::NotFound, "operator");
}

async fn lowering_max_load_below_active_load_takes_nothing_away(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 3).await;
    let mut contacts = Vec::new();
    for index in 0..3 {
        let registered = app
            .register(source.id, phone_lead(&format!("+1555000{index:04}")), "")
            .await
            .unwrap();
        contacts.push(registered.contact.unwrap());
    }
    let lowered = app
        .operators
        .clone()
        .update_operator(pb::UpdateOperatorRequest {
            id: operators[0].id,
            max_load: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((lowered.max_load, lowered.active_load), (1, 3));
    for contact in &contacts {
        assert_eq!(
            app.get_contact(contact.id).await.status,
            pb::ContactStatus::Active as i32
        );
    }
    // Over the limit: new contacts wait, and a close does not free a slot yet.
    let waiting = app
        .register(source.id, phone_lead("+15559999999"), "")
        .await
        .unwrap()
        .contact
        .unwrap();
    assert_eq!(waiting.status, pb::ContactStatus::Pending as i32);
    app.close(contacts[0].id).await.unwrap();
    assert_eq!(
        app.get_contact(waiting.id).await.status,
        pb::ContactStatus::Pending as i32
    );
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 2);
    app.assert_loads_match().await;
}
