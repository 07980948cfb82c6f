use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};

use crate::{
    api::{
        contacts::ContactApi, observe::ObserveLayer, operators::OperatorApi, sources::SourceApi,
    },
    auth::{AuthLayer, TokenFile},
    config::Settings,
    db::{Backend, Database, DatabaseUrl, StartupError},
    deadline::DeadlineLayer,
    health::Health,
    lapses,
    metrics::MetricsEndpoint,
    proto::{
        FILE_DESCRIPTOR_SET, contact_service_server::ContactServiceServer,
        operator_service_server::OperatorServiceServer, source_service_server::SourceServiceServer,
    },
    repository::Repository,
    retention,
    shutdown::Drain,
    tls::{self, TlsMode},
};

// Transport limits (README, "Running in production"). Calls beyond the
// stream limit wait in the client; write calls beyond --max-queued-writes
// answer RESOURCE_EXHAUSTED.
/// Concurrent calls (HTTP/2 streams) per client connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Request headers (metadata) per call, in bytes.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// HTTP/2 pings find connections whose client vanished without a word.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A migrated database and a bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    repository: Repository,
    event_retention: Duration,
    security: Security,
    /// With `--metrics-listen`: Prometheus metrics, served alongside.
    metrics: Option<MetricsEndpoint>,
    /// `--shutdown-grace`.
    shutdown_grace: Duration,
}

/// Who may call, and over what.
struct Security {
    /// `None`: no tokens file, every caller may do everything.
    tokens: Option<Arc<TokenFile>>,
    /// SIGHUP, registered before serving so that a reload asked for as soon
    /// as the server is up is not taken for the default "hang up: exit".
    #[cfg(unix)]
    reload: Option<tokio::signal::unix::Signal>,
    tls: Option<ServerTlsConfig>,
    tls_mode: TlsMode,
}

impl Security {
    /// Reads the tokens file and the TLS files, and applies the safe
    /// default: without tokens, only a loopback address may be served unless
    /// the settings allow it.
    async fn from_settings(settings: &Settings) -> Result<Self, StartupError> {
        let tokens = match &settings.auth_tokens {
            Some(path) => {
                let file = TokenFile::load(path).map_err(|error| {
                    StartupError::Config(format!("--auth-tokens {}: {error}", path.display()))
                })?;
                if file.tokens().is_empty() {
                    tracing::warn!(
                        path = %path.display(),
                        "the tokens file has no tokens: every call but health checks is refused"
                    );
                }
                Some(Arc::new(file))
            }
            // Without a tokens file anyone who reaches the server may do
            // everything: only loopback is served unless that is allowed.
            None if is_loopback(&settings.listen).await? => None,
            None if settings.allow_unauthenticated => {
                tracing::warn!(
                    listen = %settings.listen,
                    "serving without authentication (--allow-unauthenticated): \
                     anyone who can reach this address may make every call"
                );
                None
            }
            None => {
                return Err(StartupError::Config(format!(
                    "refusing to serve {} without authentication: it is not a loopback \
                     address, so anyone who can reach it could make every call. Give \
                     --auth-tokens PATH (or MINICRM_AUTH_TOKENS), or \
                     --allow-unauthenticated (MINICRM_ALLOW_UNAUTHENTICATED=true) to serve \
                     it to anyone anyway",
                    settings.listen
                )));
            }
        };
        #[cfg(unix)]
        let reload = match &tokens {
            Some(_) => Some(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            )?),
            None => None,
        };
        Ok(Self {
            tokens,
            #[cfg(unix)]
            reload,
            tls: tls::server_config(settings)?,
            tls_mode: tls::mode(settings),
        })
    }

    /// Reloads the tokens file on every SIGHUP until dropped.
    fn spawn_reloader(&mut self) -> Option<AbortOnDrop> {
        #[cfg(unix)]
        if let (Some(file), Some(mut signal)) = (self.tokens.clone(), self.reload.take()) {
            return Some(AbortOnDrop(tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    let file = file.clone();
                    // A small file, but still a blocking read.
                    let _ = tokio::task::spawn_blocking(move || file.reload_and_log()).await;
                }
            })));
        }
        None
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether every address `listen` names is a loopback one.
async fn is_loopback(listen: &str) -> std::io::Result<bool> {
    let loopback = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    let mut addresses = tokio::net::lookup_host(listen).await?.peekable();
    Ok(addresses.peek().is_some() && addresses.all(|address| loopback(address.ip())))
}

impl Application {
    /// Checks the security settings, opens and migrates the database, then
    /// binds, so that `local_addr` is known (port 0 picks one) before serving
    /// starts.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let security = Security::from_settings(settings).await?;
        let url = DatabaseUrl::parse(&settings.database_url)?;
        let db_timeout = settings.limits.db_timeout;
        let database = tokio::task::spawn_blocking(move || Database::open_with(&url, db_timeout))
            .await
            .map_err(|error| StartupError::Migrate(error.to_string()))??;
        let listener = TcpListener::bind(&settings.listen).await?;
        let max_queued_writes = usize::try_from(settings.limits.max_queued_writes)
            .map_err(|error| StartupError::Config(format!("--max-queued-writes: {error}")))?;
        let repository = Repository::new(database, max_queued_writes)?;
        let metrics = match &settings.metrics_listen {
            Some(address) => Some(
                MetricsEndpoint::bind(address, repository.clone())
                    .await
                    .map_err(|error| {
                        StartupError::Config(format!("cannot serve metrics on {address}: {error}"))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            repository,
            metrics,
            event_retention: settings.events.event_retention,
            security,
            shutdown_grace: settings.limits.shutdown_grace,
        })
    }

    /// Whether calls need a bearer token.
    pub fn authenticates(&self) -> bool {
        self.security.tokens.is_some()
    }

    /// Whether the server speaks TLS, and whether it requires client certificates.
    pub fn tls_mode(&self) -> TlsMode {
        self.security.tls_mode
    }

    /// The metrics listener's address, with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    pub fn backend(&self) -> Backend {
        self.repository.backend()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully (see
    /// [`crate::shutdown`]): in-flight calls finish, streams end, and this
    /// returns within `--shutdown-grace` whatever clients hold open.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let _reloader = self.security.spawn_reloader();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let services = vec![
            OperatorServiceServer::<OperatorApi>::NAME,
            SourceServiceServer::<SourceApi>::NAME,
            ContactServiceServer::<ContactApi>::NAME,
        ];
        let mut health = Health::start(reporter, services, self.repository.clone()).await;
        let drain = Drain::default();
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let retention = tokio::spawn(retention::run(
            self.repository.clone(),
            self.event_retention,
        ));
        let lapses = tokio::spawn(lapses::run(self.repository.clone()));
        let hub = self.repository.event_hub().clone();
        let shutdown = {
            let drain = drain.clone();
            async move {
                shutdown.await;
                let _ = signalled.send(());
                // Load balancers hear first; then streams end (watch streams
                // with UNAVAILABLE) and new calls are refused; once the calls
                // in flight are done, tonic sends GOAWAY, stops accepting and
                // closes the connections.
                health.shut_down().await;
                hub.close();
                retention.abort();
                lapses.abort();
                drain.start();
                drain.idle().await;
            }
        };

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // grpcurl before 1.9 speaks only v1alpha; newer clients ask for v1.
        let reflection_v1 = reflection()
            .build_v1()
            .expect("the embedded descriptor sets are valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the embedded descriptor sets are valid");

        let repository = self.repository;
        // Stops with the server: scrapes have nothing to finish.
        let metrics = self.metrics.map(|endpoint| tokio::spawn(endpoint.serve()));
        let mut server = Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT));
        if let Some(tls) = self.security.tls {
            server = server.tls_config(tls)?;
        }
        let serving = server
            // One span and one log line per call, health and reflection
            // included, refused calls too: the auth layer runs inside it.
            .layer(ObserveLayer)
            // Ends streams and refuses new calls on shutdown.
            .layer(drain.layer())
            // Tokens and roles (a pass-through without a tokens file).
            .layer(AuthLayer::new(self.security.tokens))
            // Client deadlines (grpc-timeout): DEADLINE_EXCEEDED.
            .layer(DeadlineLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(OperatorServiceServer::new(OperatorApi::new(
                repository.clone(),
            )))
            .add_service(SourceServiceServer::new(SourceApi::new(repository.clone())))
            .add_service(ContactServiceServer::new(ContactApi::new(repository)))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a response that spans several segments
                // waits ~40 ms for the client's delayed ACK.
                TcpIncoming::from(self.listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(TCP_KEEPALIVE)),
                shutdown,
            );
        let grace = self.shutdown_grace;
        let expired = async move {
            if on_signal.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serving => served,
            () = expired => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "shutdown grace expired with calls still open; stopping anyway"
                );
                Ok(())
            }
        };
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        served
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled: call it before
/// announcing the server, so that a SIGTERM sent as soon as the server is up
/// stops it gracefully rather than killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &'static str| {
            let mut signal = signal(kind)
                .inspect_err(|error| tracing::error!(%error, "cannot listen for {name}"))
                .ok();
            async move {
                match &mut signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
        };
        (
            install(SignalKind::interrupt(), "SIGINT"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    #[cfg(not(unix))]
    let (interrupt, terminate) = (
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = interrupt => {}
            () = terminate => {}
        }
        tracing::info!("shutting down: finishing in-flight calls");
    }
}
