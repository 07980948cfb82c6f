use diesel::prelude::*;

use super::{
    reader::Reader,
    schema::{contact_counts, pending_counts},
};
use crate::{
    Result,
    domain::{OperatorSourceStats, SourcePending, StatsReport},
};

/// Contact counts per (operator, source) pair and pending counts per source,
/// read from the counters: the cost grows with the pairs, not the contacts.
pub(crate) fn report(reader: &mut Reader<'_>) -> Result<StatsReport> {
    let rows: Vec<(i64, i64, i64, i64, i64, i64)> = reader.load(
        contact_counts::table
            .filter(contact_counts::total.gt(0).or(contact_counts::lapsed.gt(0)))
            .order((contact_counts::operator_id, contact_counts::source_id))
            .select((
                contact_counts::operator_id,
                contact_counts::source_id,
                contact_counts::active,
                contact_counts::closed,
                contact_counts::total,
                contact_counts::lapsed,
            )),
    )?;
    let pending: Vec<(i64, i64)> = reader.load(
        pending_counts::table
            .filter(pending_counts::pending.gt(0))
            .order(pending_counts::source_id)
            .select((pending_counts::source_id, pending_counts::pending)),
    )?;
    Ok(StatsReport {
        rows: rows
            .into_iter()
            .map(
                |(operator_id, source_id, active, closed, total, lapsed)| OperatorSourceStats {
                    operator_id,
                    source_id,
                    active,
                    closed,
                    total,
                    lapsed,
                },
            )
            .collect(),
        pending: pending
            .into_iter()
            .map(|(source_id, pending)| SourcePending { source_id, pending })
            .collect(),
    })
}

/// An operator's figures for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OperatorGauge {
    pub id: i64,
    pub is_active: bool,
    pub active_load: i32,
    pub max_load: i32,
}

/// What the metrics endpoint reads from the database at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Gauges {
    /// (source id, pending contacts) for the first `limit` sources by id.
    pub pending: Vec<(i64, i64)>,
    /// The first `limit` operators by id.
    pub operators: Vec<OperatorGauge>,
    /// Lapses so far: the sum of the `contact_counts.lapsed` counters.
    pub lapses: i64,
    /// More sources or operators exist than `limit`.
    pub truncated: bool,
}

/// The metrics endpoint's figures, from the counters: two index range scans
/// of at most `limit + 1` rows, and the lapse total (a sum over the counter
/// rows, a few per operator and source).
pub(crate) fn gauges(reader: &mut Reader<'_>, limit: i64) -> Result<Gauges> {
    use super::schema::operators;

    let mut pending: Vec<(i64, i64)> = reader.load(
        pending_counts::table
            .order(pending_counts::source_id)
            .limit(limit + 1)
            .select((pending_counts::source_id, pending_counts::pending)),
    )?;
    let operators: Vec<(i64, bool, i32, i32)> = reader.load(
        operators::table
            .order(operators::id)
            .limit(limit + 1)
            .select((
                operators::id,
                operators::is_active,
                operators::active_load,
                operators::max_load,
            )),
    )?;
    let limit = usize::try_from(limit).unwrap_or(0);
    let truncated = pending.len() > limit || operators.len() > limit;
    pending.truncate(limit);

    let lapsed: Vec<i64> = reader.load(
        contact_counts::table
            .filter(contact_counts::lapsed.gt(0))
            .select(contact_counts::lapsed),
    )?;
    let lapses = lapsed.iter().sum();

    Ok(Gauges {
        pending,
        operators: operators
            .into_iter()
            .take(limit)
            .map(|(id, is_active, active_load, max_load)| OperatorGauge {
                id,
                is_active,
                active_load,
                max_load,
            })
            .collect(),
        lapses,
        truncated,
    })
}
