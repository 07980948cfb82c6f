use minicrm::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, TestDb, assert_code};

crate::backend_tests!(
    lead_is_found_by_external_id_then_phone_then_email,
    found_lead_gets_missing_identifiers_but_keeps_its_own,
    identifiers_held_by_another_lead_are_not_filled_in,
    phone_and_email_match_after_normalization,
    list_leads_pages_in_id_order,
);

fn identity(external_id: &str, phone: &str, email: &str, name: &str) -> pb::LeadIdentity {
    pb::LeadIdentity {
        external_id: external_id.into(),
        phone: phone.into(),
        email: email.into(),
        name: name.into(),
    }
}

async fn register(app: &TestApp, source_id: i64, lead: pb::LeadIdentity) -> (pb::Lead, bool) {
    let response = app.register(source_id, lead, "").await.unwrap();
    (response.lead.unwrap(), response.lead_created)
}

async fn lead_is_found_by_external_id_then_phone_then_email(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await.id;
    let (by_ext, _) = register(&app, source, identity("ext-1", "", "", "")).await;
    let (by_phone, _) = register(&app, source, identity("", "+15550000001", "", "")).await;
    let (by_email, _) = register(&app, source, identity("", "", "c@example.com", "")).await;

    // Every identifier points at a different lead: external_id wins.
    let (found, created) = register(
        &app,
        source,
        identity("ext-1", "+15550000001", "c@example.com", ""),
    )
    .await;
    assert!(!created);
    assert_eq!(found.id, by_ext.id);
    // Without external_id, phone wins over email.
    let (found, _) = register(
        &app,
        source,
        identity("", "+15550000001", "c@example.com", ""),
    )
    .await;
    assert_eq!(found.id, by_phone.id);
    // An unknown external_id does not stop the lookup by phone.
    let (found, created) =
        register(&app, source, identity("ext-new", "+15550000001", "", "")).await;
    assert!(!created);
    assert_eq!(found.id, by_phone.id);
    let (found, _) = register(&app, source, identity("", "", "c@example.com", "")).await;
    assert_eq!(found.id, by_email.id);
    assert_eq!(app.all_leads().await.len(), 3);
}

async fn found_lead_gets_missing_identifiers_but_keeps_its_own(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await.id;
    let (first, created) = register(&app, source, identity("", "+15550000001", "", "")).await;
    assert!(created);
    assert_eq!(first.name, "");

    let (filled, created) = register(
        &app,
        source,
        identity("ext-9", "+15550000001", "ann@example.com", "Ann"),
    )
    .await;
    assert!(!created);
    assert_eq!(filled.id, first.id);
    assert_eq!(
        (
            filled.external_id.as_str(),
            filled.phone.as_str(),
            filled.email.as_str(),
            filled.name.as_str()
        ),
        ("ext-9", "+15550000001", "ann@example.com", "Ann")
    );

    // Found by external_id: its phone, email and name stay as they are.
    let (kept, _) = register(
        &app,
        source,
        identity("ext-9", "+15559999999", "other@example.com", "Someone"),
    )
    .await;
    assert_eq!(kept, filled);
    let stored = app
        .contacts
        .clone()
        .get_lead(pb::GetLeadRequest { id: first.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored, filled);
    assert_eq!(app.all_leads().await.len(), 1);
}

async fn identifiers_held_by_another_lead_are_not_filled_in(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await.id;
    let (with_email, _) = register(&app, source, identity("", "", "ann@example.com", "")).await;
    let (with_phone, _) = register(&app, source, identity("", "+15550000001", "", "")).await;

    // Found by phone; the email belongs to the other lead, so it stays there.
    let (found, created) = register(
        &app,
        source,
        identity("", "+15550000001", "ann@example.com", ""),
    )
    .await;
    assert!(!created);
    assert_eq!(found.id, with_phone.id);
    assert_eq!(found.email, "");
    let email_owner = app
        .contacts
        .clone()
        .get_lead(pb::GetLeadRequest { id: with_email.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email_owner, with_email);
}

async fn phone_and_email_match_after_normalization(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await.id;
    let (lead, _) = register(&app, source, identity("", "+7 (912) 345-67-89", "", "")).await;
    assert_eq!(lead.phone, "+79123456789");
    let (same, created) = register(&app, source, identity("", " +7.912.345.6789 ", "", "")).await;
    assert!(!created);
    assert_eq!(same.id, lead.id);

    let (mail, _) = register(&app, source, identity("", "", " Bob@Example.COM ", "")).await;
    assert_eq!(mail.email, "bob@example.com");
    let (same, created) = register(&app, source, identity("", "", "bob@example.com", "")).await;
    assert!(!created);
    assert_eq!(same.id, mail.id);

    let (ext, _) = register(&app, source, identity("  ext-1  ", "", "", "  Ann  ")).await;
    assert_eq!(
        (ext.external_id.as_str(), ext.name.as_str()),
        ("ext-1", "Ann")
    );
}

async fn list_leads_pages_in_id_order(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await.id;
    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(
            register(&app, source, identity(&format!("ext-{index}"), "", "", ""))
                .await
                .0
                .id,
        );
    }
    let mut client = app.contacts.clone();
    let first = client
        .list_leads(pb::ListLeadsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = client
        .list_leads(pb::ListLeadsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<i64> = first
        .leads
        .iter()
        .chain(&second.leads)
        .map(|l| l.id)
        .collect();
    assert_eq!(seen, ids);
    assert!(second.next_page_token.is_empty());
    assert_code(
        client
            .list_leads(pb::ListLeadsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
}
