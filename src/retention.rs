//! Event retention: every replica deletes events older than
//! `--event-retention` now and then, in small batches through the writer, so
//! that a large backlog never holds the write lock for long.

use std::time::Duration;

use crate::{domain::Timestamp, repository::Repository};

/// How often the old events are looked for.
const EVERY: Duration = Duration::from_secs(60);
/// Events deleted per transaction.
const BATCH: i64 = 1_000;

/// Runs until aborted.
pub async fn run(repository: Repository, retention: Duration) {
    let mut ticks = tokio::time::interval(EVERY.min(retention.max(Duration::from_secs(1))));
    loop {
        ticks.tick().await;
        let retention_micros = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let before = Timestamp::from_micros(
            Timestamp::now()
                .as_micros()
                .saturating_sub(retention_micros),
        );
        // A read first: most of the time there is nothing to delete, and
        // then the writer is not bothered.
        match repository.oldest_event_time().await {
            Ok(Some(oldest)) if oldest < before => {}
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot look for old events");
                continue;
            }
        }
        loop {
            match repository.purge_events(before, BATCH).await {
                Ok(deleted) if deleted as i64 == BATCH => continue,
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::debug!(deleted, "old events deleted");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot delete old events");
                    break;
                }
            }
        }
    }
}
