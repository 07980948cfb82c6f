//! Plain SQL on the benchmark's database, behind the server's back: seeding,
//! recounting and the final invariant check.

use diesel::{
    Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection,
    connection::SimpleConnection, sql_types::BigInt,
};
use minicrm::proto::ContactStatus;

use crate::test_db::TestDb;

/// `contacts.status` as stored: the proto enum's numbers.
pub const ACTIVE: i32 = ContactStatus::Active as i32;
pub const PENDING: i32 = ContactStatus::Pending as i32;
pub const CLOSED: i32 = ContactStatus::Closed as i32;

pub enum Sql {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Sql {
    pub fn connect(db: &TestDb) -> Self {
        match db.sqlite_path() {
            Some(path) => {
                let mut c = SqliteConnection::establish(&path.to_string_lossy())
                    .expect("open the SQLite file");
                c.batch_execute("PRAGMA busy_timeout = 30000").unwrap();
                Self::Sqlite(c)
            }
            None => Self::Postgres(PgConnection::establish(&db.url()).expect("connect")),
        }
    }

    pub fn run(&mut self, sql: &str) {
        match self {
            Self::Sqlite(c) => c.batch_execute(sql),
            Self::Postgres(c) => c.batch_execute(sql),
        }
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    /// The column `n` of every row.
    pub fn try_numbers(&mut self, sql: &str) -> diesel::QueryResult<Vec<i64>> {
        let rows: Vec<Number> = match self {
            Self::Sqlite(c) => diesel::sql_query(sql).load(c),
            Self::Postgres(c) => diesel::sql_query(sql).load(c),
        }?;
        Ok(rows.into_iter().map(|row| row.n).collect())
    }

    pub fn numbers(&mut self, sql: &str) -> Vec<i64> {
        self.try_numbers(sql)
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    /// The column `n` of the first row (0 without rows).
    pub fn number(&mut self, sql: &str) -> i64 {
        self.numbers(sql).first().copied().unwrap_or(0)
    }

    /// `SELECT columns FROM numbers(1..=n) AS s(i)` in each dialect, as an
    /// INSERT source.
    pub fn series(&self, n: u64, columns: &str) -> String {
        match self {
            Self::Sqlite(_) => format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 SELECT {columns} FROM s"
            ),
            Self::Postgres(_) => format!("SELECT {columns} FROM generate_series(1, {n}) AS s(i)"),
        }
    }

    /// Rebuilds the counters the server keeps for GetOperatorStats after rows
    /// were inserted behind its back.
    pub fn recount(&mut self) {
        self.run(&format!(
            "DELETE FROM contact_counts; DELETE FROM pending_counts;
             INSERT INTO contact_counts (operator_id, source_id, active, closed, total)
               SELECT so.operator_id, so.source_id,
                      (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id AND c.status = {ACTIVE}),
                      (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id AND c.status = {CLOSED}),
                      (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = so.operator_id AND c.source_id = so.source_id)
               FROM source_operators so;
             INSERT INTO pending_counts (source_id, pending)
               SELECT s.id, (SELECT COUNT(*) FROM contacts c WHERE c.source_id = s.id AND c.status = {PENDING}) FROM sources s;"
        ));
    }

    /// The invariant, from the database itself: every operator's
    /// `active_load` equals its ACTIVE contacts, none is over `max_load`, and
    /// the stats counters agree with the rows they count.
    pub fn check_invariant(&mut self) -> Result<String, String> {
        let operators = self.number("SELECT COUNT(*) AS n FROM operators");
        let wrong_load = self.number(&format!(
            "SELECT COUNT(*) AS n FROM operators o WHERE o.active_load <> \
             (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = o.id AND c.status = {ACTIVE})"
        ));
        let over = self.number("SELECT COUNT(*) AS n FROM operators WHERE active_load > max_load");
        let wrong_counts = self.number(&format!(
            "SELECT COUNT(*) AS n FROM contact_counts k WHERE k.active <> \
             (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = k.operator_id AND c.source_id = k.source_id AND c.status = {ACTIVE}) \
             OR k.closed <> \
             (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = k.operator_id AND c.source_id = k.source_id AND c.status = {CLOSED}) \
             OR k.total <> (SELECT COUNT(*) FROM contacts c WHERE c.operator_id = k.operator_id AND c.source_id = k.source_id)"
        ));
        let wrong_pending = self.number(&format!(
            "SELECT COUNT(*) AS n FROM pending_counts p WHERE p.pending <> \
             (SELECT COUNT(*) FROM contacts c WHERE c.source_id = p.source_id AND c.status = {PENDING})"
        ));
        let contacts = self.number("SELECT COUNT(*) AS n FROM contacts");
        if wrong_load == 0 && over == 0 && wrong_counts == 0 && wrong_pending == 0 {
            Ok(format!(
                "OK: {operators} operators, {contacts} contacts; every active_load equals its \
                 ACTIVE count, none over max_load, stats counters exact"
            ))
        } else {
            Err(format!(
                "VIOLATED: {wrong_load} operators with a wrong active_load, {over} over max_load, \
                 {wrong_counts} wrong pair counters, {wrong_pending} wrong pending counters"
            ))
        }
    }
}
