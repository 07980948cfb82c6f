//! `grpc.health.v1.Health` follows the database: NOT_SERVING while it cannot
//! be reached, SERVING again once it can (API.md, "Limits and faults"), and
//! NOT_SERVING for good once shutdown begins.

use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::repository::Repository;

/// How often the database is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The health of the whole server ("") and of each named service.
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    probe: Option<JoinHandle<()>>,
}

impl Health {
    /// Reports every service SERVING and starts probing the database.
    pub async fn start(
        reporter: HealthReporter,
        services: Vec<&'static str>,
        repository: Repository,
    ) -> Self {
        let mut health = Self {
            reporter,
            services,
            probe: None,
        };
        health.set(ServingStatus::Serving).await;
        let reporter = health.reporter.clone();
        let services = health.services.clone();
        health.probe = Some(tokio::spawn(probe(reporter, services, repository)));
        health
    }

    async fn set(&self, status: ServingStatus) {
        set(&self.reporter, &self.services, status).await;
    }

    /// NOT_SERVING from now on.
    pub async fn shut_down(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
            let _ = probe.await;
        }
        self.set(ServingStatus::NotServing).await;
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }
}

async fn set(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}

/// Probes the database every [`PROBE_INTERVAL`] and reports what it finds
/// when that changes.
async fn probe(reporter: HealthReporter, services: Vec<&'static str>, repository: Repository) {
    let mut serving = true;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        // A probe stuck on a dead network counts as a failure.
        let probed = match tokio::time::timeout(
            repository.db_timeout() + PROBE_INTERVAL,
            repository.probe(),
        )
        .await
        {
            Ok(probed) => probed,
            Err(_) => Err(crate::Error::Unavailable(
                "the health probe got no answer".into(),
            )),
        };
        match (&probed, serving) {
            (Err(error), true) => {
                tracing::warn!(%error, "the database cannot be reached: NOT_SERVING");
                set(&reporter, &services, ServingStatus::NotServing).await;
                serving = false;
            }
            (Ok(()), false) => {
                tracing::info!("the database is back: SERVING");
                set(&reporter, &services, ServingStatus::Serving).await;
                serving = true;
            }
            _ => {}
        }
    }
}
