//! `minicrm check [--repair]`: verifies every invariant and counter of a
//! database, on one consistent snapshot, while servers keep serving it.
//!
//! The invariant (API.md): no contact is ever assigned to an operator that
//! is inactive or whose `active_load` has reached `max_load`, and
//! `active_load` always equals the operator's ACTIVE contacts. Lowering
//! `max_load` below the load, or deactivating an operator, takes nothing
//! away, so an operator may hold more than `max_load`, or hold contacts while
//! inactive, but only contacts assigned before that change: at the time of
//! its latest assignment an operator with n ACTIVE contacts held n - 1 of
//! them and was active with a `max_load` of at least n, so n > `max_load`
//! now means `max_load` was lowered after that assignment (and an inactive
//! holder was deactivated after it). UpdateOperator records when it lowers a
//! limit or deactivates (`operator_history`), and this checks exactly that.
//!
//! `--repair` recomputes what is derived (loads, the GetOperatorStats
//! counters) from the contacts, in one transaction that holds writers off,
//! and checks again. A breach of the invariant or a malformed contact is
//! reported, never "repaired": no recount can say which contact should not
//! have been assigned.

use std::{
    collections::BTreeMap,
    fmt::{self, Display},
};

use diesel::{
    QueryableByName, RunQueryDsl,
    connection::SimpleConnection,
    sql_types::{BigInt, Bool, Integer, Nullable},
};
use diesel_migrations::MigrationHarness;

use super::{
    DatabaseUrl, DbConnection,
    connection::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, establish_for_tool},
    faults::{self, Class},
};

/// How often a repair that lost a deadlock to a writer starts again.
const REPAIR_ATTEMPTS: u32 = 5;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    /// Whether `--repair` recomputes it.
    pub repairable: bool,
}

/// What `check` found (and, with `--repair`, what it fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub operators: i64,
    pub sources: i64,
    pub contacts: i64,
    /// What is wrong now.
    pub problems: Vec<Problem>,
    /// With `--repair`: what was wrong before and has been recomputed.
    pub repaired: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.repaired {
            writeln!(f, "repaired: {}", problem.what)?;
        }
        for problem in &self.problems {
            let hint = if problem.repairable {
                " (--repair recomputes it)"
            } else {
                ""
            };
            writeln!(f, "FAILED: {}{hint}", problem.what)?;
        }
        let scope = format!(
            "{} operators, {} sources, {} contacts",
            self.operators, self.sources, self.contacts
        );
        if self.ok() {
            writeln!(f, "OK: every invariant and counter holds ({scope})")
        } else {
            writeln!(
                f,
                "{} problem(s) found ({scope}); {} repairable with --repair",
                self.problems.len(),
                self.problems.iter().filter(|p| p.repairable).count()
            )
        }
    }
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("the database schema is not up to date; start the server (which migrates it) first")]
    NotMigrated,
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Checks the database; with `repair`, recomputes loads and counters first.
/// Blocking.
pub fn check(url: &DatabaseUrl, repair: bool) -> Result<Report, CheckError> {
    if let DatabaseUrl::Sqlite(path) = url
        && !path.starts_with("file:")
        && !std::path::Path::new(path).exists()
    {
        return Err(CheckError::Open(format!("{path}: no such file")));
    }
    let mut connection = establish_for_tool(url).map_err(CheckError::Open)?;
    let pending = match &mut connection {
        DbConnection::Sqlite(sqlite) => sqlite.has_pending_migration(SQLITE_MIGRATIONS),
        DbConnection::Postgres(pg) => pg.has_pending_migration(POSTGRES_MIGRATIONS),
    };
    if pending.map_err(|error| CheckError::Open(error.to_string()))? {
        return Err(CheckError::NotMigrated);
    }
    if !repair {
        return in_snapshot(&mut connection, inspect);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match repair_once(&mut connection) {
            Err(CheckError::Database(error))
                if faults::classify(&error) == Class::Conflict && attempt < REPAIR_ATTEMPTS =>
            {
                tracing::debug!(%error, attempt, "repair lost a conflict; again");
                std::thread::sleep(std::time::Duration::from_millis(
                    rand::random_range(10..100) * u64::from(attempt),
                ));
            }
            outcome => return outcome,
        }
    }
}

/// Runs `work` in a read-only transaction: one consistent snapshot, however
/// the servers write meanwhile.
fn in_snapshot<T>(
    connection: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, CheckError>,
) -> Result<T, CheckError> {
    let begin = match connection {
        DbConnection::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        DbConnection::Sqlite(_) => "BEGIN",
    };
    connection.batch_execute(begin)?;
    let outcome = work(connection);
    connection.batch_execute("ROLLBACK")?;
    outcome
}

/// Locks writers out, recomputes, checks again, commits; rolls back on any
/// error (a deadlock with a writer, say), so that the connection can start
/// again.
fn repair_once(connection: &mut DbConnection) -> Result<Report, CheckError> {
    let begin = match connection {
        // Writers (ROW EXCLUSIVE) wait for the repair and it for them;
        // readers go on. A writer caught holding one of the tables while it
        // waits for another is a deadlock, which PostgreSQL breaks: the
        // writer runs again, or the repair does.
        DbConnection::Postgres(_) => {
            "BEGIN; LOCK TABLE contacts, contact_counts, pending_counts, operators \
             IN SHARE ROW EXCLUSIVE MODE"
        }
        DbConnection::Sqlite(_) => "BEGIN IMMEDIATE",
    };
    let outcome = (|| {
        connection.batch_execute(begin)?;
        let before = inspect(connection)?;
        if before.problems.iter().any(|p| p.repairable) {
            recompute(connection)?;
        }
        let mut after = inspect(connection)?;
        after.repaired = before
            .problems
            .into_iter()
            .filter(|problem| !after.problems.contains(problem))
            .collect();
        connection.batch_execute("COMMIT")?;
        Ok(after)
    })();
    if outcome.is_err() {
        // Nothing to roll back when BEGIN itself failed: that is fine.
        let _ = connection.batch_execute("ROLLBACK");
    }
    outcome
}

/// Recomputes every derived value from the contacts.
fn recompute(connection: &mut DbConnection) -> Result<(), CheckError> {
    connection.batch_execute(
        "UPDATE operators SET active_load = \
           (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = operators.id AND c.status = 1); \
         INSERT INTO contact_counts (operator_id, source_id, active, closed, total) \
           SELECT DISTINCT c.operator_id, c.source_id, 0, 0, 0 FROM contacts c \
            WHERE c.operator_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM contact_counts k \
              WHERE k.operator_id = c.operator_id AND k.source_id = c.source_id); \
         INSERT INTO contact_counts (operator_id, source_id, active, closed, total) \
           SELECT w.operator_id, w.source_id, 0, 0, 0 FROM source_operators w \
            WHERE NOT EXISTS (SELECT 1 FROM contact_counts k \
              WHERE k.operator_id = w.operator_id AND k.source_id = w.source_id); \
         UPDATE contact_counts SET \
           active = (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = contact_counts.operator_id \
                      AND c.source_id = contact_counts.source_id AND c.status = 1), \
           closed = (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = contact_counts.operator_id \
                      AND c.source_id = contact_counts.source_id AND c.status = 3), \
           total = (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = contact_counts.operator_id \
                      AND c.source_id = contact_counts.source_id); \
         INSERT INTO pending_counts (source_id, pending) \
           SELECT s.id, 0 FROM sources s \
            WHERE NOT EXISTS (SELECT 1 FROM pending_counts p WHERE p.source_id = s.id); \
         UPDATE pending_counts SET pending = (SELECT COUNT(*) FROM contacts c \
           WHERE c.source_id = pending_counts.source_id AND c.status = 2);",
    )?;
    Ok(())
}

#[derive(QueryableByName)]
struct OperatorLoad {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    is_active: bool,
    #[diesel(sql_type = Integer)]
    max_load: i32,
    #[diesel(sql_type = Integer)]
    active_load: i32,
    #[diesel(sql_type = BigInt)]
    active: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_assigned_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    max_load_lowered_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    deactivated_at: Option<i64>,
}

#[derive(QueryableByName, Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PairCounts {
    #[diesel(sql_type = BigInt)]
    operator_id: i64,
    #[diesel(sql_type = BigInt)]
    source_id: i64,
    #[diesel(sql_type = BigInt)]
    active: i64,
    #[diesel(sql_type = BigInt)]
    closed: i64,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

#[derive(QueryableByName)]
struct SourcePending {
    #[diesel(sql_type = BigInt)]
    source_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    stored: Option<i64>,
    #[diesel(sql_type = BigInt)]
    counted: i64,
}

#[derive(QueryableByName)]
struct Malformed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    status: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    operator_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    assigned_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    closed_at: Option<i64>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
}

/// Malformed contacts listed one by one, at most.
const LISTED: i64 = 20;

fn count(connection: &mut DbConnection, table: &str) -> Result<i64, CheckError> {
    let row: Count = diesel::sql_query(format!("SELECT COUNT(*) AS count FROM {table}"))
        .get_result(connection)?;
    Ok(row.count)
}

fn time(micros: Option<i64>) -> String {
    match micros {
        Some(micros) => format!("at {}", utc(micros)),
        None => "never".into(),
    }
}

fn since(happened: &str, never: &str, micros: Option<i64>) -> String {
    match micros {
        Some(micros) => format!("{happened} at {}", utc(micros)),
        None => never.to_owned(),
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff UTC` (Howard Hinnant's civil-from-days).
fn utc(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{fraction:06} UTC",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

/// Every check, on the connection's current transaction.
fn inspect(connection: &mut DbConnection) -> Result<Report, CheckError> {
    let mut report = Report {
        operators: count(connection, "operators")?,
        sources: count(connection, "sources")?,
        contacts: count(connection, "contacts")?,
        ..Report::default()
    };
    let mut problem = |what: String, repairable: bool| {
        report.problems.push(Problem { what, repairable });
    };

    let loads: Vec<OperatorLoad> = diesel::sql_query(
        "SELECT o.id, o.is_active, o.max_load, o.active_load, \
                COALESCE(a.active, 0) AS active, a.last_assigned_at, \
                o.max_load_lowered_at, o.deactivated_at \
           FROM operators o \
           LEFT JOIN (SELECT operator_id, COUNT(*) AS active, MAX(assigned_at) AS last_assigned_at \
                        FROM contacts WHERE status = 1 GROUP BY operator_id) a \
             ON a.operator_id = o.id \
          ORDER BY o.id",
    )
    .load(connection)?;
    for load in &loads {
        let id = load.id;
        if i64::from(load.active_load) != load.active {
            problem(
                format!(
                    "operator {id}: active_load is {} but it has {} ACTIVE contacts",
                    load.active_load, load.active
                ),
                true,
            );
        }
        let changed_since = |changed_at: Option<i64>| matches!((changed_at, load.last_assigned_at), (Some(changed), Some(assigned)) if changed >= assigned);
        if load.active > i64::from(load.max_load) && !changed_since(load.max_load_lowered_at) {
            problem(
                format!(
                    "operator {id}: {} ACTIVE contacts over its max_load {}, the latest assigned \
                     {}, and max_load {}: a contact was assigned beyond the limit",
                    load.active,
                    load.max_load,
                    time(load.last_assigned_at),
                    since(
                        "was last lowered",
                        "was never lowered",
                        load.max_load_lowered_at
                    )
                ),
                false,
            );
        }
        if !load.is_active && load.active > 0 && !changed_since(load.deactivated_at) {
            problem(
                format!(
                    "operator {id}: inactive, yet holds {} ACTIVE contacts, the latest assigned {}, \
                     and it {}: a contact was assigned to an inactive operator",
                    load.active,
                    time(load.last_assigned_at),
                    since(
                        "was last deactivated",
                        "was never deactivated",
                        load.deactivated_at
                    )
                ),
                false,
            );
        }
    }

    let stored: Vec<PairCounts> = diesel::sql_query(
        "SELECT operator_id, source_id, active, closed, total FROM contact_counts \
          ORDER BY operator_id, source_id",
    )
    .load(connection)?;
    let counted: Vec<PairCounts> = diesel::sql_query(
        "SELECT operator_id, source_id, \
                COALESCE(SUM(CASE WHEN status = 1 THEN 1 ELSE 0 END), 0) AS active, \
                COALESCE(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END), 0) AS closed, \
                COUNT(*) AS total \
           FROM contacts WHERE operator_id IS NOT NULL \
          GROUP BY operator_id, source_id ORDER BY operator_id, source_id",
    )
    .load(connection)?;
    let stored: BTreeMap<(i64, i64), PairCounts> = stored
        .into_iter()
        .map(|row| ((row.operator_id, row.source_id), row))
        .collect();
    let counted: BTreeMap<(i64, i64), PairCounts> = counted
        .into_iter()
        .map(|row| ((row.operator_id, row.source_id), row))
        .collect();
    let pairs: std::collections::BTreeSet<_> = stored.keys().chain(counted.keys()).collect();
    for &(operator_id, source_id) in pairs {
        let key = (operator_id, source_id);
        let recount = counted.get(&key).copied().unwrap_or(PairCounts {
            operator_id,
            source_id,
            ..PairCounts::default()
        });
        match stored.get(&key) {
            None => problem(
                format!(
                    "contact_counts: no row for operator {operator_id} and source {source_id}, \
                     which have {} contacts",
                    recount.total
                ),
                true,
            ),
            Some(row) if *row != recount => problem(
                format!(
                    "contact_counts of operator {operator_id} and source {source_id}: \
                     active/closed/total {}/{}/{} but the contacts count {}/{}/{}",
                    row.active,
                    row.closed,
                    row.total,
                    recount.active,
                    recount.closed,
                    recount.total
                ),
                true,
            ),
            Some(_) => {}
        }
    }

    let pending: Vec<SourcePending> = diesel::sql_query(
        "SELECT s.id AS source_id, p.pending AS stored, COALESCE(c.counted, 0) AS counted \
           FROM sources s \
           LEFT JOIN pending_counts p ON p.source_id = s.id \
           LEFT JOIN (SELECT source_id, COUNT(*) AS counted FROM contacts WHERE status = 2 \
                       GROUP BY source_id) c ON c.source_id = s.id \
          ORDER BY s.id",
    )
    .load(connection)?;
    for row in pending {
        match row.stored {
            None => problem(
                format!("pending_counts: no row for source {}", row.source_id),
                true,
            ),
            Some(stored) if stored != row.counted => problem(
                format!(
                    "pending_counts of source {}: {stored} but {} PENDING contacts",
                    row.source_id, row.counted
                ),
                true,
            ),
            Some(_) => {}
        }
    }

    let shape = "(status = 1 AND (operator_id IS NULL OR assigned_at IS NULL OR closed_at IS NOT NULL)) \
         OR (status = 2 AND (operator_id IS NOT NULL OR assigned_at IS NOT NULL OR closed_at IS NOT NULL)) \
         OR (status = 3 AND closed_at IS NULL) \
         OR status NOT IN (1, 2, 3) \
         OR (operator_id IS NULL AND assigned_at IS NOT NULL) \
         OR (operator_id IS NOT NULL AND assigned_at IS NULL)";
    let malformed: Count = diesel::sql_query(format!(
        "SELECT COUNT(*) AS count FROM contacts WHERE {shape}"
    ))
    .get_result(connection)?;
    if malformed.count > 0 {
        let listed: Vec<Malformed> = diesel::sql_query(format!(
            "SELECT id, status, operator_id, assigned_at, closed_at FROM contacts \
              WHERE {shape} ORDER BY id LIMIT {LISTED}"
        ))
        .load(connection)?;
        for contact in listed {
            problem(
                format!(
                    "contact {}: status {} with operator_id {:?}, assigned_at {:?}, closed_at {:?} \
                     (ACTIVE needs an operator and assigned_at, PENDING has neither, CLOSED has closed_at)",
                    contact.id,
                    contact.status,
                    contact.operator_id,
                    contact.assigned_at,
                    contact.closed_at
                ),
                false,
            );
        }
        if malformed.count > LISTED {
            problem(
                format!("{} more malformed contacts", malformed.count - LISTED),
                false,
            );
        }
    }

    if let DbConnection::Sqlite(sqlite) = connection {
        let broken_links: Vec<Text> = diesel::sql_query(
            "SELECT \"table\" || ' row ' || COALESCE(rowid, 0) || ' names a missing ' || parent AS text \
               FROM pragma_foreign_key_check",
        )
        .load(sqlite)?;
        for link in broken_links.into_iter().take(LISTED as usize) {
            problem(format!("foreign key: {}", link.text), false);
        }
        let integrity: Vec<Text> =
            diesel::sql_query("SELECT quick_check AS text FROM pragma_quick_check").load(sqlite)?;
        for line in integrity {
            if line.text != "ok" {
                problem(format!("SQLite integrity: {}", line.text), false);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000000 UTC");
        assert_eq!(utc(1_700_000_000_123_456), "2023-11-14 22:13:20.123456 UTC");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00.000000 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59.999999 UTC");
    }
}
