//! Bad input: control characters in text fields (API.md, "Limits and faults").

use minicrm::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, TestDb, assert_code, phone_lead};

crate::backend_tests!(
    control_characters_are_invalid_and_nothing_is_written,
    tab_is_allowed_in_names_only,
);

/// Everything the server holds, for before/after comparisons.
async fn snapshot(app: &TestApp) -> String {
    let sources = app
        .sources
        .clone()
        .list_sources(pb::ListSourcesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sources;
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        app.all_operators().await,
        sources,
        app.all_contacts().await,
        app.all_leads().await
    )
}

async fn control_characters_are_invalid_and_nothing_is_written(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 10).await;
    let before = snapshot(&app).await;
    let mut checked = 0;
    for bad in ["\0", "\u{1}", "\n", "\u{7f}", "\u{9b}"] {
        let mut operator_client = app.operators.clone();
        let created = operator_client
            .create_operator(pb::CreateOperatorRequest {
                name: format!("Ann{bad}"),
                is_active: None,
                max_load: 1,
            })
            .await;
        assert_code(created, Code::InvalidArgument, "name");
        let updated = operator_client
            .update_operator(pb::UpdateOperatorRequest {
                id: operators[0].id,
                name: Some(format!("Bob{bad}")),
                is_active: None,
                max_load: None,
            })
            .await;
        assert_code(updated, Code::InvalidArgument, "name");

        let mut source_client = app.sources.clone();
        let created = source_client
            .create_source(pb::CreateSourceRequest {
                bot_id: format!("bot{bad}2"),
                name: "Bot".into(),
                ..Default::default()
            })
            .await;
        assert_code(created, Code::InvalidArgument, "bot_id");
        let created = source_client
            .create_source(pb::CreateSourceRequest {
                bot_id: "bot2".into(),
                name: format!("{bad}Bot"),
                ..Default::default()
            })
            .await;
        assert_code(created, Code::InvalidArgument, "name");
        let found = source_client
            .get_source(pb::GetSourceRequest {
                key: Some(pb::get_source_request::Key::BotId(format!("bot{bad}"))),
            })
            .await;
        assert_code(found, Code::InvalidArgument, "bot_id");

        let lead = |field: &str| {
            let mut lead = pb::LeadIdentity {
                external_id: "ext-1".into(),
                phone: "+15550000001".into(),
                email: "ann@example.com".into(),
                name: "Ann".into(),
            };
            match field {
                "external_id" => lead.external_id.push_str(bad),
                "phone" => lead.phone.insert_str(3, bad),
                "email" => lead.email.insert_str(0, bad),
                _ => lead.name = format!("An{bad}n"),
            }
            lead
        };
        for field in ["external_id", "phone", "email", "name"] {
            let registered = app
                .register(source.id, lead(field), &format!("key-{field}"))
                .await;
            assert_code(registered, Code::InvalidArgument, &format!("lead.{field}"));
            checked += 1;
        }
        let registered = app
            .register(source.id, phone_lead("+15550000001"), &format!("key{bad}"))
            .await;
        assert_code(registered, Code::InvalidArgument, "request_id");
        let registered = app
            .contacts
            .clone()
            .register_contact(pb::RegisterContactRequest {
                source: Some(pb::register_contact_request::Source::BotId(format!(
                    "bot{bad}"
                ))),
                lead: Some(phone_lead("+15550000001")),
                request_id: String::new(),
            })
            .await;
        assert_code(registered, Code::InvalidArgument, "bot_id");
        checked += 7;
    }
    assert_eq!(checked, 55);
    assert_eq!(snapshot(&app).await, before, "nothing was written");
    // The request ids of the rejected calls were not used up.
    let registered = app
        .register(source.id, phone_lead("+15550000001"), "key-name")
        .await
        .unwrap();
    assert!(registered.lead_created);
}

async fn tab_is_allowed_in_names_only(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let operator = app
        .operators
        .clone()
        .create_operator(pb::CreateOperatorRequest {
            name: "Ann\tLee".into(),
            is_active: None,
            max_load: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(operator.name, "Ann\tLee");
    let source = app
        .sources
        .clone()
        .create_source(pb::CreateSourceRequest {
            bot_id: "bot".into(),
            name: "Tele\tgram".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(source.name, "Tele\tgram");
    let registered = app
        .register(
            source.id,
            pb::LeadIdentity {
                phone: "+15550000001".into(),
                name: "Carol\tSmith".into(),
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap();
    assert_eq!(registered.lead.unwrap().name, "Carol\tSmith");
    let tabbed_bot = app
        .sources
        .clone()
        .create_source(pb::CreateSourceRequest {
            bot_id: "bot\t2".into(),
            name: String::new(),
            ..Default::default()
        })
        .await;
    assert_code(tabbed_bot, Code::InvalidArgument, "bot_id");
    let tabbed_id = app
        .register(
            source.id,
            pb::LeadIdentity {
                external_id: "a\tb".into(),
                ..Default::default()
            },
            "",
        )
        .await;
    assert_code(tabbed_id, Code::InvalidArgument, "lead.external_id");
}
