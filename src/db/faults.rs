//! What a database error means for the service: a lost connection, a
//! database that cannot take the work now, a conflict with a concurrent
//! transaction (run it again), or something else (a fault of the service).
//!
//! PostgreSQL errors are told apart by SQLSTATE, never by message text
//! (messages are translated with `lc_messages`, and reworded between
//! versions). diesel 2.3 maps a few SQLSTATEs to a [`DatabaseErrorKind`]
//! (40001 among them) but neither 40P01 (deadlock) nor 55P03 (lock wait
//! timed out), and it does not expose the code itself: [`sqlstate`] reads it
//! from the error's `PGresult` (see there). SQLite has no SQLSTATE, and
//! diesel keeps only its message, which for the cases below is one of the
//! fixed English strings of `sqlite3_errstr`, never translated.

use std::sync::atomic::{AtomicBool, Ordering};

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

/// What a database error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The connection is gone: UNAVAILABLE, and the connection is dropped
    /// from its pool (see [`ConnectionWatch`]).
    ConnectionLost,
    /// The database is there but cannot take the work now: it is shutting
    /// down, out of connections, memory or disk, a statement ran past
    /// `statement_timeout`, or SQLite's file lock stayed taken past
    /// `busy_timeout`. UNAVAILABLE.
    Unavailable,
    /// The database aborted the transaction because of a concurrent one:
    /// serialization failure (40001), deadlock (40P01), or a lock wait past
    /// `lock_timeout` (55P03). Running it again may succeed; if it keeps
    /// failing, UNAVAILABLE.
    Conflict,
    /// A unique index refused a row (23505, or SQLite's UNIQUE constraint).
    UniqueViolation,
    /// Anything else: a fault of the service (INTERNAL).
    Other,
}

/// Classifies a diesel error.
pub(crate) fn classify(error: &DieselError) -> Class {
    match error {
        DieselError::DatabaseError(kind, info) => classify_database(*kind, info.as_ref()),
        // The commit failed, and so did the rollback after it: the commit's
        // error says why.
        DieselError::RollbackErrorOnCommit { commit_error, .. } => classify(commit_error),
        // diesel gives up on a connection whose transaction state it lost
        // track of, which a lost connection causes (a ROLLBACK that could
        // not be sent).
        DieselError::BrokenTransactionManager => Class::ConnectionLost,
        _ => Class::Other,
    }
}

fn classify_database(
    kind: DatabaseErrorKind,
    info: &(dyn DatabaseErrorInformation + Send + Sync),
) -> Class {
    match kind {
        DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
            return Class::ConnectionLost;
        }
        DatabaseErrorKind::SerializationFailure => return Class::Conflict,
        DatabaseErrorKind::UniqueViolation => return Class::UniqueViolation,
        _ => {}
    }
    if let Some(code) = sqlstate(info) {
        return classify_sqlstate(code);
    }
    // SQLite: SQLITE_BUSY, SQLITE_FULL (the texts of sqlite3_errstr).
    match info.message() {
        "database is locked" | "database table is locked" | "database or disk is full" => {
            Class::Unavailable
        }
        _ => Class::Other,
    }
}

/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
fn classify_sqlstate(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => Class::Conflict,
        "23505" => Class::UniqueViolation,
        // admin_shutdown, crash_shutdown, cannot_connect_now: the session is
        // (about to be) gone; idle_session_timeout and
        // idle_in_transaction_session_timeout end it too.
        "57P01" | "57P02" | "57P03" | "57P05" | "25P03" => Class::ConnectionLost,
        // query_canceled (statement_timeout), database_dropped
        "57014" | "57P04" => Class::Unavailable,
        // connection_exception
        _ if code.starts_with("08") => Class::ConnectionLost,
        // insufficient_resources (out of connections, memory, disk)
        _ if code.starts_with("53") => Class::Unavailable,
        _ => Class::Other,
    }
}

/// The SQLSTATE of a PostgreSQL error, if `info` came from PostgreSQL.
///
/// diesel boxes every error PostgreSQL reports as its private
/// `PgErrorInformation`, a struct whose one field is the `PGresult` pointer
/// of the failed statement (diesel 2.3, `pg/connection/result.rs`); the
/// other error information diesel makes is a `String`. This reads that
/// pointer and asks libpq for the `PG_DIAG_SQLSTATE` field. A struct of
/// exactly one pointer is told apart from a `String` (three words) by its
/// size, and the layout is verified once per process on a real error
/// ([`verify_with`], run when PostgreSQL is opened, and by the tests): if a
/// diesel release changes it, this answers `None` and the error is
/// classified by its kind alone, with a warning in the log.
pub(crate) fn sqlstate(info: &(dyn DatabaseErrorInformation + Send + Sync)) -> Option<&str> {
    if !LAYOUT_VERIFIED.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: see `read_sqlstate`; the layout was verified.
    unsafe { read_sqlstate(info) }
}

static LAYOUT_VERIFIED: AtomicBool = AtomicBool::new(false);

/// # Safety
///
/// `info` must be diesel's `PgErrorInformation` whenever it is one pointer
/// in size, which [`verify_with`] checks on a known error before
/// [`sqlstate`] relies on it.
unsafe fn read_sqlstate(info: &(dyn DatabaseErrorInformation + Send + Sync)) -> Option<&str> {
    if std::mem::size_of_val(info) != std::mem::size_of::<*const ()>()
        || std::mem::align_of_val(info) != std::mem::align_of::<*const ()>()
    {
        return None;
    }
    let data = std::ptr::from_ref(info).cast::<*const pq_sys::PGresult>();
    // SAFETY: `info` is one pointer, the `PGresult` diesel keeps alive (and
    // read-only) for as long as the error, which outlives the `&str`.
    unsafe {
        let result = *data;
        if result.is_null() {
            return None;
        }
        let field = pq_sys::PQresultErrorField(result, i32::from(pq_sys::PG_DIAG_SQLSTATE));
        if field.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(field).to_str().ok()
    }
}

/// Checks, on an error PostgreSQL just reported for `SELECT 1/0`, that
/// [`sqlstate`] reads its SQLSTATE (22012, division_by_zero), and turns the
/// SQLSTATE reading on if so. Returns whether it is on.
pub(crate) fn verify_with(division_by_zero: &DieselError) -> bool {
    if LAYOUT_VERIFIED.load(Ordering::Relaxed) {
        return true;
    }
    let verified = match division_by_zero {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            // SAFETY: an error PostgreSQL reported for a statement is a
            // `PgErrorInformation`; a one-pointer `String` cannot exist.
            unsafe { read_sqlstate(info.as_ref()) == Some("22012") }
        }
        _ => false,
    };
    if verified {
        LAYOUT_VERIFIED.store(true, Ordering::Relaxed);
    } else {
        tracing::warn!(
            error = %division_by_zero,
            "cannot read SQLSTATEs from this diesel build: deadlocks and lock timeouts \
             between replicas will not be retried"
        );
    }
    verified
}

/// Instrumentation installed on every PostgreSQL connection: notes when a
/// statement failed because the connection is gone. diesel's own check of a
/// pooled connection looks only at its transaction state, so without this a
/// connection the server closed (a restart, a network cut) would go back to
/// the pool and fail every call that gets it, forever. It also knows when
/// the connection was opened.
#[derive(Debug)]
pub(crate) struct ConnectionWatch {
    lost: bool,
    opened: std::time::Instant,
}

impl ConnectionWatch {
    /// For a connection opened now.
    pub(crate) fn new() -> Self {
        Self {
            lost: false,
            opened: std::time::Instant::now(),
        }
    }

    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    pub(crate) fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }
}

impl diesel::connection::Instrumentation for ConnectionWatch {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent;
        let error = match event {
            InstrumentationEvent::FinishQuery {
                error: Some(error), ..
            } => error,
            _ => return,
        };
        if classify(error) == Class::ConnectionLost {
            self.lost = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify() {
        assert_eq!(classify_sqlstate("40P01"), Class::Conflict);
        assert_eq!(classify_sqlstate("40001"), Class::Conflict);
        assert_eq!(classify_sqlstate("55P03"), Class::Conflict);
        assert_eq!(classify_sqlstate("08006"), Class::ConnectionLost);
        assert_eq!(classify_sqlstate("57P01"), Class::ConnectionLost);
        assert_eq!(classify_sqlstate("53300"), Class::Unavailable);
        assert_eq!(classify_sqlstate("57014"), Class::Unavailable);
        assert_eq!(classify_sqlstate("22012"), Class::Other);
        assert_eq!(classify_sqlstate("23503"), Class::Other);
    }

    #[test]
    fn string_information_has_no_sqlstate() {
        let info: Box<dyn DatabaseErrorInformation + Send + Sync> =
            Box::new(String::from("database is locked"));
        // SAFETY: a String is three words, never read as a PGresult.
        assert_eq!(unsafe { read_sqlstate(info.as_ref()) }, None);
        let error = DieselError::DatabaseError(DatabaseErrorKind::Unknown, info);
        assert_eq!(classify(&error), Class::Unavailable);
        let closed = DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new(String::from("server closed the connection unexpectedly")),
        );
        assert_eq!(classify(&closed), Class::ConnectionLost);
        assert_eq!(
            classify(&DieselError::BrokenTransactionManager),
            Class::ConnectionLost
        );
        assert_eq!(classify(&DieselError::NotFound), Class::Other);
    }

    /// Real PostgreSQL errors, classified by their SQLSTATE: a deadlock, a
    /// lock wait past `lock_timeout`, a statement past `statement_timeout`,
    /// a session the server ends. Needs `MINICRM_TEST_POSTGRES_URL`.
    #[test]
    fn postgres_errors_are_classified_by_sqlstate() {
        use diesel::{Connection, PgConnection, connection::SimpleConnection};
        let Ok(url) = std::env::var("MINICRM_TEST_POSTGRES_URL") else {
            eprintln!("skipped: set MINICRM_TEST_POSTGRES_URL to run this test");
            return;
        };
        let connect = || {
            let mut pg = PgConnection::establish(&url).expect("connect");
            pg.set_instrumentation(ConnectionWatch::new());
            pg
        };
        let (mut first, mut second) = (connect(), connect());
        let division = first.batch_execute("SELECT 1/0").unwrap_err();
        assert!(verify_with(&division), "{division}");
        assert_eq!(classify(&division), Class::Other);

        // Two transactions each hold one advisory lock and ask for the
        // other's; the one PostgreSQL picks fails and rolls back.
        let key = i64::from(rand::random::<u32>()) << 8;
        let lock = |pg: &mut PgConnection, key: i64| {
            let outcome = pg.batch_execute(&format!("SELECT pg_advisory_xact_lock({key})"));
            if outcome.is_err() {
                pg.batch_execute("ROLLBACK").unwrap();
            }
            outcome
        };
        first.batch_execute("BEGIN").unwrap();
        second.batch_execute("BEGIN").unwrap();
        lock(&mut first, key).unwrap();
        lock(&mut second, key + 1).unwrap();
        let waiter = std::thread::spawn(move || {
            let outcome = lock(&mut first, key + 1);
            (first, outcome)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let outcome = lock(&mut second, key);
        let (mut first, other) = waiter.join().unwrap();
        let deadlock = match (outcome, other) {
            (Err(error), Ok(())) | (Ok(()), Err(error)) => error,
            (outcome, other) => panic!("one of them loses: {outcome:?} {other:?}"),
        };
        if let DieselError::DatabaseError(_, info) = &deadlock {
            assert_eq!(sqlstate(info.as_ref()), Some("40P01"), "{deadlock}");
        }
        assert_eq!(classify(&deadlock), Class::Conflict, "{deadlock}");
        // The winner's transaction is still open.
        let _ = first.batch_execute("ROLLBACK");
        let _ = second.batch_execute("ROLLBACK");

        first
            .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({key})"))
            .unwrap();
        let waited = second
            .batch_execute(&format!(
                "SET lock_timeout = '50ms'; SELECT pg_advisory_xact_lock({key})"
            ))
            .unwrap_err();
        assert_eq!(classify(&waited), Class::Conflict, "55P03: {waited}");
        first.batch_execute("ROLLBACK").unwrap();
        let slow = second
            .batch_execute("SET statement_timeout = '50ms'; SELECT pg_sleep(5)")
            .unwrap_err();
        assert_eq!(classify(&slow), Class::Unavailable, "57014: {slow}");

        let watch = |pg: &mut PgConnection| {
            pg.instrumentation()
                .downcast_ref::<ConnectionWatch>()
                .unwrap()
                .lost()
        };
        assert!(!watch(&mut first));
        let ended = first
            .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
            .unwrap_err();
        assert_eq!(classify(&ended), Class::ConnectionLost, "{ended}");
        assert!(watch(&mut first), "the pool drops it");
    }
}
