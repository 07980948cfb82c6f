use minicrm::proto as pb;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{TestApp, TestDb, phone_lead};

crate::backend_tests!(
    health_reports_every_service_serving,
    reflection_v1_and_v1alpha_list_the_services,
    data_survives_a_graceful_restart,
);

async fn health_reports_every_service_serving(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "minicrm.v1.OperatorService",
        "minicrm.v1.SourceService",
        "minicrm.v1.ContactService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

async fn reflection_v1_and_v1alpha_list_the_services(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let expected = [
        "minicrm.v1.ContactService",
        "minicrm.v1.OperatorService",
        "minicrm.v1.SourceService",
        "grpc.health.v1.Health",
    ];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1 reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1 lacks {name}: {names:?}"
        );
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "minicrm.v1.ContactService".into(),
            ),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected v1alpha reflection answer");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

async fn data_survives_a_graceful_restart(db: TestDb) {
    let app = TestApp::spawn(&db).await;
    let (source, operators) = app.source_with_operators("bot", 1, 3).await;
    let registered = app
        .register(source.id, phone_lead("+15550000001"), "keep-me")
        .await
        .unwrap();
    app.stop().await;

    let restarted = TestApp::spawn(&db).await;
    let again = restarted
        .register(source.id, phone_lead("+15559999999"), "keep-me")
        .await
        .unwrap();
    assert_eq!(again, registered, "the acknowledged write is still there");
    assert_eq!(restarted.get_operator(operators[0].id).await.active_load, 1);
    let sources = restarted
        .sources
        .clone()
        .list_sources(pb::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert_eq!(sources, [source]);
}
