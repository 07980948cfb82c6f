use std::collections::BTreeMap;

use diesel::{dsl::count_star, prelude::*};

use super::{DbConnection, schema::contacts};
use crate::{
    Result,
    domain::{ContactStatus, OperatorSourceStats, SourcePending, StatsReport},
};

/// Contact counts per (operator, source) pair and pending counts per source.
pub fn report(connection: &mut DbConnection) -> Result<StatsReport> {
    let counted: Vec<(Option<i64>, i64, i32, i64)> = contacts::table
        .filter(contacts::operator_id.is_not_null())
        .group_by((contacts::operator_id, contacts::source_id, contacts::status))
        .select((
            contacts::operator_id,
            contacts::source_id,
            contacts::status,
            count_star(),
        ))
        .load(connection)?;
    let mut pairs: BTreeMap<(i64, i64), OperatorSourceStats> = BTreeMap::new();
    for (operator_id, source_id, status, count) in counted {
        let Some(operator_id) = operator_id else {
            continue;
        };
        let row = pairs
            .entry((operator_id, source_id))
            .or_insert(OperatorSourceStats {
                operator_id,
                source_id,
                active: 0,
                closed: 0,
                total: 0,
            });
        match ContactStatus::from_code(status) {
            Some(ContactStatus::Active) => row.active += count,
            Some(ContactStatus::Closed) => row.closed += count,
            // A contact with an operator is never PENDING (schema CHECK).
            Some(ContactStatus::Pending) | None => {}
        }
        row.total += count;
    }
    let pending: Vec<(i64, i64)> = contacts::table
        .filter(contacts::status.eq(ContactStatus::Pending.code()))
        .group_by(contacts::source_id)
        .select((contacts::source_id, count_star()))
        .order(contacts::source_id)
        .load(connection)?;
    Ok(StatsReport {
        rows: pairs.into_values().collect(),
        pending: pending
            .into_iter()
            .map(|(source_id, pending)| SourcePending { source_id, pending })
            .collect(),
    })
}
