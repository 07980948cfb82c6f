//! The README's grpcurl walk-through, call for call, with what the README
//! says each call shows: if this test fails, the walk-through is wrong.

use minicrm::proto::{self as pb, ContactEventType, ContactStatus};

use crate::helpers::{TestApp, TestDb};

crate::backend_tests!(the_readme_walk_through_shows_what_it_says);

fn register(
    bot_or_source: pb::register_contact_request::Source,
    lead: pb::LeadIdentity,
    request_id: &str,
) -> pb::RegisterContactRequest {
    pb::RegisterContactRequest {
        source: Some(bot_or_source),
        lead: Some(lead),
        request_id: request_id.into(),
    }
}

// The request gains fields as the contract grows; the walk-through sets none of them.
#[allow(clippy::needless_update)]
async fn the_readme_walk_through_shows_what_it_says(db: TestDb) {
    use pb::register_contact_request::Source::{BotId, SourceId};
    let app = TestApp::spawn(&db).await;
    let (mut operators, mut sources, mut contacts) = (
        app.operators.clone(),
        app.sources.clone(),
        app.contacts.clone(),
    );
    for (name, max_load) in [("Ann", 2), ("Bob", 1)] {
        operators
            .create_operator(pb::CreateOperatorRequest {
                name: name.into(),
                is_active: None,
                max_load,
            })
            .await
            .unwrap();
    }
    let source = sources
        .create_source(pb::CreateSourceRequest {
            bot_id: "telegram-main".into(),
            name: "Telegram".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(source.id, 1);
    app.set_weights(1, &[(1, 30), (2, 10)]).await;

    let bot = || BotId("telegram-main".into());
    let first = contacts
        .register_contact(register(
            bot(),
            pb::LeadIdentity {
                phone: "+1 (555) 010-0001".into(),
                name: "Carol".into(),
                ..Default::default()
            },
            "msg-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let second = contacts
        .register_contact(register(
            bot(),
            pb::LeadIdentity {
                phone: "+15550100001".into(),
                email: "Carol@Example.com".into(),
                ..Default::default()
            },
            "msg-2",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.lead_created, "the same person, found by phone");
    assert_eq!(second.lead.as_ref().unwrap().email, "carol@example.com");
    assert_eq!(first.lead.unwrap().id, second.lead.unwrap().id);
    contacts
        .register_contact(register(
            SourceId(1),
            pb::LeadIdentity {
                external_id: "crm-42".into(),
                ..Default::default()
            },
            "msg-3",
        ))
        .await
        .unwrap();
    let dave = || pb::LeadIdentity {
        email: "dave@example.com".into(),
        ..Default::default()
    };
    let pending = contacts
        .register_contact(register(SourceId(1), dave(), "msg-4"))
        .await
        .unwrap()
        .into_inner();
    let pending_contact = pending.contact.clone().unwrap();
    assert_eq!(pending_contact.id, 4);
    assert_eq!(pending_contact.status, ContactStatus::Pending as i32);
    let retry = contacts
        .register_contact(register(SourceId(1), dave(), "msg-4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, pending);

    app.close(1).await.unwrap();
    let four = app.get_contact(4).await;
    assert_eq!(
        four.status,
        ContactStatus::Active as i32,
        "contact 4 took the slot"
    );

    let invalid = contacts
        .register_contact(register(
            SourceId(1),
            pb::LeadIdentity {
                phone: "123".into(),
                ..Default::default()
            },
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        invalid.message(),
        "lead.phone: must have 5 to 20 digits, got 3"
    );

    // Contact 4's history, and the events after event 5.
    let history = app
        .all_events(pb::ListContactEventsRequest {
            contact_id: Some(4),
            ..Default::default()
        })
        .await;
    let kinds: Vec<_> = history.iter().map(|event| event.r#type).collect();
    assert_eq!(
        kinds,
        [
            ContactEventType::Registered as i32,
            ContactEventType::Assigned as i32
        ]
    );
    assert!(
        !history[1]
            .assignment
            .as_ref()
            .unwrap()
            .candidates
            .is_empty()
    );
    let all = app.all_events(Default::default()).await;
    assert_eq!(all[4].id, 5);
    assert_eq!(all[4].r#type, ContactEventType::Closed as i32);
    assert_eq!(all[5].id, 6);
    assert_eq!(all[5].contact.as_ref().unwrap().id, 4);
    app.assert_invariant().await;
}
