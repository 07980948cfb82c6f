//! Runs typed queries on the backend's own connection inside [`DbConnection`].
//!
//! Going through the `MultiConnection` enum, diesel serializes every query to
//! SQL text on every call (profiles put that at 40% of a registration's CPU).
//! On `SqliteConnection` or `PgConnection` directly, a query without dynamic
//! parts is found in the prepared-statement cache by its type, with no SQL
//! built at all. The query itself is written once: it is generic over the
//! backend, and the match below only picks the connection it runs on.

use diesel::{
    PgConnection, QueryResult, RunQueryDsl, SqliteConnection,
    query_dsl::{
        LoadQuery,
        methods::{ExecuteDsl, LimitDsl},
    },
};

use super::DbConnection;

pub trait RunOn: Sized {
    fn load_on<'q, U>(self, connection: &mut DbConnection) -> QueryResult<Vec<U>>
    where
        Self: RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Self: LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        match connection {
            DbConnection::Sqlite(c) => RunQueryDsl::<SqliteConnection>::load(self, c),
            DbConnection::Postgres(c) => RunQueryDsl::<PgConnection>::load(self, c),
        }
    }

    fn get_result_on<'q, U>(self, connection: &mut DbConnection) -> QueryResult<U>
    where
        Self: RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Self: LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        match connection {
            DbConnection::Sqlite(c) => RunQueryDsl::<SqliteConnection>::get_result(self, c),
            DbConnection::Postgres(c) => RunQueryDsl::<PgConnection>::get_result(self, c),
        }
    }

    fn first_on<'q, U>(self, connection: &mut DbConnection) -> QueryResult<U>
    where
        Self: LimitDsl + RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        diesel::dsl::Limit<Self>:
            LoadQuery<'q, SqliteConnection, U> + LoadQuery<'q, PgConnection, U>,
    {
        match connection {
            DbConnection::Sqlite(c) => RunQueryDsl::<SqliteConnection>::first(self, c),
            DbConnection::Postgres(c) => RunQueryDsl::<PgConnection>::first(self, c),
        }
    }

    fn execute_on(self, connection: &mut DbConnection) -> QueryResult<usize>
    where
        Self: RunQueryDsl<SqliteConnection> + RunQueryDsl<PgConnection>,
        Self: ExecuteDsl<SqliteConnection> + ExecuteDsl<PgConnection>,
    {
        match connection {
            DbConnection::Sqlite(c) => RunQueryDsl::<SqliteConnection>::execute(self, c),
            DbConnection::Postgres(c) => RunQueryDsl::<PgConnection>::execute(self, c),
        }
    }
}

impl<T> RunOn for T {}
