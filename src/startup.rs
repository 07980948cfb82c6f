use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        contacts::ContactApi, observe::ObserveLayer, operators::OperatorApi, sources::SourceApi,
    },
    config::Settings,
    db::{Backend, Database, DatabaseUrl, StartupError},
    proto::{
        FILE_DESCRIPTOR_SET, contact_service_server::ContactServiceServer,
        operator_service_server::OperatorServiceServer, source_service_server::SourceServiceServer,
    },
    repository::Repository,
};

/// A migrated database and a bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    repository: Repository,
    /// `--shutdown-grace`.
    #[allow(dead_code)]
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

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<OperatorServiceServer<OperatorApi>>()
            .await;
        health.set_serving::<SourceServiceServer<SourceApi>>().await;
        health
            .set_serving::<ContactServiceServer<ContactApi>>()
            .await;

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
        Server::builder()
            // One span and one log line per call, health and reflection included.
            .layer(ObserveLayer)
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
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
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
