use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};

use crate::{
    api::{
        contacts::ContactApi, observe::ObserveLayer, operators::OperatorApi, sources::SourceApi,
    },
    config::Settings,
    db::{Backend, Database, DatabaseUrl, StartupError},
    deadline::DeadlineLayer,
    health::Health,
    proto::{
        FILE_DESCRIPTOR_SET, contact_service_server::ContactServiceServer,
        operator_service_server::OperatorServiceServer, source_service_server::SourceServiceServer,
    },
    repository::Repository,
    shutdown::Drain,
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
    /// `--shutdown-grace`.
    shutdown_grace: Duration,
}

impl Application {
    /// Opens and migrates the database, then binds, so that `local_addr` is
    /// known (port 0 picks one) before serving starts.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let url = DatabaseUrl::parse(&settings.database_url)?;
        let limits = settings.limits.clone();
        let database =
            tokio::task::spawn_blocking(move || Database::open_with(&url, limits.db_timeout))
                .await
                .map_err(|error| StartupError::Migrate(error.to_string()))??;
        let listener = TcpListener::bind(&settings.listen).await?;
        let max_queued_writes = usize::try_from(settings.limits.max_queued_writes)
            .map_err(|error| StartupError::Config(format!("--max-queued-writes: {error}")))?;
        Ok(Self {
            listener,
            repository: Repository::new(database, max_queued_writes)?,
            shutdown_grace: settings.limits.shutdown_grace,
        })
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
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let services = vec![
            OperatorServiceServer::<OperatorApi>::NAME,
            SourceServiceServer::<SourceApi>::NAME,
            ContactServiceServer::<ContactApi>::NAME,
        ];
        let mut health = Health::start(reporter, services, self.repository.clone()).await;
        let drain = Drain::default();
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let shutdown = {
            let drain = drain.clone();
            async move {
                shutdown.await;
                let _ = signalled.send(());
                // Load balancers hear first; then streams end and new calls
                // are refused; once the calls in flight are done, tonic
                // sends GOAWAY, stops accepting and closes the connections.
                health.shut_down().await;
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
        let serving = Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            // One span and one log line per call, health and reflection included.
            .layer(ObserveLayer)
            // Ends streams and refuses new calls on shutdown.
            .layer(drain.layer())
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
        tokio::select! {
            served = serving => served,
            () = expired => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "shutdown grace expired with calls still open; stopping anyway"
                );
                Ok(())
            }
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight calls");
}
