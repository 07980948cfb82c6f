//! API.md "Security": bearer tokens and roles on every call (health open,
//! reflection for any role), the tokens file reloaded on SIGHUP by the real
//! binary, and the safe default that refuses a non-loopback address without
//! tokens.

use std::{collections::BTreeSet, path::Path, process::ExitStatus, time::Duration};

use minicrm::{
    config::Settings,
    proto::{
        self as pb, contact_service_client::ContactServiceClient,
        operator_service_client::OperatorServiceClient, source_service_client::SourceServiceClient,
    },
};
use prost::Message;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{TestDb, TestServer, test_settings};

const ROLES: [&str; 4] = ["admin", "intake", "desk", "viewer"];

/// The RPCs the contract names that `proto/` may not have yet: the role
/// table covers them by path, so they are tested as well.
const CONTRACT_ONLY_METHODS: [&str; 6] = [
    "/minicrm.v1.ContactService/AcceptContact",
    "/minicrm.v1.ContactService/TransferContact",
    "/minicrm.v1.ContactService/ListContactEvents",
    "/minicrm.v1.ContactService/WatchContactEvents",
    "/minicrm.v1.OperatorService/ReleaseOperatorContacts",
    "/minicrm.v1.SourceService/UpdateSource",
];

/// The secret token each role's caller sends.
fn token(role: &str) -> String {
    format!("{role}-0f3c9a1e5b7d2468ace13579bdf02468")
}

/// What `sha256sum` prints for the token.
pub fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A tokens file with one caller of each role, as an operator would write it.
fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from("# minicrm tokens: ROLE NAME SHA256HEX\n\n");
    for (role, name) in ROLES.iter().zip(["ops", "bot-gateway", "alice", "grafana"]) {
        text.push_str(&format!(
            "{role} {name} {}  # {name}'s token\n",
            sha256_hex(&token(role))
        ));
    }
    let path = dir.join("tokens");
    std::fs::write(&path, text).expect("write tokens file");
    path
}

/// Every RPC path of the service: those in `proto/` and those the contract
/// names ahead of them.
fn every_method() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods: BTreeSet<String> = set
        .file
        .iter()
        .filter(|file| file.package() == "minicrm.v1")
        .flat_map(|file| &file.service)
        .flat_map(|service| {
            service
                .method
                .iter()
                .map(move |method| format!("/minicrm.v1.{}/{}", service.name(), method.name()))
        })
        .collect();
    assert!(methods.len() >= 16, "the protos' methods: {methods:?}");
    methods.extend(CONTRACT_ONLY_METHODS.map(str::to_owned));
    methods
}

/// Whether the contract lets `role` call `path`, written from API.md's words:
/// admin everything; intake four calls; desk accept, transfer, close and
/// every Get, List and Watch call (GetOperatorStats is one); viewer every
/// Get, List and Watch call.
fn contract_allows(role: &str, path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap();
    let read = ["Get", "List", "Watch"]
        .iter()
        .any(|verb| method.starts_with(verb));
    match role {
        "admin" => true,
        "intake" => matches!(
            method,
            "RegisterContact" | "GetSource" | "GetContact" | "GetLead"
        ),
        "desk" => read || matches!(method, "AcceptContact" | "TransferContact" | "CloseContact"),
        "viewer" => read,
        _ => unreachable!(),
    }
}

/// Calls any method by its path with an empty request message, with the
/// given `authorization` header, and returns the status code. A streaming
/// answer counts as OK once its headers arrive (it is not read further).
async fn call_path(channel: &Channel, path: &str, authorization: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut request = Request::new(());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.server_streaming(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Adds `authorization: Bearer TOKEN` to every call of a generated client.
fn with_token(
    token: &str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
    let value: MetadataValue<_> = bearer(token).parse().unwrap();
    move |mut request: Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        Ok(request)
    }
}

async fn connect(address: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("client connects")
}

/// A server over SQLite with one token of each role.
async fn server_with_tokens(db: &TestDb, dir: &Path) -> TestServer {
    TestServer::start(&Settings {
        auth_tokens: Some(tokens_file(dir)),
        ..test_settings(db)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_without_a_token_and_with_a_bad_one() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(&db, dir.path()).await;
    let channel = connect(server.address).await;

    for path in every_method() {
        for role in ROLES {
            let code = call_path(&channel, &path, Some(&bearer(&token(role)))).await;
            if contract_allows(role, &path) {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{role} may call {path}, got {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{role} calling {path}");
            }
        }
        let unknown = sha256_hex(&token("admin"));
        for authorization in [
            None,
            Some(bearer("not-a-token")),
            // The hash in the file is not the token.
            Some(bearer(&unknown)),
            Some(bearer(&format!("{}x", token("admin")))),
            Some(format!("Basic {}", token("admin"))),
            Some(token("admin")),
            Some("Bearer".to_owned()),
        ] {
            assert_eq!(
                call_path(&channel, &path, authorization.as_deref()).await,
                Code::Unauthenticated,
                "{path} with authorization {authorization:?}"
            );
        }
    }
    // A method the server does not have: still authenticated first, and
    // only admin gets as far as UNIMPLEMENTED.
    let nothing = "/minicrm.v1.ContactService/NoSuchCall";
    assert_eq!(
        call_path(&channel, nothing, None).await,
        Code::Unauthenticated
    );
    assert_eq!(
        call_path(&channel, nothing, Some(&bearer(&token("viewer")))).await,
        Code::PermissionDenied
    );
    assert_eq!(
        call_path(&channel, nothing, Some(&bearer(&token("admin")))).await,
        Code::Unimplemented
    );
    // The scheme is case-insensitive.
    assert_eq!(
        call_path(
            &channel,
            "/minicrm.v1.OperatorService/ListOperators",
            Some(&format!("bearer {}", token("viewer")))
        )
        .await,
        Code::Ok
    );
    server.stop().await;
}

/// The roles at work with the generated clients: what each may do succeeds
/// and changes the data, what it may not is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_work_end_to_end() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(&db, dir.path()).await;
    let channel = connect(server.address).await;
    let operators = |role: &str| {
        OperatorServiceClient::with_interceptor(channel.clone(), with_token(&token(role)))
    };
    let sources = |role: &str| {
        SourceServiceClient::with_interceptor(channel.clone(), with_token(&token(role)))
    };
    let contacts = |role: &str| {
        ContactServiceClient::with_interceptor(channel.clone(), with_token(&token(role)))
    };

    // admin sets up an operator and a source.
    let operator = operators("admin")
        .create_operator(pb::CreateOperatorRequest {
            name: "Ann".into(),
            max_load: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let source = sources("admin")
        .create_source(pb::CreateSourceRequest {
            bot_id: "telegram".into(),
            name: "Telegram".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    sources("admin")
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: vec![pb::OperatorWeight {
                operator_id: operator.id,
                weight: 1,
            }],
        })
        .await
        .unwrap();
    for role in ["intake", "desk", "viewer"] {
        let refused = operators(role)
            .create_operator(pb::CreateOperatorRequest {
                name: "Mallory".into(),
                max_load: 5,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
        assert!(refused.message().contains(role), "{}", refused.message());
    }

    // intake registers a contact and reads it back, but lists nothing.
    let registered = contacts("intake")
        .register_contact(pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::BotId(
                "telegram".into(),
            )),
            lead: Some(pb::LeadIdentity {
                phone: "+15550100001".into(),
                ..Default::default()
            }),
            request_id: "msg-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let contact = registered.contact.unwrap();
    assert_eq!(contact.operator_id, Some(operator.id));
    let read = contacts("intake")
        .get_contact(pb::GetContactRequest { id: contact.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.id, contact.id);
    let refused = contacts("intake")
        .list_contacts(pb::ListContactsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // viewer reads everything but cannot close; desk closes.
    let listed = contacts("viewer")
        .list_contacts(pb::ListContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.contacts.len(), 1);
    let refused = contacts("viewer")
        .close_contact(pb::CloseContactRequest { id: contact.id })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let closed = contacts("desk")
        .close_contact(pb::CloseContactRequest { id: contact.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.status, pb::ContactStatus::Closed as i32);
    let stats = contacts("viewer")
        .get_operator_stats(pb::GetOperatorStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.rows.len(), 1);

    // Nothing refused was written.
    let all = operators("viewer")
        .list_operators(pb::ListOperatorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.operators.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_to_all_and_reflection_needs_a_valid_token() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_tokens(&db, dir.path()).await;
    let channel = connect(server.address).await;

    for authorization in [None, Some("Bearer not-a-token"), Some("Basic x")] {
        let mut request = Request::new(HealthCheckRequest {
            service: "minicrm.v1.ContactService".into(),
        });
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let answer = HealthClient::new(channel.clone())
            .check(request)
            .await
            .expect("health is open")
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
    }

    let list_v1 = |authorization: Option<String>| {
        let channel = channel.clone();
        async move {
            let mut request = Request::new(tokio_stream::iter([v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                )),
            }]));
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel)
                .server_reflection_info(request)
                .await?
                .into_inner();
            let answer = stream.message().await?.expect("an answer");
            match answer.message_response {
                Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(
                    list,
                )) => Ok(list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
    let list_v1alpha = |authorization: Option<String>| {
        let channel = channel.clone();
        async move {
            let mut request =
                Request::new(tokio_stream::iter([v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        v1alpha::server_reflection_request::MessageRequest::ListServices(
                            String::new(),
                        ),
                    ),
                }]));
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            let mut stream =
                v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
                    .server_reflection_info(request)
                    .await?
                    .into_inner();
            let answer = stream.message().await?.expect("an answer");
            match answer.message_response {
                Some(
                    v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                        list,
                    ),
                ) => Ok(list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
    for authorization in [None, Some(bearer("not-a-token"))] {
        let refused: Result<Vec<String>, Status> = list_v1(authorization.clone()).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
        let refused: Result<Vec<String>, Status> = list_v1alpha(authorization).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    }
    for role in ROLES {
        let names: Vec<String> = list_v1(Some(bearer(&token(role)))).await.unwrap();
        assert!(
            names.iter().any(|name| name == "minicrm.v1.ContactService"),
            "{role}: {names:?}"
        );
        let names: Vec<String> = list_v1alpha(Some(bearer(&token(role)))).await.unwrap();
        assert!(
            names.iter().any(|name| name == "minicrm.v1.ContactService"),
            "{role}: {names:?}"
        );
    }
    server.stop().await;
}

/// A tokens file that does not parse stops the start, naming the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tokens_file_stops_the_start() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let secret = token("admin");
    std::fs::write(
        &path,
        format!("admin ops {}\nadmin {secret}\n", sha256_hex("x")),
    )
    .unwrap();
    let settings = Settings {
        auth_tokens: Some(path.clone()),
        ..test_settings(&db)
    };
    let error = match minicrm::startup::Application::build(&settings).await {
        Ok(_) => panic!("a bad tokens file is refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("--auth-tokens"), "{error}");
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains(&secret), "{error}");

    let settings = Settings {
        auth_tokens: Some(dir.path().join("missing")),
        ..test_settings(&db)
    };
    let error = match minicrm::startup::Application::build(&settings).await {
        Ok(_) => panic!("a missing tokens file is refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("missing"), "{error}");
}

pub use crate::child::ServerProcess;

/// How these tests run the real binary (the shared [`ServerProcess`]): in a
/// directory of the test's, logging at debug, without colours.
pub trait ApiProcess: Sized {
    fn start(args: &[&str], dir: &Path) -> Self {
        Self::start_with_env(args, dir, &[])
    }

    /// With none of the caller's minicrm settings in its environment but `env`.
    fn start_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self;

    /// The address from the "serving" line.
    fn wait_until_serving(&self) -> std::net::SocketAddr;

    /// Its exit status, which must come within `timeout`.
    fn exited_within(&mut self, timeout: Duration) -> ExitStatus;
}

impl ApiProcess for ServerProcess {
    fn start_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = crate::child::command();
        command
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        ServerProcess::spawn(command, crate::child::Colours::Strip)
    }

    fn wait_until_serving(&self) -> std::net::SocketAddr {
        let line = self.wait_for("minicrm serving gRPC", Duration::from_secs(60));
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let address: std::net::SocketAddr = address.parse().unwrap();
        // 0.0.0.0 means every interface: call it on loopback.
        std::net::SocketAddr::from(([127, 0, 0, 1], address.port()))
    }

    fn exited_within(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "minicrm did not exit within {timeout:?}; the log:\n{}",
                self.log()
            )
        })
    }
}

/// SIGHUP to the real binary: a file that parses replaces the tokens, one
/// that does not is logged and the old tokens stay; the server goes on
/// serving, and neither a token nor a hash is ever logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_file_and_keeps_the_old_one_when_it_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (first, second) = ("first-admin-7d1e0b52c4", "second-viewer-93af6c0d8e");
    std::fs::write(&tokens, format!("admin ops {}\n", sha256_hex(first))).unwrap();
    let database = format!("sqlite://{}", dir.path().join("minicrm.db").display());
    let mut server = ServerProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--auth-tokens",
            tokens.to_str().unwrap(),
        ],
        dir.path(),
    );
    let channel = connect(server.wait_until_serving()).await;
    let list = "/minicrm.v1.OperatorService/ListOperators";
    let create = "/minicrm.v1.OperatorService/CreateOperator";
    assert_eq!(
        call_path(&channel, list, Some(&bearer(first))).await,
        Code::Ok
    );
    assert_eq!(
        call_path(&channel, list, Some(&bearer(second))).await,
        Code::Unauthenticated
    );

    // A new file: the first token is gone, the second is a viewer's.
    std::fs::write(
        &tokens,
        format!("# rotated\nviewer grafana {}\n", sha256_hex(second)),
    )
    .unwrap();
    server.signal("HUP");
    let line = server.wait_for("reloaded the tokens file", Duration::from_secs(10));
    assert!(line.contains("tokens=1"), "{line}");
    assert_eq!(
        call_path(&channel, list, Some(&bearer(first))).await,
        Code::Unauthenticated
    );
    assert_eq!(
        call_path(&channel, list, Some(&bearer(second))).await,
        Code::Ok
    );
    assert_eq!(
        call_path(&channel, create, Some(&bearer(second))).await,
        Code::PermissionDenied
    );

    // A file that does not parse (a raw token where the hash goes): logged,
    // and the viewer's token still works.
    std::fs::write(
        &tokens,
        format!("admin ops {}\nadmin oops {first}\n", sha256_hex("another")),
    )
    .unwrap();
    server.signal("HUP");
    let line = server.wait_for("cannot reload the tokens file", Duration::from_secs(10));
    assert!(line.contains("line 2"), "{line}");
    assert_eq!(
        call_path(&channel, list, Some(&bearer(second))).await,
        Code::Ok
    );
    assert_eq!(
        call_path(&channel, list, Some(&bearer(first))).await,
        Code::Unauthenticated
    );

    // A file that is gone: the same.
    std::fs::remove_file(&tokens).unwrap();
    server.signal("HUP");
    server.wait_for("cannot reload the tokens file", Duration::from_secs(10));
    assert_eq!(
        call_path(&channel, list, Some(&bearer(second))).await,
        Code::Ok
    );

    // SIGHUP did not stop it; SIGTERM does, cleanly.
    assert!(server.try_wait().is_none(), "still serving");
    drop(channel);
    server.signal("TERM");
    let status = server.exited_within(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    let log = server.log();
    for secret in [
        first.to_owned(),
        second.to_owned(),
        sha256_hex(first),
        sha256_hex(second),
        sha256_hex("another"),
    ] {
        assert!(!log.contains(&secret), "the log shows a secret:\n{log}");
    }
}

/// Without a tokens file the binary refuses a non-loopback address (clear
/// message, non-zero exit, no database touched) unless told
/// --allow-unauthenticated; with tokens it serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_on_a_non_loopback_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("minicrm.db");
    let database = format!("sqlite://{}", db_path.display());

    let mut refused = ServerProcess::start(
        &["--listen", "0.0.0.0:0", "--database-url", &database],
        dir.path(),
    );
    let status = refused.exited_within(Duration::from_secs(30));
    assert!(!status.success(), "{status:?}");
    let log = refused.log();
    assert!(log.contains("refusing to serve 0.0.0.0:0"), "{log}");
    assert!(log.contains("--auth-tokens"), "{log}");
    assert!(log.contains("--allow-unauthenticated"), "{log}");
    assert!(!db_path.exists(), "nothing was opened");

    // Explicitly allowed: it serves, and anyone may call.
    let mut allowed = ServerProcess::start(
        &[
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            &database,
            "--allow-unauthenticated",
        ],
        dir.path(),
    );
    let channel = connect(allowed.wait_until_serving()).await;
    assert_eq!(
        call_path(&channel, "/minicrm.v1.OperatorService/ListOperators", None).await,
        Code::Ok
    );
    assert!(
        allowed.log().contains("serving without authentication"),
        "{}",
        allowed.log()
    );
    drop(channel);
    allowed.signal("TERM");
    assert!(allowed.exited_within(Duration::from_secs(15)).success());

    // With tokens it serves the address, and calls need a token.
    let tokens = tokens_file(dir.path());
    let mut with_tokens = ServerProcess::start(
        &[
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            &database,
            "--auth-tokens",
            tokens.to_str().unwrap(),
        ],
        dir.path(),
    );
    let channel = connect(with_tokens.wait_until_serving()).await;
    let list = "/minicrm.v1.OperatorService/ListOperators";
    assert_eq!(call_path(&channel, list, None).await, Code::Unauthenticated);
    assert_eq!(
        call_path(&channel, list, Some(&bearer(&token("viewer")))).await,
        Code::Ok
    );
    drop(channel);
    with_tokens.signal("TERM");
    assert!(with_tokens.exited_within(Duration::from_secs(15)).success());
}
