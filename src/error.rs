//! The one error type of the service and its mapping to gRPC status codes.

use tonic::{Code, Status};

use crate::db::DbClass;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending request field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A position (an event id) outside what the server holds.
    #[error("{0}")]
    OutOfRange(String),
    /// A pool checkout failed: the database cannot be reached right now.
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The database could not take the write now; the cause is for the log.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An internal fault; the cause is for the log.
    #[error("internal: {0}")]
    Internal(String),
    /// A concurrent transaction changed a row between a unit's check and its
    /// apply: the transaction runs again and the check sees the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Too many write calls wait already (`--max-queued-writes`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The call's deadline passed before its work started: nothing was done.
    #[error("the deadline passed before the call's work started")]
    DeadlineExceeded,
}

/// What the apply phase of a write unit may fail with: a fault of the
/// database or the service, never an answer about the request. Domain errors
/// (NOT_FOUND, INVALID_ARGUMENT, ...) come only from the read-only check
/// phase, so a unit that answers one has written nothing.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    /// See [`Error::Conflict`].
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Fault {
    /// A row the transaction holds or wrote could not be read back: rows are
    /// never deleted, so this is a fault of the service.
    pub fn vanished(what: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{what} vanished"))
    }
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Database(error) => Self::Database(error),
            Fault::Conflict(what) => Self::Conflict(what),
            Fault::Internal(what) => Self::Internal(what),
        }
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// Whether running the whole transaction again may succeed: the database
    /// aborted it because of a concurrent one (serialization failure,
    /// deadlock, lock wait timeout: by SQLSTATE, see `db::faults`), not
    /// because of its content.
    pub fn is_transient_conflict(&self, retry_unique_violations: bool) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::Database(error) => match crate::db::classify(error) {
                DbClass::Conflict => true,
                DbClass::UniqueViolation => retry_unique_violations,
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether this is a fault of the database or the service rather than an
    /// answer about the request.
    pub fn is_fault(&self) -> bool {
        match self {
            Self::InvalidArgument { .. }
            | Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::FailedPrecondition(_)
            | Self::OutOfRange(_)
            | Self::ResourceExhausted(_)
            | Self::DeadlineExceeded => false,
            Self::Pool(_)
            | Self::Database(_)
            | Self::Task(_)
            | Self::Unavailable(_)
            | Self::Internal(_)
            | Self::Conflict(_) => true,
        }
    }

    /// What a unit of work answers when the transaction it ran in could not
    /// commit because of `self`: its own outcome was rolled back.
    pub fn lost_transaction(&self) -> Self {
        if self.is_unavailable() || self.is_transient_conflict(true) {
            Self::Unavailable(self.to_string())
        } else {
            Self::Internal(self.to_string())
        }
    }

    /// Whether the connection this came from is gone (the database went
    /// away, or the network did): another connection may work.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Database(error) => crate::db::classify(error) == DbClass::ConnectionLost,
            _ => false,
        }
    }

    /// Whether the database could not be reached or could not take the work
    /// now: UNAVAILABLE, never INTERNAL.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Unavailable(_) | Self::Conflict(_) => true,
            Self::Database(error) => matches!(
                crate::db::classify(error),
                DbClass::ConnectionLost | DbClass::Unavailable | DbClass::Conflict
            ),
            _ => false,
        }
    }
}

/// Client-facing messages name the field and the reason; internal causes are
/// logged here and never sent.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let unavailable = error.is_unavailable();
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound(message) => Status::not_found(message),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::OutOfRange(message) => Status::out_of_range(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
            Error::Pool(_)
            | Error::Database(_)
            | Error::Task(_)
            | Error::Unavailable(_)
            | Error::Internal(_)
            | Error::Conflict(_) => {
                if unavailable {
                    tracing::warn!(error = %error, "database unavailable");
                    Status::new(Code::Unavailable, "the database is unavailable, try again")
                } else {
                    tracing::error!(error = %error, "internal error");
                    Status::internal("internal error")
                }
            }
        }
    }
}
