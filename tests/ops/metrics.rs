//! `--metrics-listen`: after known calls, every series the contract names
//! holds exactly what those calls imply.

use minicrm::proto as pb;
use tonic::{Code, codegen::http::uri::PathAndQuery};

use crate::{
    on_each_backend,
    server::{Server, http_get},
    test_db::TestDb,
};

fn lead(phone: &str) -> pb::LeadIdentity {
    pb::LeadIdentity {
        phone: phone.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_what_known_calls_imply() {
    on_each_backend(metrics_after_known_calls).await;
}

async fn metrics_after_known_calls(db: TestDb) {
    let server = Server::start(&db.url(), &["--metrics-listen", "127.0.0.1:0"], &[]);
    let (mut operators, mut sources, mut contacts) = server.clients().await;

    let before = server.scrape();
    assert_eq!(
        before.sum("minicrm_rpc_requests_total"),
        0.0,
        "{}",
        before.text
    );
    assert_eq!(before.get("minicrm_write_queue_depth", &[]), Some(0.0));
    assert_eq!(before.get("minicrm_contact_lapses_total", &[]), Some(0.0));

    // Writes: 3 operators, 2 sources, 1 weight table, 6 registrations, 1 close.
    let mut operator_ids = Vec::new();
    for (name, max_load, is_active) in [("Ann", 2, true), ("Bob", 1, true), ("Cid", 3, false)] {
        let operator = operators
            .create_operator(pb::CreateOperatorRequest {
                name: name.into(),
                is_active: Some(is_active),
                max_load,
            })
            .await
            .expect("create operator")
            .into_inner();
        operator_ids.push(operator.id);
    }
    let mut source_ids = Vec::new();
    for bot in ["bot-a", "bot-b"] {
        let source = sources
            .create_source(pb::CreateSourceRequest {
                bot_id: bot.into(),
                name: bot.into(),
                ..Default::default()
            })
            .await
            .expect("create source")
            .into_inner();
        source_ids.push(source.id);
    }
    sources
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source_ids[0],
            operators: vec![
                pb::OperatorWeight {
                    operator_id: operator_ids[0],
                    weight: 30,
                },
                pb::OperatorWeight {
                    operator_id: operator_ids[1],
                    weight: 10,
                },
            ],
        })
        .await
        .expect("set weights");
    let mut registered = Vec::new();
    for (index, source_id) in [0, 0, 0, 0, 1, 1].into_iter().enumerate() {
        let response = contacts
            .register_contact(pb::RegisterContactRequest {
                source: Some(pb::register_contact_request::Source::SourceId(
                    source_ids[source_id],
                )),
                lead: Some(lead(&format!("+1555000{index:04}"))),
                request_id: String::new(),
            })
            .await
            .expect("register")
            .into_inner();
        registered.push(response.contact.expect("contact"));
    }
    let active = pb::ContactStatus::Active as i32;
    assert_eq!(
        registered.iter().filter(|c| c.status == active).count(),
        3,
        "Ann takes 2 and Bob 1"
    );
    // Closing an ACTIVE contact dispatches bot-a's pending one to its operator.
    let first_active = registered.iter().find(|c| c.status == active).unwrap();
    contacts
        .close_contact(pb::CloseContactRequest {
            id: first_active.id,
        })
        .await
        .expect("close");

    // Calls that fail: in the handler, before the writer, and unserved.
    let missing = operators
        .get_operator(pb::GetOperatorRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let blank = operators
        .create_operator(pb::CreateOperatorRequest {
            name: " ".into(),
            is_active: None,
            max_load: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(blank.code(), Code::InvalidArgument);
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    raw.ready().await.expect("ready");
    let unserved = raw
        .unary::<_, pb::Contact, _>(
            tonic::Request::new(pb::GetContactRequest { id: 1 }),
            PathAndQuery::from_static("/minicrm.v1.ContactService/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unserved.code(), Code::Unimplemented);

    let scrape = server.scrape();
    let backend = db.backend();
    let requests = |method: &str, code: &str| {
        scrape.value(
            "minicrm_rpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    for (method, code, count) in [
        ("CreateOperator", "OK", 3.0),
        ("CreateOperator", "INVALID_ARGUMENT", 1.0),
        ("CreateSource", "OK", 2.0),
        ("SetSourceOperators", "OK", 1.0),
        ("RegisterContact", "OK", 6.0),
        ("CloseContact", "OK", 1.0),
        ("GetOperator", "NOT_FOUND", 1.0),
        ("unknown", "UNIMPLEMENTED", 1.0),
    ] {
        assert_eq!(
            requests(method, code),
            count,
            "{backend}: {method} {code}\n{}",
            scrape.text
        );
    }
    assert_eq!(
        scrape.sum("minicrm_rpc_requests_total"),
        16.0,
        "{backend}: no other calls\n{}",
        scrape.text
    );
    // Every call timed once, under its method: count, +Inf bucket, a sum > 0.
    for (method, count) in [
        ("CreateOperator", 4.0),
        ("CreateSource", 2.0),
        ("SetSourceOperators", 1.0),
        ("RegisterContact", 6.0),
        ("CloseContact", 1.0),
        ("GetOperator", 1.0),
        ("unknown", 1.0),
    ] {
        let labels = [("method", method)];
        assert_eq!(
            scrape.get("minicrm_rpc_duration_seconds_count", &labels),
            Some(count),
            "{backend}: {method}"
        );
        assert_eq!(
            scrape.get(
                "minicrm_rpc_duration_seconds_bucket",
                &[("method", method), ("le", "+Inf")]
            ),
            Some(count)
        );
        assert!(scrape.value("minicrm_rpc_duration_seconds_sum", &labels) > 0.0);
    }
    // The writer took the 13 writes, in one batch or more, and is idle now.
    assert_eq!(scrape.get("minicrm_write_queue_depth", &[]), Some(0.0));
    assert_eq!(
        scrape.get("minicrm_write_batch_size_sum", &[]),
        Some(13.0),
        "{backend}\n{}",
        scrape.text
    );
    let batches = scrape
        .get("minicrm_write_batch_size_count", &[])
        .expect("batches");
    assert!((1.0..=13.0).contains(&batches), "{batches}");
    assert_eq!(
        scrape.get("minicrm_write_batch_size_bucket", &[("le", "+Inf")]),
        Some(batches)
    );

    assert_database_figures(&scrape, &operator_ids, &source_ids);

    // A second replica on the same database reports the same database
    // figures, and only its own calls (none).
    let replica = Server::start(&db.url(), &["--metrics-listen", "127.0.0.1:0"], &[]);
    let other = replica.scrape();
    assert_database_figures(&other, &operator_ids, &source_ids);
    assert_eq!(other.sum("minicrm_rpc_requests_total"), 0.0);

    // Anything but /metrics is 404.
    let (status, _, _) = http_get(server.metrics.as_deref().unwrap(), "/");
    assert_eq!(status, 404);
}

fn assert_database_figures(scrape: &crate::server::Scrape, operators: &[i64], sources: &[i64]) {
    let id = |id: &i64| id.to_string();
    let pending = |source: &i64| {
        scrape.get(
            "minicrm_pending_contacts",
            &[("source_id", id(source).as_str())],
        )
    };
    assert_eq!(pending(&sources[0]), Some(0.0), "{}", scrape.text);
    assert_eq!(pending(&sources[1]), Some(2.0), "{}", scrape.text);
    assert_eq!(scrape.series("minicrm_pending_contacts").len(), 2);
    for (operator, active_load, max_load, is_active) in [
        (&operators[0], 2.0, 2.0, 1.0),
        (&operators[1], 1.0, 1.0, 1.0),
        (&operators[2], 0.0, 3.0, 0.0),
    ] {
        let labels = [("operator_id", id(operator))];
        let labels = [("operator_id", labels[0].1.as_str())];
        assert_eq!(
            scrape.get("minicrm_operator_active_load", &labels),
            Some(active_load),
            "{}",
            scrape.text
        );
        assert_eq!(
            scrape.get("minicrm_operator_max_load", &labels),
            Some(max_load)
        );
        assert_eq!(
            scrape.get("minicrm_operator_is_active", &labels),
            Some(is_active)
        );
    }
    assert_eq!(scrape.series("minicrm_operator_active_load").len(), 3);
    assert_eq!(scrape.get("minicrm_contact_lapses_total", &[]), Some(0.0));
    assert_eq!(
        scrape.get("minicrm_metrics_database_read_ok", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("minicrm_metrics_series_truncated", &[]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapse_total_is_read_from_the_lapse_columns_once_they_exist() {
    on_each_backend(lapse_total_from_columns).await;
}

/// A contact that lapses once (its source's accept timeout is one second),
/// then is accepted: the total is 1, as GetOperatorStats's `lapsed` says.
async fn lapse_total_from_columns(db: TestDb) {
    let server = Server::start(&db.url(), &["--metrics-listen", "127.0.0.1:0"], &[]);
    let (mut operators, mut sources, mut contacts) = server.clients().await;
    let mut weights = Vec::new();
    for name in ["Ann", "Bob"] {
        let operator = operators
            .create_operator(pb::CreateOperatorRequest {
                name: name.into(),
                is_active: None,
                max_load: 10,
            })
            .await
            .expect("operator")
            .into_inner();
        weights.push(pb::OperatorWeight {
            operator_id: operator.id,
            weight: 1,
        });
    }
    let source = sources
        .create_source(pb::CreateSourceRequest {
            bot_id: "bot".into(),
            name: "bot".into(),
            accept_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("source")
        .into_inner();
    sources
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: weights,
        })
        .await
        .expect("weights");
    let lapses = || server.scrape().get("minicrm_contact_lapses_total", &[]);
    assert_eq!(lapses(), Some(0.0));
    let contact = contacts
        .register_contact(pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source.id)),
            lead: Some(lead("+15551110000")),
            request_id: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .contact
        .expect("contact");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lapsed = loop {
        let now = contacts
            .get_contact(pb::GetContactRequest { id: contact.id })
            .await
            .expect("get")
            .into_inner();
        if now.lapses == 1 {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "no lapse: {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    contacts
        .accept_contact(pb::AcceptContactRequest {
            id: lapsed.id,
            operator_id: lapsed.operator_id.expect("redrawn to the other operator"),
        })
        .await
        .expect("accept");
    let stats = contacts
        .get_operator_stats(pb::GetOperatorStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let lapsed_total: i64 = stats.rows.iter().map(|row| row.lapsed).sum();
    assert_eq!(lapsed_total, 1);
    assert_eq!(lapses(), Some(1.0));
    server.stop();
}
