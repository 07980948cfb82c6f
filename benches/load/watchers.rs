//! `--watchers N`: N WatchContactEvents streams open for the whole benchmark,
//! each reading every event as it comes, to measure what live readers cost
//! the write path. At the end each stream must have seen every event.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use minicrm::proto::{self as pb, contact_service_client::ContactServiceClient};
use tokio::task::JoinHandle;

use crate::server::Clients;

pub struct Watchers {
    received: Vec<Arc<AtomicU64>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Opens the streams, from the next event on.
    pub async fn start(clients: &Clients, count: usize) -> Self {
        let mut received = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..count {
            let counter = Arc::new(AtomicU64::new(0));
            let mut stream = ContactServiceClient::new(clients.channel(index))
                .watch_contact_events(pb::WatchContactEventsRequest::default())
                .await
                .expect("watch")
                .into_inner();
            let seen = Arc::clone(&counter);
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(_)) = stream.message().await {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }));
            received.push(counter);
        }
        Self { received, tasks }
    }

    /// Waits a moment for the streams to drain, stops them, and says how
    /// many events each received against the `written` ones.
    pub async fn finish(self, written: u64) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .received
            .iter()
            .any(|count| count.load(Ordering::Relaxed) < written)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        let counts: Vec<u64> = self
            .received
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        format!(
            "watchers: {} streams received {counts:?} of {written} events written during the runs",
            counts.len()
        )
    }
}
