use diesel::{
    Connection,
    connection::{AnsiTransactionManager, TransactionManager},
};

use super::DbConnection;
use crate::{Error, Result};

type MultiTransactionManager = <DbConnection as Connection>::TransactionManager;

/// Runs `work` in a transaction that is ready to write from its first statement.
///
/// On SQLite that is `BEGIN IMMEDIATE`: a deferred transaction that read first
/// could fail to upgrade to a writer when another connection committed in
/// between. Nested `Connection::transaction` calls inside `work` become
/// savepoints as usual.
pub fn write_transaction<T>(
    connection: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T>,
) -> Result<T> {
    match connection {
        DbConnection::Sqlite(sqlite) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
        }
        DbConnection::Postgres(_) => MultiTransactionManager::begin_transaction(connection)?,
    }
    match work(connection) {
        Ok(value) => {
            MultiTransactionManager::commit_transaction(connection)?;
            Ok(value)
        }
        Err(error) => {
            if let Err(rollback) = MultiTransactionManager::rollback_transaction(connection) {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(error)
        }
    }
}

/// Whether a failed unit of work may be run again: see [`Error::is_transient_conflict`].
pub(crate) fn should_retry(error: &Error, attempt: u32, retry_unique_violations: bool) -> bool {
    const MAX_ATTEMPTS: u32 = 16;
    attempt < MAX_ATTEMPTS && error.is_transient_conflict(retry_unique_violations)
}
