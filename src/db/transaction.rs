use diesel::{
    Connection,
    connection::{AnsiTransactionManager, TransactionManager},
};

use super::{DbConnection, contacts, counts, operators, tx_state};
use crate::Result;

type MultiTransactionManager = <DbConnection as Connection>::TransactionManager;

/// Starts a transaction that is ready to write from its first statement.
///
/// On SQLite that is `BEGIN IMMEDIATE`: a deferred transaction that read first
/// could fail to upgrade to a writer when another connection committed in
/// between. Units of work inside it run in savepoints ([`unit`]).
/// `cache_loads`: see [`tx_state::reset`].
pub fn begin(connection: &mut DbConnection, cache_loads: bool) -> Result<()> {
    tx_state::reset(cache_loads);
    match connection {
        DbConnection::Sqlite(sqlite) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
        }
        DbConnection::Postgres(_) => MultiTransactionManager::begin_transaction(connection)?,
    }
    Ok(())
}

/// Writes the staged contacts, operator loads and counters, then commits.
pub fn commit(connection: &mut DbConnection) -> Result<()> {
    contacts::flush_staged(connection)?;
    operators::flush_loads(connection)?;
    counts::flush(connection)?;
    MultiTransactionManager::commit_transaction(connection)?;
    Ok(())
}

pub fn rollback(connection: &mut DbConnection) {
    if let Err(error) = MultiTransactionManager::rollback_transaction(connection) {
        tracing::warn!(%error, "rollback failed");
    }
    tx_state::reset(false);
    tx_state::forget_known_sources();
}

/// Runs one unit of work in a savepoint, so that its failure undoes only its
/// own writes and leaves the other units of the transaction standing.
pub fn unit<T>(
    connection: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T>,
) -> Result<T> {
    let outcome = connection.transaction(work);
    match outcome {
        Ok(_) => tx_state::unit_succeeded(),
        Err(_) => tx_state::unit_failed(),
    }
    outcome
}

/// Runs one unit of work without a savepoint (see the writer's `Mode::Direct`).
pub fn direct_unit<T>(
    connection: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T>,
) -> Result<T> {
    let outcome = work(connection);
    match outcome {
        Ok(_) => tx_state::unit_succeeded(),
        Err(_) => tx_state::unit_failed(),
    }
    outcome
}
