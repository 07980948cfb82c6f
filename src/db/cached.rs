//! Statements that SQLite keeps prepared although their text depends on how
//! many values they carry.
//!
//! diesel prepares anew, on every call, a statement whose SQL text varies
//! with its values: an `eq_any` list on SQLite (`IN (?, ?, …)`, one
//! placeholder per value) or an insert of a slice of rows (`VALUES (…),
//! (…)`). In a profile of the SQLite writer thread in the `register` bench,
//! SQLite's parsing and code generation for such statements took 29% of its
//! time: the lead read, the inserts at commit, the counters and loads.
//!
//! Three ways keep them prepared with few texts, so that the cache stays small:
//! - rows are inserted in chunks whose lengths are powers of two, each as a
//!   fixed-size array, which diesel keeps prepared itself
//!   ([`insert_kept_prepared!`]): at most eight texts per table;
//! - a query with lists pads them to a power of two ([`padded`]) and is
//!   wrapped in [`CachedBySql`], which lets diesel cache it by its SQL text;
//! - an `UPDATE`, which diesel never caches, goes through
//!   [`execute_kept_prepared`]: its text never varies.
//!
//! On PostgreSQL the same statements already have one text whatever their
//! size (`= ANY($1)`, `unnest`), and diesel keeps them prepared itself.

use diesel::{
    PgConnection, QueryResult, RunQueryDsl,
    backend::Backend,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId, SelectQuery},
    sqlite::Sqlite,
};

use super::DbConnection;

/// A query cached by its SQL text. Only for a query whose text has a few
/// forms at most (see the module's doc).
#[derive(Debug, Clone)]
pub(super) struct CachedBySql<Q>(pub(super) Q);

impl<DB: Backend, Q: QueryFragment<DB>> QueryFragment<DB> for CachedBySql<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    /// diesel asks this of the whole statement before it looks in its
    /// cache; the key is then the text, as [`QueryId`] below has no static id.
    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for CachedBySql<Q> {
    type QueryId = ();

    // Keyed by its SQL text, not by its type: one type has many texts.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for CachedBySql<Q> {
    type SqlType = Q::SqlType;
}

/// A `SELECT` stays one: [`super::reader::Reader`] takes it.
impl<Q: SelectQuery> SelectQuery for CachedBySql<Q> {
    type SqlType = <Q as SelectQuery>::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for CachedBySql<Q> {}

/// Runs a statement whose text never varies but which diesel never caches:
/// an `UPDATE` (diesel cannot tell a changeset with optional columns, whose
/// text varies, from one without). SQLite keeps it prepared by its text
/// (a text that did vary would only add entries); PostgreSQL runs it as
/// diesel does, planned for its values each time.
pub(super) fn execute_kept_prepared<Q>(
    query: Q,
    connection: &mut DbConnection,
) -> QueryResult<usize>
where
    Q: QueryFragment<Sqlite> + QueryFragment<Pg> + QueryId,
{
    match connection {
        DbConnection::Sqlite(sqlite) => CachedBySql(query).execute(sqlite),
        DbConnection::Postgres(pg) => {
            diesel::query_dsl::methods::ExecuteDsl::<PgConnection, Pg>::execute(query, pg)
        }
    }
}

/// `values` made `len` long (a power of two, at least `values.len()`) with
/// copies of `filler`: a value the query's condition never matches, or any
/// of `values` where a repeat changes nothing (`IN`).
pub(super) fn padded<T: Clone>(values: &[T], len: usize, filler: &T) -> Vec<T> {
    let mut padded = Vec::with_capacity(len.max(values.len()));
    padded.extend_from_slice(values);
    padded.resize(len.max(values.len()), filler.clone());
    padded
}

/// `rows` cut into chunks whose lengths are powers of two, largest first,
/// none longer than `max` (a power of two): 37 rows in chunks of 32, 4 and 1.
pub(super) fn power_of_two_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// The longest chunk [`insert_kept_prepared!`] inserts at once: 15 columns
/// (an event) make 1,920 values, well below SQLite's limit of 32,766. The
/// macro's arms go up to it.
pub(super) const MAX_CHUNK: usize = 128;
const _: () = assert!(MAX_CHUNK == 128, "insert_kept_prepared!'s arms stop at 128");

/// Inserts the slice `$rows` into `$table` on the `&mut SqliteConnection`
/// `$connection`, in chunks of a power of two rows (at most [`MAX_CHUNK`]),
/// each as a fixed-size array, which diesel keeps prepared. Evaluates to a
/// `QueryResult<usize>`: the rows inserted.
macro_rules! insert_kept_prepared {
    ($connection:expr, $table:expr, $rows:expr) => {{
        let connection: &mut ::diesel::SqliteConnection = $connection;
        let mut inserted = Ok(0_usize);
        for chunk in $crate::db::cached::power_of_two_chunks($rows, $crate::db::cached::MAX_CHUNK) {
            let done = $crate::db::cached::insert_kept_prepared!(
                @arms connection, $table, chunk, [1, 2, 4, 8, 16, 32, 64, 128]
            );
            inserted = match (inserted, done) {
                (Ok(total), Ok(n)) => Ok(total + n),
                (Err(error), _) | (_, Err(error)) => Err(error),
            };
            if inserted.is_err() {
                break;
            }
        }
        inserted
    }};
    (@arms $connection:ident, $table:expr, $chunk:ident, [$($n:literal),*]) => {
        match $chunk.len() {
            $($n => ::diesel::RunQueryDsl::execute(
                ::diesel::insert_into($table)
                    .values(<&[_; $n]>::try_from($chunk).expect("a chunk of this length")),
                $connection,
            ),)*
            other => unreachable!("power_of_two_chunks made a chunk of {other} rows"),
        }
    };
}
pub(crate) use insert_kept_prepared;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::{
        Connection, ExpressionMethods, QueryDsl, SqliteConnection, connection::InstrumentationEvent,
    };

    use super::*;

    diesel::table! {
        numbers (id) {
            id -> BigInt,
        }
    }

    /// The SQL texts the connection put in its statement cache.
    fn cached_texts(connection: &mut SqliteConnection) -> Arc<Mutex<Vec<String>>> {
        let texts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&texts);
        connection.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                seen.lock().unwrap().push(sql.to_owned());
            }
        });
        texts
    }

    fn connection() -> SqliteConnection {
        let mut connection = SqliteConnection::establish(":memory:").unwrap();
        diesel::sql_query("CREATE TABLE numbers (id BIGINT PRIMARY KEY NOT NULL)")
            .execute(&mut connection)
            .unwrap();
        connection
    }

    #[test]
    fn lists_padded_to_one_length_are_prepared_once() {
        let mut connection = connection();
        let texts = cached_texts(&mut connection);
        for ids in [vec![1_i64, 2, 3], vec![4, 5, 6, 7], vec![8]] {
            let ids = padded(&ids, 4, &0);
            let query = numbers::table
                .filter(numbers::id.eq_any(ids))
                .select(numbers::id);
            let found: Vec<i64> = CachedBySql(query).load(&mut connection).unwrap();
            assert!(found.is_empty());
        }
        let texts = texts.lock().unwrap();
        assert_eq!(texts.len(), 1, "{texts:?}");
    }

    #[test]
    fn without_it_diesel_prepares_the_list_every_time() {
        let mut connection = connection();
        let texts = cached_texts(&mut connection);
        for _ in 0..3 {
            let query = numbers::table
                .filter(numbers::id.eq_any(vec![1_i64, 2]))
                .select(numbers::id);
            let _: Vec<i64> = query.load(&mut connection).unwrap();
        }
        let texts = texts.lock().unwrap();
        assert!(texts.is_empty(), "{texts:?}");
    }

    #[test]
    fn rows_inserted_in_chunks_of_a_power_of_two_are_prepared_once_per_length() {
        let mut connection = connection();
        let texts = cached_texts(&mut connection);
        for (first, count) in [(0_i64, 37_i64), (100, 37), (200, 5)] {
            let rows: Vec<_> = (first..first + count)
                .map(|id| numbers::id.eq(id))
                .collect();
            let inserted = insert_kept_prepared!(&mut connection, numbers::table, &rows).unwrap();
            assert_eq!(inserted, rows.len());
        }
        let ids: Vec<i64> = numbers::table
            .select(numbers::id)
            .order(numbers::id)
            .load(&mut connection)
            .unwrap();
        let expected: Vec<i64> = (0..37).chain(100..137).chain(200..205).collect();
        assert_eq!(ids, expected);
        // 37 = 32 + 4 + 1 and 5 = 4 + 1: three texts (32, 4 and 1 rows).
        let texts = texts.lock().unwrap();
        let inserts = texts.iter().filter(|sql| sql.starts_with("INSERT")).count();
        assert_eq!(inserts, 3, "{texts:?}");
    }

    #[test]
    fn without_them_diesel_prepares_an_insert_every_time() {
        let mut connection = connection();
        let texts = cached_texts(&mut connection);
        for first in [0_i64, 10] {
            let rows: Vec<_> = (first..first + 4).map(|id| numbers::id.eq(id)).collect();
            diesel::insert_into(numbers::table)
                .values(&rows)
                .execute(&mut connection)
                .unwrap();
        }
        let texts = texts.lock().unwrap();
        assert!(texts.is_empty(), "{texts:?}");
    }

    #[test]
    fn chunk_lengths_are_powers_of_two_within_the_maximum() {
        let rows: Vec<u32> = (0..300).collect();
        let lengths: Vec<usize> = power_of_two_chunks(&rows, 128).map(<[u32]>::len).collect();
        assert_eq!(lengths, [128, 128, 32, 8, 4]);
        assert_eq!(power_of_two_chunks(&rows[..0], 128).count(), 0);
        assert_eq!(
            padded(&[1, 2, 3], 3_usize.next_power_of_two(), &0),
            [1, 2, 3, 0]
        );
        assert_eq!(padded(&[] as &[i32], 0_usize.next_power_of_two(), &0), [0]);
    }
}
