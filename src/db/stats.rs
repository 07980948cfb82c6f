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
