use diesel::prelude::*;

use super::{
    Backend,
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

/// The lapse total, and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lapses {
    /// From the counters (`contact_counts.lapsed`), or 0 while no lapse
    /// column exists.
    Counted(i64),
    /// Summed over the contacts table (`contacts.lapses`).
    Scanned(i64),
    /// Only a scan of the contacts table would tell, and none was asked for.
    NotScanned,
}

impl Default for Lapses {
    fn default() -> Self {
        Self::Counted(0)
    }
}

/// What the metrics endpoint reads from the database at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Gauges {
    /// (source id, pending contacts) for the first `limit` sources by id.
    pub pending: Vec<(i64, i64)>,
    /// The first `limit` operators by id.
    pub operators: Vec<OperatorGauge>,
    /// Lapses so far.
    pub lapses: Lapses,
    /// More sources or operators exist than `limit`.
    pub truncated: bool,
}

/// The metrics endpoint's figures, from the counters: two index range scans
/// of at most `limit + 1` rows, and the lapse total. That total is the sum of
/// `contact_counts.lapsed` where that counter column exists (a few rows per
/// operator and source), else of `contacts.lapses` (a scan of the contacts
/// table, about 100 ms per million contacts: only when `scan_contacts`), else
/// 0. Which one is looked up in the catalog at each call, so a replica running
/// while another migrates picks the new column up.
pub(crate) fn gauges(
    reader: &mut Reader<'_>,
    backend: Backend,
    limit: i64,
    scan_contacts: bool,
) -> Result<Gauges> {
    use super::schema::operators;
    use diesel::{dsl::sql, sql_types::BigInt};

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

    let has_column = |reader: &mut Reader<'_>, table: &str, column: &str| -> Result<bool> {
        // Constant names only: nothing from a request reaches this SQL.
        let query = match backend {
            Backend::Sqlite => format!(
                "(SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}')"
            ),
            Backend::Postgres => format!(
                "(SELECT COUNT(*) FROM pg_attribute WHERE attrelid = to_regclass('{table}') \
                 AND attname = '{column}' AND attnum > 0 AND NOT attisdropped)"
            ),
        };
        Ok(reader.get_result::<_, i64>(diesel::select(sql::<BigInt>(&query)))? > 0)
    };
    let sum = |reader: &mut Reader<'_>, table: &str, column: &str| -> Result<i64> {
        let query = format!("(SELECT CAST(COALESCE(SUM({column}), 0) AS BIGINT) FROM {table})");
        Ok(reader.get_result::<_, i64>(diesel::select(sql::<BigInt>(&query)))?)
    };
    let lapses = if has_column(reader, "contact_counts", "lapsed")? {
        Lapses::Counted(sum(reader, "contact_counts", "lapsed")?)
    } else if !has_column(reader, "contacts", "lapses")? {
        Lapses::Counted(0)
    } else if scan_contacts {
        Lapses::Scanned(sum(reader, "contacts", "lapses")?)
    } else {
        Lapses::NotScanned
    };

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
