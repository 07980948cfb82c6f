//! Hand-written PostgreSQL statements that diesel keeps prepared.
//!
//! `diesel::sql_query` marks its statement unsafe to cache, so PostgreSQL
//! parses and plans it on every call: in a profile of the `mix` bench,
//! parsing (`raw_parser`, `parse_analyze`) was 10% of the PostgreSQL
//! backend's CPU and planning 9.5%, most of it for such statements. The
//! bulk inserts at commit (`INSERT … SELECT * FROM unnest(…)`, the same text
//! for any number of rows) are the longest of them. [`Prepared`] is the same
//! SQL text with the same `.bind` calls, found in the connection's statement
//! cache by its text after the first call.
//!
//! A write batch's statements are kept prepared: these (the bulk inserts,
//! the lock statements of [`super::locks`], the pending read of
//! [`super::reader::PgSelect`], the guarded updates, the counters) and the
//! `SELECT`s diesel builds, which diesel keeps prepared itself. diesel never
//! caches an `UPDATE`: a change of a single row (one operator's load, one
//! counter) is parsed and planned each time. PostgreSQL
//! runs a prepared statement on a generic plan, made once for the tables as
//! they were then, when that plan costs no more than planning for the
//! values; the writer's sessions always do (see `WRITER_PLAN_CACHE_MODE`
//! in [`super::connection`]). For a lookup by key that is an index scan,
//! unless the table was a page or two when the plan was made: then it is a
//! sequential scan, whatever the query's form (checked for `= ANY($1)`,
//! `= ANY(ARRAY(…))`, `CROSS JOIN LATERAL … LIMIT 1` and joins to
//! `unnest`), and it stays one while the table grows, until an ANALYZE of
//! it makes PostgreSQL plan again. So the pool replaces each connection after
//! [`super::connection::POSTGRES_CONNECTION_LIFETIME`]; and the sessions
//! plan with a `random_page_cost` for cached data (see
//! [`super::connection`]), without which a table of a few thousand rows
//! was scanned rather than looked up by key, prepared or not.

use diesel::{
    QueryResult, RunQueryDsl,
    expression::{AsExpression, TypedExpressionType},
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    result::Error,
    sql_types::{SqlType, Untyped},
};

/// A statement's SQL text and its values, bound by [`Prepared::bind`] in the
/// order of their placeholders. Each placeholder `$n` appears once, in
/// order (`$1`, `$2`, …); diesel numbers them itself, so the statement
/// fails to build otherwise. No `$` may appear in the text but these.
pub(super) struct Prepared<'v> {
    sql: &'static str,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'v>>,
}

impl<'v> Prepared<'v> {
    pub(super) fn new(sql: &'static str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
        }
    }

    pub(super) fn bind<ST, V>(mut self, value: V) -> Self
    where
        ST: SqlType + TypedExpressionType,
        V: AsExpression<ST>,
        V::Expression: QueryFragment<Pg> + Send + 'v,
    {
        self.binds.push(Box::new(value.as_expression()));
        self
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    /// The text, with each `$n` replaced by the n-th value's placeholder
    /// (the same `$n`). Unlike `SqlQuery`, nothing marks it unsafe to cache:
    /// the cache key is the text and the bind types, which never change.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        let mut binds = self.binds.iter();
        let mut expected = 1_usize;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            let number = &rest[at + 1..at + 1 + digits];
            if number != expected.to_string() {
                return Err(misbuilt(format!("${number} where ${expected} was due")));
            }
            let bind = binds
                .next()
                .ok_or_else(|| misbuilt(format!("no value bound for ${number}")))?;
            bind.walk_ast(out.reborrow())?;
            rest = &rest[at + 1 + digits..];
            expected += 1;
        }
        out.push_sql(rest);
        match binds.next() {
            Some(_) => Err(misbuilt(format!(
                "more values bound than ${}",
                expected - 1
            ))),
            None => Ok(()),
        }
    }
}

fn misbuilt(problem: String) -> Error {
    Error::QueryBuilderError(format!("a prepared statement's placeholders: {problem}").into())
}

impl QueryId for Prepared<'_> {
    type QueryId = ();

    // Keyed by its SQL text, not by its type: every statement is a `Prepared`.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared<'_> {}

#[cfg(test)]
mod tests {
    use diesel::{
        Connection, PgConnection, QueryableByName,
        pg::PgQueryBuilder,
        sql_types::{Array, BigInt, Integer},
    };

    use super::*;
    use crate::db::test_db::{TestDb, or_skip};

    #[derive(QueryableByName)]
    struct Total {
        #[diesel(sql_type = BigInt)]
        total: i64,
    }

    /// Prepared once, then found in the cache: PostgreSQL's
    /// `pg_prepared_statements` lists it once after three calls, which a
    /// `sql_query` (never prepared by name) would not.
    #[test]
    fn the_statement_is_prepared_once_and_bound_anew() {
        let db = or_skip!(TestDb::postgres());
        let mut pg = PgConnection::establish(&db.url()).expect("connect");
        const SQL: &str =
            "SELECT COALESCE(SUM(v), 0)::bigint AS total FROM unnest($1::bigint[]) AS v";
        for (values, expected) in [(vec![1_i64, 2], 3), (vec![], 0), (vec![40, 2], 42)] {
            let total: Total = Prepared::new(SQL)
                .bind::<Array<BigInt>, _>(values)
                .get_result(&mut pg)
                .expect("run");
            assert_eq!(total.total, expected);
        }
        let prepared: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT COUNT(*) FROM pg_prepared_statements \
              WHERE statement LIKE '%FROM unnest($1::bigint[]) AS v')",
        ))
        .get_result(&mut pg)
        .expect("count");
        assert_eq!(prepared, 1);
    }

    fn sql(statement: &Prepared<'_>) -> QueryResult<String> {
        let mut builder = PgQueryBuilder::default();
        statement.to_sql(&mut builder, &Pg)?;
        Ok(diesel::query_builder::QueryBuilder::finish(builder))
    }

    #[test]
    fn placeholders_are_the_bound_values_in_order() {
        let statement = Prepared::new("SELECT $1::int + $2::int AS total")
            .bind::<Integer, _>(1)
            .bind::<Integer, _>(2);
        assert_eq!(
            sql(&statement).unwrap(),
            "SELECT $1::int + $2::int AS total"
        );
    }

    #[test]
    fn a_placeholder_out_of_order_or_unbound_fails_to_build() {
        let swapped = Prepared::new("SELECT $2, $1")
            .bind::<Integer, _>(1)
            .bind::<Integer, _>(2);
        assert!(sql(&swapped).is_err());
        let repeated = Prepared::new("SELECT $1, $1").bind::<Integer, _>(1);
        assert!(sql(&repeated).is_err());
        let unbound = Prepared::new("SELECT $1, $2").bind::<Integer, _>(1);
        assert!(sql(&unbound).is_err());
        let unused = Prepared::new("SELECT $1")
            .bind::<Integer, _>(1)
            .bind::<Integer, _>(2);
        assert!(sql(&unused).is_err());
    }
}
