//! Read-only access to a connection: the only kind of access the check phase
//! of a write unit gets (see [`super::units`]), and what every read call uses.
//!
//! A [`Reader`] runs nothing but `SELECT` statements: its methods accept only
//! queries that implement diesel's [`SelectQuery`], which diesel implements for
//! select statements alone. So a unit's check cannot write, whatever it does.

use diesel::{
    PgConnection, QueryResult, RunQueryDsl, SqliteConnection,
    dsl::Limit,
    query_builder::SelectQuery,
    query_dsl::{LoadQuery, methods::LimitDsl},
};

use super::{DbConnection, prepared::Prepared, run::RunOn};
use crate::{Error, Result};

pub(crate) struct Reader<'c> {
    connection: &'c mut DbConnection,
}

impl<'c> Reader<'c> {
    pub(crate) fn new(connection: &'c mut DbConnection) -> Self {
        Self { connection }
    }

    /// Runs on the backend's own connection (see [`super::run`]).
    pub(crate) fn load<'q, Q, U>(&mut self, query: Q) -> QueryResult<Vec<U>>
    where
        Q: SelectQuery + RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Q: LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        query.load_on(self.connection)
    }

    pub(crate) fn get_result<'q, Q, U>(&mut self, query: Q) -> QueryResult<U>
    where
        Q: SelectQuery + RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Q: LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        query.get_result_on(self.connection)
    }

    pub(crate) fn first<'q, Q, U>(&mut self, query: Q) -> QueryResult<U>
    where
        Q: SelectQuery + LimitDsl + RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Limit<Q>: LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        query.first_on(self.connection)
    }

    /// Runs a query boxed for both backends (filters added at run time).
    pub(crate) fn load_boxed<'q, Q, U>(&mut self, query: Q) -> QueryResult<Vec<U>>
    where
        Q: SelectQuery + RunQueryDsl<DbConnection> + LoadQuery<'q, DbConnection, U>,
    {
        RunQueryDsl::load(query, self.connection)
    }

    /// PostgreSQL: runs a hand-written SELECT, kept prepared (see
    /// [`super::prepared`]). `None` on SQLite, where the caller runs its
    /// diesel query instead.
    pub(crate) fn load_pg<U>(&mut self, query: PgSelect<'_>) -> Option<QueryResult<Vec<U>>>
    where
        U: diesel::QueryableByName<diesel::pg::Pg> + 'static,
    {
        match self.connection {
            DbConnection::Postgres(pg) => Some(RunQueryDsl::load(query.0, pg)),
            DbConnection::Sqlite(_) => None,
        }
    }

    /// Whether the query finds a row: `SELECT EXISTS (query)`.
    pub(crate) fn exists<Q>(&mut self, query: Q) -> QueryResult<bool>
    where
        Q: SelectQuery,
        diesel::dsl::exists<Q>: diesel::Expression,
        diesel::dsl::select<diesel::dsl::exists<Q>>: diesel::query_builder::AsQuery
            + SelectQuery
            + RunQueryDsl<SqliteConnection>
            + RunQueryDsl<PgConnection>
            + LoadQuery<'static, SqliteConnection, bool>
            + LoadQuery<'static, PgConnection, bool>,
    {
        self.get_result(diesel::select(diesel::dsl::exists(query)))
    }

    /// NOT_FOUND ("`what` not found") unless the query finds a row.
    pub(crate) fn must_find<Q>(&mut self, query: Q, what: impl std::fmt::Display) -> Result<()>
    where
        Q: SelectQuery,
        diesel::dsl::exists<Q>: diesel::Expression,
        diesel::dsl::select<diesel::dsl::exists<Q>>: diesel::query_builder::AsQuery
            + SelectQuery
            + RunQueryDsl<SqliteConnection>
            + RunQueryDsl<PgConnection>
            + LoadQuery<'static, SqliteConnection, bool>
            + LoadQuery<'static, PgConnection, bool>,
    {
        if self.exists(query)? {
            Ok(())
        } else {
            Err(Error::not_found(what))
        }
    }
}

/// A SELECT for [`Reader::load_pg`], with its values bound: made only from
/// SQL text that is a SELECT.
pub(crate) struct PgSelect<'v>(Prepared<'v>);

impl<'v> PgSelect<'v> {
    pub(crate) fn new(select: &'static str) -> Self {
        assert!(
            select.trim_start().starts_with("SELECT "),
            "not a SELECT: {select}"
        );
        Self(Prepared::new(select))
    }

    pub(crate) fn bind<ST, V>(self, value: V) -> Self
    where
        ST: diesel::sql_types::SqlType + diesel::expression::TypedExpressionType,
        V: diesel::expression::AsExpression<ST>,
        V::Expression: diesel::query_builder::QueryFragment<diesel::pg::Pg> + Send + 'v,
    {
        Self(self.0.bind::<ST, V>(value))
    }
}

/// Loads one page of a list: the rows of a boxed query with an id above the
/// page's start, in id order, one more than the page holds (that extra row
/// only says another page exists), each converted from its row type.
/// Every list goes through here, so every list paginates by the same rules.
///
/// `keyset_page!(reader, query, table::id, page, Row => Item)`
macro_rules! keyset_page {
    ($reader:expr, $query:expr, $id:expr, $page:expr, $row:ty => $item:ty) => {{
        let page: $crate::domain::PageRequest = $page;
        $reader
            .load_boxed::<_, $row>(
                $query
                    .filter($id.gt(page.after()))
                    .order($id)
                    .limit(page.size() + 1),
            )
            .map(|rows| {
                page.paginate(
                    rows.into_iter().map(<$item>::from).collect(),
                    |item: &$item| item.id,
                )
            })
    }};
}
pub(crate) use keyset_page;
