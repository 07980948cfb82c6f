use minicrm::proto::{self as pb, ContactStatus};
use tonic::Code;

use crate::helpers::{TestApp, TestDb, assert_code, phone_lead};

crate::backend_tests!(
    register_assigns_an_operator_and_counts_its_load,
    register_names_the_source_by_bot_id_or_id,
    register_rejects_invalid_requests_and_changes_nothing,
    register_without_candidates_leaves_the_contact_pending,
    register_draws_only_active_operators_with_room,
    retry_with_the_same_request_id_returns_the_first_result,
    rejected_request_does_not_use_up_its_request_id,
    register_reports_a_malformed_source_before_an_invalid_lead,
    get_contact_and_unknown_ids,
    list_contacts_filters_combine_and_page_by_id,
    list_contacts_filter_naming_unknown_id_is_not_found,
    close_active_contact_frees_the_operator,
    close_pending_contact_and_closing_twice,
    stats_count_pairs_and_pending_per_source,
);

fn status(contact: &pb::Contact) -> ContactStatus {
    ContactStatus::try_from(contact.status).expect("known status")
}

async fn register_assigns_an_operator_and_counts_its_load(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 2).await;
    let response = app
        .register(
            source.id,
            pb::LeadIdentity {
                external_id: "crm-1".into(),
                phone: "+1 (555) 010-0001".into(),
                email: "Ann@Example.com".into(),
                name: "Ann".into(),
            },
            "",
        )
        .await
        .unwrap();
    assert!(response.lead_created);
    let lead = response.lead.unwrap();
    let contact = response.contact.unwrap();
    assert_eq!(lead.external_id, "crm-1");
    assert_eq!(lead.phone, "+15550100001");
    assert_eq!(lead.email, "ann@example.com");
    assert_eq!(lead.name, "Ann");
    assert_eq!(status(&contact), ContactStatus::Active);
    assert_eq!(contact.operator_id, Some(operators[0].id));
    assert_eq!(contact.lead_id, lead.id);
    assert_eq!(contact.source_id, source.id);
    assert!(contact.assigned_at.is_some() && contact.created_at.is_some());
    assert!(contact.closed_at.is_none());
    assert_eq!(contact.request_id, "");
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);
    assert_eq!(app.get_contact(contact.id).await, contact);
}

async fn register_names_the_source_by_bot_id_or_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("tg", 1, 10).await;
    let mut client = app.contacts.clone();
    let request = |source| pb::RegisterContactRequest {
        source,
        lead: Some(phone_lead("+15550000001")),
        request_id: String::new(),
    };
    let by_bot = client
        .register_contact(request(Some(pb::register_contact_request::Source::BotId(
            "tg".into(),
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_bot.contact.unwrap().source_id, source.id);

    assert_code(
        client.register_contact(request(None)).await,
        Code::InvalidArgument,
        "source",
    );
    assert_code(
        client
            .register_contact(request(Some(
                pb::register_contact_request::Source::SourceId(source.id + 1),
            )))
            .await,
        Code::NotFound,
        "source",
    );
    assert_code(
        client
            .register_contact(request(Some(pb::register_contact_request::Source::BotId(
                "unknown".into(),
            ))))
            .await,
        Code::NotFound,
        "source",
    );
    // The source is resolved first: an unknown one is NOT_FOUND even when the
    // lead is invalid too.
    let unknown_and_invalid = client
        .register_contact(pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(
                source.id + 1,
            )),
            lead: None,
            request_id: String::new(),
        })
        .await;
    assert_code(unknown_and_invalid, Code::NotFound, "source");
    assert_eq!(
        app.all_contacts().await.len(),
        1,
        "only the first call wrote"
    );
}

async fn register_rejects_invalid_requests_and_changes_nothing(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 10).await;
    let lead = |external_id: &str, phone: &str, email: &str, name: &str| pb::LeadIdentity {
        external_id: external_id.into(),
        phone: phone.into(),
        email: email.into(),
        name: name.into(),
    };
    let long = "x".repeat(256);
    let cases = [
        (lead("", "", "", "Ann"), "lead"),
        (lead("  ", " ", "\t", ""), "lead"),
        (lead("", "", "not-an-email", ""), "email"),
        (lead("", "", "a@", ""), "email"),
        (lead("", "1234", "", ""), "phone"),
        (lead("", "+1 555 abc 0000", "", ""), "phone"),
        (lead("", &"1".repeat(21), "", ""), "phone"),
        (lead(&long, "", "", ""), "external_id"),
        (lead("ok", "", "", &long), "name"),
        (lead("ok", "", &format!("{long}@x.y"), ""), "email"),
    ];
    for (identity, field) in cases {
        let result = app.register(source.id, identity, "").await;
        assert_code(result, Code::InvalidArgument, field);
    }
    let too_long_key = app
        .register(source.id, phone_lead("+15550001111"), &long)
        .await;
    assert_code(too_long_key, Code::InvalidArgument, "request_id");
    let no_lead = app
        .contacts
        .clone()
        .register_contact(pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source.id)),
            lead: None,
            request_id: String::new(),
        })
        .await;
    assert_code(no_lead, Code::InvalidArgument, "lead");

    assert!(app.all_contacts().await.is_empty());
    assert!(app.all_leads().await.is_empty());
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 0);
}

async fn register_without_candidates_leaves_the_contact_pending(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let empty_table = app.create_source("nobody").await;
    let response = app
        .register(empty_table.id, phone_lead("+15550000001"), "")
        .await
        .unwrap();
    let contact = response.contact.unwrap();
    assert_eq!(status(&contact), ContactStatus::Pending);
    assert_eq!(contact.operator_id, None);
    assert!(contact.assigned_at.is_none());

    let (full, operators) = app.source_with_operators("full", 2, 1).await;
    let mut statuses = Vec::new();
    for index in 0..3 {
        let contact = app
            .register(full.id, phone_lead(&format!("+1555100000{index}")), "")
            .await
            .unwrap()
            .contact
            .unwrap();
        statuses.push(status(&contact));
    }
    assert_eq!(
        statuses,
        [
            ContactStatus::Active,
            ContactStatus::Active,
            ContactStatus::Pending
        ]
    );
    for operator in operators {
        assert_eq!(app.get_operator(operator.id).await.active_load, 1);
    }
    app.assert_invariant().await;
}

async fn register_draws_only_active_operators_with_room(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let inactive = app
        .operators
        .clone()
        .create_operator(pb::CreateOperatorRequest {
            name: "away".into(),
            is_active: Some(false),
            max_load: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let zero = app.create_operator("zero", 0).await;
    let open = app.create_operator("open", 100).await;
    app.set_weights(
        source.id,
        &[(inactive.id, 1_000_000), (zero.id, 1_000_000), (open.id, 1)],
    )
    .await;
    for index in 0..20 {
        let contact = app
            .register(source.id, phone_lead(&format!("+155520000{index:02}")), "")
            .await
            .unwrap()
            .contact
            .unwrap();
        assert_eq!(contact.operator_id, Some(open.id));
    }
    assert_eq!(app.get_operator(inactive.id).await.active_load, 0);
    assert_eq!(app.get_operator(zero.id).await.active_load, 0);
    assert_eq!(app.get_operator(open.id).await.active_load, 20);
}

async fn retry_with_the_same_request_id_returns_the_first_result(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 10).await;
    let other_source = app.create_source("other").await;
    let first = app
        .register(source.id, phone_lead("+15550000001"), "req-1")
        .await
        .unwrap();
    assert!(first.lead_created);
    assert_eq!(first.contact.as_ref().unwrap().request_id, "req-1");

    // Same key, different everything else: still the first call's result.
    let retry = app
        .register(
            other_source.id,
            pb::LeadIdentity {
                email: "someone@else.org".into(),
                ..Default::default()
            },
            "req-1",
        )
        .await
        .unwrap();
    assert_eq!(retry, first);
    // So does a retry naming a source that does not exist.
    let unknown_source = app
        .register(source.id + 100, phone_lead("+15550000002"), "req-1")
        .await
        .unwrap();
    assert_eq!(unknown_source, first);
    // Even a retry that would not validate on its own gets the first result.
    let invalid_retry = app
        .register(source.id, pb::LeadIdentity::default(), "req-1")
        .await
        .unwrap();
    assert_eq!(invalid_retry, first);

    assert_eq!(app.all_contacts().await.len(), 1);
    assert_eq!(app.all_leads().await.len(), 1);
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);

    let second = app
        .register(source.id, phone_lead("+15550000001"), "req-2")
        .await
        .unwrap();
    assert!(!second.lead_created);
    assert_ne!(second.contact.unwrap().id, first.contact.unwrap().id);
}

async fn rejected_request_does_not_use_up_its_request_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 1, 10).await;
    let rejected = app.register(source.id, phone_lead("12"), "req-x").await;
    assert_code(rejected, Code::InvalidArgument, "phone");
    let unknown_source = app
        .register(source.id + 1, phone_lead("+15550000001"), "req-x")
        .await;
    assert_code(unknown_source, Code::NotFound, "source");
    let accepted = app
        .register(source.id, phone_lead("+15550000001"), "req-x")
        .await
        .unwrap();
    assert!(accepted.lead_created);
    assert_eq!(accepted.contact.unwrap().request_id, "req-x");
}

async fn register_reports_a_malformed_source_before_an_invalid_lead(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut client = app.contacts.clone();
    let request = |source, request_id: &str| pb::RegisterContactRequest {
        source,
        lead: Some(phone_lead("12")),
        request_id: request_id.into(),
    };
    let no_source = client.register_contact(request(None, "")).await;
    assert_code(no_source, Code::InvalidArgument, "source");
    let blank_bot_id = client
        .register_contact(request(
            Some(pb::register_contact_request::Source::BotId(" ".into())),
            "",
        ))
        .await;
    assert_code(blank_bot_id, Code::InvalidArgument, "bot_id");
    // The request_id comes first of all.
    let too_long_key = client
        .register_contact(request(None, &"x".repeat(256)))
        .await;
    assert_code(too_long_key, Code::InvalidArgument, "request_id");
    assert!(app.all_contacts().await.is_empty());
}

async fn get_contact_and_unknown_ids(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut contacts = app.contacts.clone();
    assert_code(
        contacts.get_contact(pb::GetContactRequest { id: 7 }).await,
        Code::NotFound,
        "contact",
    );
    assert_code(
        contacts.get_lead(pb::GetLeadRequest { id: 7 }).await,
        Code::NotFound,
        "lead",
    );
    assert_code(
        contacts
            .close_contact(pb::CloseContactRequest { id: 7 })
            .await,
        Code::NotFound,
        "contact",
    );
}

async fn list_contacts_filters_combine_and_page_by_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (a, a_ops) = app.source_with_operators("a", 1, 2).await;
    let b = app.create_source("b").await;
    let mut ids = Vec::new();
    for index in 0..3 {
        let contact = app
            .register(a.id, phone_lead(&format!("+1555300000{index}")), "")
            .await
            .unwrap()
            .contact
            .unwrap();
        ids.push(contact.id);
    }
    let in_b = app
        .register(b.id, phone_lead("+15553000000"), "")
        .await
        .unwrap()
        .contact
        .unwrap();
    let lead_id = in_b.lead_id;
    let list = |filter: pb::ListContactsRequest| {
        let mut client = app.contacts.clone();
        async move {
            client
                .list_contacts(filter)
                .await
                .unwrap()
                .into_inner()
                .contacts
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(pb::ListContactsRequest::default()).await,
        [ids[0], ids[1], ids[2], in_b.id]
    );
    assert_eq!(
        list(pb::ListContactsRequest {
            source_id: Some(a.id),
            ..Default::default()
        })
        .await,
        ids
    );
    assert_eq!(
        list(pb::ListContactsRequest {
            operator_id: Some(a_ops[0].id),
            status: ContactStatus::Active as i32,
            ..Default::default()
        })
        .await,
        ids[..2]
    );
    assert_eq!(
        list(pb::ListContactsRequest {
            status: ContactStatus::Pending as i32,
            ..Default::default()
        })
        .await,
        [ids[2], in_b.id]
    );
    assert_eq!(
        list(pb::ListContactsRequest {
            lead_id: Some(lead_id),
            ..Default::default()
        })
        .await,
        [ids[0], in_b.id]
    );
    assert_eq!(
        list(pb::ListContactsRequest {
            lead_id: Some(lead_id),
            source_id: Some(b.id),
            status: ContactStatus::Pending as i32,
            ..Default::default()
        })
        .await,
        [in_b.id]
    );

    let mut client = app.contacts.clone();
    let first = client
        .list_contacts(pb::ListContactsRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.contacts.len(), 3);
    let rest = client
        .list_contacts(pb::ListContactsRequest {
            page_size: 3,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.contacts.iter().map(|c| c.id).collect::<Vec<_>>(),
        [in_b.id]
    );
    assert!(rest.next_page_token.is_empty());
    assert_code(
        client
            .list_contacts(pb::ListContactsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_code(
        client
            .list_contacts(pb::ListContactsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
}

async fn list_contacts_filter_naming_unknown_id_is_not_found(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut client = app.contacts.clone();
    for (request, what) in [
        (
            pb::ListContactsRequest {
                operator_id: Some(99),
                ..Default::default()
            },
            "operator",
        ),
        (
            pb::ListContactsRequest {
                source_id: Some(99),
                ..Default::default()
            },
            "source",
        ),
        (
            pb::ListContactsRequest {
                lead_id: Some(99),
                ..Default::default()
            },
            "lead",
        ),
    ] {
        assert_code(client.list_contacts(request).await, Code::NotFound, what);
    }
}

async fn close_active_contact_frees_the_operator(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 5).await;
    let contact = app
        .register(source.id, phone_lead("+15550000001"), "")
        .await
        .unwrap()
        .contact
        .unwrap();
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 1);
    let closed = app.close(contact.id).await.unwrap();
    assert_eq!(status(&closed), ContactStatus::Closed);
    assert!(closed.closed_at.is_some());
    assert_eq!(closed.operator_id, contact.operator_id);
    assert_eq!(closed.assigned_at, contact.assigned_at);
    assert_eq!(closed.created_at, contact.created_at);
    assert_eq!(app.get_operator(operators[0].id).await.active_load, 0);
    assert_eq!(app.get_contact(contact.id).await, closed);
}

async fn close_pending_contact_and_closing_twice(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("nobody").await;
    let pending = app
        .register(source.id, phone_lead("+15550000001"), "")
        .await
        .unwrap()
        .contact
        .unwrap();
    let closed = app.close(pending.id).await.unwrap();
    assert_eq!(status(&closed), ContactStatus::Closed);
    assert_eq!(closed.operator_id, None);
    assert!(closed.assigned_at.is_none());
    assert!(closed.closed_at.is_some());

    let again = app.close(pending.id).await;
    assert_code(again, Code::FailedPrecondition, "closed");
    assert_eq!(app.get_contact(pending.id).await, closed, "unchanged");
}

async fn stats_count_pairs_and_pending_per_source(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let stats = || {
        let mut client = app.contacts.clone();
        async move {
            client
                .get_operator_stats(pb::GetOperatorStatsRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(stats().await, pb::GetOperatorStatsResponse::default());

    let (a, a_ops) = app.source_with_operators("a", 1, 2).await;
    let b = app.create_source("b").await;
    app.set_weights(b.id, &[(a_ops[0].id, 1)]).await;
    let nobody = app.create_source("nobody").await;
    let mut in_a = Vec::new();
    for index in 0..2 {
        in_a.push(
            app.register(a.id, phone_lead(&format!("+1555400000{index}")), "")
                .await
                .unwrap()
                .contact
                .unwrap(),
        );
    }
    app.close(in_a[0].id).await.unwrap();
    // One free slot left: b's contact takes it, the next one waits.
    let in_b = app
        .register(b.id, phone_lead("+15554000009"), "")
        .await
        .unwrap()
        .contact
        .unwrap();
    assert_eq!(status(&in_b), ContactStatus::Active);
    app.register(b.id, phone_lead("+15554000008"), "")
        .await
        .unwrap();
    for index in 0..2 {
        app.register(nobody.id, phone_lead(&format!("+1555500000{index}")), "")
            .await
            .unwrap();
    }

    let report = stats().await;
    let op = a_ops[0].id;
    assert_eq!(
        report.rows,
        [
            pb::OperatorSourceStats {
                operator_id: op,
                source_id: a.id,
                active: 1,
                closed: 1,
                total: 2,
                lapsed: 0,
            },
            pb::OperatorSourceStats {
                operator_id: op,
                source_id: b.id,
                active: 1,
                closed: 0,
                total: 1,
                lapsed: 0,
            },
        ]
    );
    assert_eq!(
        report.pending,
        [
            pb::SourcePending {
                source_id: b.id,
                pending: 1,
            },
            pb::SourcePending {
                source_id: nobody.id,
                pending: 2,
            },
        ]
    );
}
