//! TLS and mutual TLS for gRPC (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`), with certificates made at run time; and the
//! certificate authority the PostgreSQL TLS tests use too.

use std::path::{Path, PathBuf};

use minicrm::{config::Settings, startup::Application};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestDb, TestServer, test_settings};

/// A certificate authority made for one test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, in PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Self {
            cert_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        self.leaf(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, alt_names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(alt_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        Leaf {
            cert_pem: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Connects over TLS trusting `ca`, presenting `identity` if given, and
/// makes one health check: the first error of either.
async fn health_over_tls(
    address: std::net::SocketAddr,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("call: {status:?}"))
}

async fn health_in_plaintext(address: std::net::SocketAddr) -> Result<(), String> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_no_one_in_plaintext() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("minicrm test CA");
    let server_cert = ca.server();
    let server = TestServer::start(&Settings {
        tls_cert: Some(write(dir.path(), "server.crt", &server_cert.cert_pem)),
        tls_key: Some(write(dir.path(), "server.key", &server_cert.key_pem)),
        ..test_settings(&db)
    })
    .await;

    health_over_tls(server.address, &ca.cert_pem, None)
        .await
        .expect("a client trusting the CA is served");
    // A client also presenting a certificate is served as well (not asked for).
    health_over_tls(server.address, &ca.cert_pem, Some(&ca.client("desk-1")))
        .await
        .expect("served");
    let stranger = TestCa::new("another CA");
    let refused = health_over_tls(server.address, &stranger.cert_pem, None).await;
    assert!(
        refused.is_err(),
        "the server's certificate is not the stranger CA's"
    );
    let refused = health_in_plaintext(server.address).await;
    assert!(refused.is_err(), "plaintext is not served: {refused:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("minicrm server CA");
    let client_ca = TestCa::new("minicrm client CA");
    let server_cert = server_ca.server();
    let hash = crate::security::sha256_hex("viewer-token-5b1d");
    let tokens = write(dir.path(), "tokens", &format!("viewer grafana {hash}\n"));
    let server = TestServer::start(&Settings {
        tls_cert: Some(write(dir.path(), "server.crt", &server_cert.cert_pem)),
        tls_key: Some(write(dir.path(), "server.key", &server_cert.key_pem)),
        tls_client_ca: Some(write(dir.path(), "client-ca.crt", &client_ca.cert_pem)),
        auth_tokens: Some(tokens),
        ..test_settings(&db)
    })
    .await;

    let client = client_ca.client("grafana");
    health_over_tls(server.address, &server_ca.cert_pem, Some(&client))
        .await
        .expect("a client with a certificate from the client CA is served");

    let refused = health_over_tls(server.address, &server_ca.cert_pem, None).await;
    assert!(refused.is_err(), "no client certificate: refused");
    let impostor = TestCa::new("another CA").client("grafana");
    let refused = health_over_tls(server.address, &server_ca.cert_pem, Some(&impostor)).await;
    assert!(refused.is_err(), "a certificate from another CA: refused");
    // The server CA does not vouch for clients either.
    let wrong_ca = server_ca.client("grafana");
    let refused = health_over_tls(server.address, &server_ca.cert_pem, Some(&wrong_ca)).await;
    assert!(
        refused.is_err(),
        "a certificate from the server CA: refused"
    );
    assert!(health_in_plaintext(server.address).await.is_err());

    // A certificate gets a client through the door; calls still need a token.
    let channel = Channel::from_shared(format!("https://{}", server.address))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&server_ca.cert_pem))
                .domain_name("localhost")
                .identity(Identity::from_pem(&client.cert_pem, &client.key_pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut operators =
        minicrm::proto::operator_service_client::OperatorServiceClient::new(channel.clone());
    let refused = operators
        .list_operators(minicrm::proto::ListOperatorsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut request = Request::new(minicrm::proto::ListOperatorsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer viewer-token-5b1d".parse().unwrap());
    operators.list_operators(request).await.expect("served");
    server.stop().await;
}

/// Certificate files that cannot be used stop the start, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("minicrm test CA");
    let good = ca.server();
    let other = ca.server();
    let cert = write(dir.path(), "server.crt", &good.cert_pem);
    let key = write(dir.path(), "server.key", &good.key_pem);
    let other_key = write(dir.path(), "other.key", &other.key_pem);
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    let missing = dir.path().join("missing.pem");

    let cases = [
        (Some(missing.clone()), Some(key.clone()), None, "--tls-cert"),
        (Some(cert.clone()), Some(missing.clone()), None, "--tls-key"),
        (Some(garbage.clone()), Some(key.clone()), None, "--tls-cert"),
        (Some(cert.clone()), Some(garbage.clone()), None, "--tls-key"),
        (
            Some(cert.clone()),
            Some(key.clone()),
            Some(missing.clone()),
            "--tls-client-ca",
        ),
        (
            Some(cert.clone()),
            Some(other_key),
            None,
            "TLS certificate and key",
        ),
        (Some(cert.clone()), None, None, "--tls-key"),
        (None, None, Some(cert.clone()), "--tls-client-ca"),
    ];
    for (tls_cert, tls_key, tls_client_ca, expected) in cases {
        let settings = Settings {
            tls_cert,
            tls_key,
            tls_client_ca,
            ..test_settings(&db)
        };
        let error = match Application::build(&settings).await {
            Ok(_) => panic!("{settings:?} is refused"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
}
