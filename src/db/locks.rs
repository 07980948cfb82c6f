//! Row locks that order concurrent PostgreSQL transactions where a guarded
//! update alone would not. SQLite needs none: its write transactions are
//! serialized (`BEGIN IMMEDIATE`).

use diesel::prelude::*;

use super::{
    DbConnection,
    schema::{operators, source_operators, sources},
};

/// Held by a registration about to leave its contact PENDING, so that a
/// concurrent change of the source's weight table (which takes
/// [`lock_source_table`]) either happens first and is seen, or waits and then
/// sees the pending contact in its dispatch.
pub fn share_source(connection: &mut DbConnection, source_id: i64) -> QueryResult<()> {
    if let DbConnection::Postgres(pg) = connection {
        sources::table
            .find(source_id)
            .select(sources::id)
            .for_key_share()
            .load::<i64>(pg)?;
    }
    Ok(())
}

/// Taken before a source's weight table is replaced; conflicts with
/// [`share_source`] and with the key-share lock of every contact insert.
pub fn lock_source_table(connection: &mut DbConnection, source_id: i64) -> QueryResult<bool> {
    match connection {
        DbConnection::Postgres(pg) => Ok(!sources::table
            .find(source_id)
            .select(sources::id)
            .for_update()
            .load::<i64>(pg)?
            .is_empty()),
        DbConnection::Sqlite(_) => Ok(diesel::select(diesel::dsl::exists(
            sources::table.find(source_id),
        ))
        .get_result(connection)?),
    }
}

/// Locks every operator in the source's weight table, in id order (one order
/// for everyone, so two such lockers never deadlock). A capacity event on any
/// of them (close, activation, new limit) either commits first and is seen by
/// the next read, or waits and then sees what this transaction wrote.
pub fn source_operators(connection: &mut DbConnection, source_id: i64) -> QueryResult<()> {
    if let DbConnection::Postgres(pg) = connection {
        operators::table
            .filter(
                operators::id.eq_any(
                    source_operators::table
                        .filter(source_operators::source_id.eq(source_id))
                        .select(source_operators::operator_id),
                ),
            )
            .order(operators::id)
            .select(operators::id)
            .for_update()
            .load::<i64>(pg)?;
    }
    Ok(())
}
