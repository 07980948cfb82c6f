use minicrm::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, TestDb, assert_code};

crate::backend_tests!(
    create_source_trims_and_rejects_blank_or_taken_bot_id,
    get_source_by_id_or_bot_id,
    list_sources_pages_in_id_order,
    set_source_operators_replaces_the_whole_table,
    set_source_operators_rejects_bad_tables_and_changes_nothing,
    list_source_operators_of_unknown_source_is_not_found,
);

async fn create_source_trims_and_rejects_blank_or_taken_bot_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut client = app.sources.clone();
    let created = client
        .create_source(pb::CreateSourceRequest {
            bot_id: " tg-bot ".into(),
            name: " Telegram ".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.id > 0);
    assert_eq!(
        (created.bot_id.as_str(), created.name.as_str()),
        ("tg-bot", "Telegram")
    );
    assert!(created.created_at.is_some());

    let blank = client
        .create_source(pb::CreateSourceRequest {
            bot_id: "  ".into(),
            name: "x".into(),
            ..Default::default()
        })
        .await;
    assert_code(blank, Code::InvalidArgument, "bot_id");
    let taken = client
        .create_source(pb::CreateSourceRequest {
            bot_id: "tg-bot".into(),
            name: "other".into(),
            ..Default::default()
        })
        .await;
    assert_code(taken, Code::AlreadyExists, "bot_id");
    let sources = client
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert_eq!(sources, [created], "rejected requests created nothing");
}

async fn get_source_by_id_or_bot_id(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let created = app.create_source("wa").await;
    let mut client = app.sources.clone();
    let get = |key| pb::GetSourceRequest { key };
    let by_id = client
        .get_source(get(Some(pb::get_source_request::Key::Id(created.id))))
        .await
        .unwrap()
        .into_inner();
    let by_bot = client
        .get_source(get(Some(pb::get_source_request::Key::BotId("wa".into()))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id, created);
    assert_eq!(by_bot, created);

    assert_code(
        client.get_source(get(None)).await,
        Code::InvalidArgument,
        "id",
    );
    assert_code(
        client
            .get_source(get(Some(pb::get_source_request::Key::Id(created.id + 1))))
            .await,
        Code::NotFound,
        "source",
    );
    assert_code(
        client
            .get_source(get(Some(pb::get_source_request::Key::BotId("nope".into()))))
            .await,
        Code::NotFound,
        "source",
    );
}

async fn list_sources_pages_in_id_order(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(app.create_source(&format!("bot{index}")).await.id);
    }
    let mut client = app.sources.clone();
    let first = client
        .list_sources(pb::ListSourcesRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.sources.iter().map(|s| s.id).collect::<Vec<_>>(),
        ids[..2]
    );
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_sources(pb::ListSourcesRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.sources.iter().map(|s| s.id).collect::<Vec<_>>(),
        ids[2..]
    );
    assert!(second.next_page_token.is_empty());
    assert_code(
        client
            .list_sources(pb::ListSourcesRequest {
                page_size: -3,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_code(
        client
            .list_sources(pb::ListSourcesRequest {
                page_size: 0,
                page_token: "v1.zz".into(),
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
}

fn table(entries: &[(i64, i32)]) -> Vec<pb::OperatorWeight> {
    entries
        .iter()
        .map(|&(operator_id, weight)| pb::OperatorWeight {
            operator_id,
            weight,
        })
        .collect()
}

async fn set_source_operators_replaces_the_whole_table(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let a = app.create_operator("a", 1).await.id;
    let b = app.create_operator("b", 1).await.id;
    let c = app.create_operator("c", 1).await.id;
    let mut client = app.sources.clone();

    let set = client
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: table(&[(c, 30), (a, 10), (b, 1_000_000)]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.operators, table(&[(a, 10), (b, 1_000_000), (c, 30)]));

    let replaced = client
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: table(&[(b, 1)]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.operators, table(&[(b, 1)]));
    let listed = client
        .list_source_operators(pb::ListSourceOperatorsRequest {
            source_id: source.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operators, table(&[(b, 1)]));

    let cleared = client
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.operators.is_empty());
    let listed = client
        .list_source_operators(pb::ListSourceOperatorsRequest {
            source_id: source.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.operators.is_empty());
}

async fn set_source_operators_rejects_bad_tables_and_changes_nothing(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let source = app.create_source("bot").await;
    let a = app.create_operator("a", 1).await.id;
    let b = app.create_operator("b", 1).await.id;
    app.set_weights(source.id, &[(a, 5)]).await;
    let mut client = app.sources.clone();
    let set = |source_id, entries: &[(i64, i32)]| pb::SetSourceOperatorsRequest {
        source_id,
        operators: table(entries),
    };

    let cases = [
        (
            set(source.id, &[(a, 1), (b + 100, 1)]),
            Code::NotFound,
            "operator",
        ),
        (set(source.id + 100, &[(a, 1)]), Code::NotFound, "source"),
        // An unknown source is reported before what is wrong with the table.
        (set(source.id + 100, &[(a, 0)]), Code::NotFound, "source"),
        (
            set(source.id, &[(a, 1), (b, 2), (a, 3)]),
            Code::InvalidArgument,
            "operator_id",
        ),
        (set(source.id, &[(b, 0)]), Code::InvalidArgument, "weight"),
        (
            set(source.id, &[(b, 1_000_001)]),
            Code::InvalidArgument,
            "weight",
        ),
        (
            set(source.id, &[(a, 2), (b, -1)]),
            Code::InvalidArgument,
            "weight",
        ),
    ];
    for (request, code, field) in cases {
        assert_code(client.set_source_operators(request).await, code, field);
    }
    let listed = client
        .list_source_operators(pb::ListSourceOperatorsRequest {
            source_id: source.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operators, table(&[(a, 5)]), "the table is as it was");
}

async fn list_source_operators_of_unknown_source_is_not_found(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let result = app
        .sources
        .clone()
        .list_source_operators(pb::ListSourceOperatorsRequest { source_id: 42 })
        .await;
    assert_code(result, Code::NotFound, "source");
}
