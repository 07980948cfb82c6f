//! Lapses (API.md "Acceptance, lapses and transfers"): every replica looks
//! for offers whose accept deadline has passed a few times a second and
//! takes them back through the writer. Each lapse is guarded by the
//! contact's row (see `db::routing`), so when replicas race for one, or an
//! accept races the lapse, exactly one of them changes it.

use std::time::Duration;

use crate::repository::Repository;

/// How often the due offers are looked for: a lapse happens within this
/// (plus a write) of its deadline, well within the contract's one second.
const EVERY: Duration = Duration::from_millis(100);
/// Offers lapsed per round; a full round goes on at once.
const BATCH: i64 = 512;

/// Runs until aborted.
pub async fn run(repository: Repository) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        loop {
            match repository.lapse_due(BATCH).await {
                Ok(due) if due as i64 == BATCH => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for lapsed offers");
                    break;
                }
            }
        }
    }
}
