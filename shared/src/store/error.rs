//! [`StoreError`]: what a store call can answer besides success, in
//! variants a caller acts on differently.

use crate::task::{TaskId, TaskStatus};

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// No task with this id (never created, or expired after retention).
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// A task with this id exists already.
    #[error("task {0} already exists")]
    AlreadyExists(TaskId),
    /// An idempotency key was repeated with a different request: `first` is
    /// the task the key's first request created (for another link, user,
    /// storage or directory). Nothing was created.
    #[error("the idempotency key was first used for another request, which created task {first}")]
    IdempotencyKeyReused { first: TaskId },
    /// The task ended (completed, failed or canceled) and cannot change.
    #[error("task {task_id} has already ended: it is {status}")]
    Ended { task_id: TaskId, status: TaskStatus },
    /// The caller's lease is gone: its attempt or work item is no longer the
    /// current one, because another worker took the task over.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// Redis did not answer, or answered with an error savestream did not
    /// expect; the operation may be retried.
    #[error("redis is unavailable: {}", .0.details())]
    Unavailable(#[from] fred::error::Error),
    /// Redis holds data this version cannot read.
    #[error("corrupt data in redis: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether Redis refused a command for the type of a key it names
    /// (WRONGTYPE): a fault of that one key, never of Redis as a whole.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, StoreError::Unavailable(error) if is_wrong_type(error))
    }

    /// Whether Redis may answer later: it is unreachable, timed out, or
    /// still loading its data. A refused password, a bad database number or
    /// a corrupt key will not mend by waiting.
    pub fn is_transient(&self) -> bool {
        let StoreError::Unavailable(error) = self else {
            return false;
        };
        matches!(
            error.kind(),
            fred::error::ErrorKind::IO | fred::error::ErrorKind::Timeout | fred::error::ErrorKind::Canceled
        ) || error.details().starts_with("LOADING")
    }

    /// Maps an error reply of the function library (`CODE details`) to its
    /// variant; any other error means Redis itself is in trouble.
    pub(crate) fn from_reply(task_id: &TaskId, error: fred::error::Error) -> StoreError {
        StoreError::from_library_error(task_id, error.details()).unwrap_or(StoreError::Unavailable(error))
    }

    /// Maps the text of a library error (`CODE details`), or `None` when it
    /// is not one of the library's codes.
    pub(crate) fn from_library_error(task_id: &TaskId, details: &str) -> Option<StoreError> {
        let details = details.to_owned();
        let (code, rest) = details.split_once(' ').unwrap_or((details.as_str(), ""));
        Some(match code {
            "NOTFOUND" => StoreError::NotFound(task_id.clone()),
            "EXISTS" => StoreError::AlreadyExists(task_id.clone()),
            "ENDED" => match TaskStatus::parse(rest.trim()) {
                Some(status) => StoreError::Ended {
                    task_id: task_id.clone(),
                    status,
                },
                None => StoreError::Corrupt(details),
            },
            "STALE" => StoreError::LeaseLost(rest.to_owned()),
            "REUSED" => match TaskId::parse(rest.trim()) {
                Ok(first) => StoreError::IdempotencyKeyReused { first },
                Err(_) => StoreError::Corrupt(details),
            },
            _ => return None,
        })
    }
}

/// Whether Redis refused a command for the type of the key it names.
pub(crate) fn is_wrong_type(error: &fred::error::Error) -> bool {
    error.details().starts_with("WRONGTYPE")
}
