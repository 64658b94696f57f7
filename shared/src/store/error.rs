//! [`StoreError`]: what a store call can answer besides success, in
//! variants a caller acts on differently; and [`RedisConnectError`], the
//! one message both processes give when they cannot connect to Redis at
//! start-up, with what to do about it.

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
    #[error("redis is unavailable: {}", readable_details(.0))]
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

/// What fred says about `error`, readable: a connection's I/O error is
/// carried as the `Debug` form of Rust's `io::Error` (`Os { code: 111,
/// kind: ConnectionRefused, message: "Connection refused" }`), of which
/// only the message is for people. Redis ends some replies with a period
/// (`NOAUTH Authentication required.`), which goes: the message goes on.
fn readable_details(error: &fred::error::Error) -> String {
    let details = error.details().trim_end_matches('.');
    if error.kind() == &fred::error::ErrorKind::IO {
        for field in ["message: \"", "error: \""] {
            if let Some(start) = details.find(field).map(|at| at + field.len()) {
                if let Some(length) = details[start..].find('"') {
                    return details[start..start + length].to_owned();
                }
            }
        }
        if let Some(kind) = details
            .strip_prefix("Kind(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return kind.to_owned();
        }
    }
    details.to_owned()
}

/// A Redis URL as messages show it: its password, if any, as `***`
/// (`redis://:***@cache:6379/0`), the rest as configured. Never the
/// password, and nothing percent-encoded in its place.
pub fn shown_redis_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "[redis] url (which is no URL)".to_owned();
    };
    if parsed.password().is_none() {
        return parsed.to_string();
    }
    let user = parsed.username().to_owned();
    // Both only fail for URLs that cannot have credentials, and this one has a password.
    let _ = parsed.set_password(None);
    let _ = parsed.set_username("");
    let bare = parsed.to_string();
    match bare.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:***@{rest}"),
        None => bare,
    }
}

/// A process could not connect to Redis at start-up ([`super::Store::connect`],
/// or a connection made right after it): one line that says where, why and
/// what to do, the same for every process. `at` names Redis without its
/// password: [`shown_redis_url`], as `RedisConfig::shown_url` gives it.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to redis at {at}: {error}; {}", connect_advice(.error))]
pub struct RedisConnectError {
    pub at: String,
    pub error: StoreError,
}

/// What to do about `error`, met connecting to Redis.
fn connect_advice(error: &StoreError) -> &'static str {
    let StoreError::Unavailable(error) = error else {
        return "check that [redis] url (SAVESTREAM_REDIS_URL) names the redis savestream uses, and that \
                no other program writes savestream's keys there";
    };
    let details = error.details();
    match error.kind() {
        fred::error::ErrorKind::Auth if details.starts_with("NOAUTH") => {
            "redis runs there but wants a password, and [redis] url gives none: put it in the url, as \
             redis://:PASSWORD@host:port (or redis://USER:PASSWORD@host:port), in config.toml or \
             SAVESTREAM_REDIS_URL"
        }
        fred::error::ErrorKind::Auth => {
            "redis runs there but refused the user name or password: correct them in [redis] url \
             (redis://USER:PASSWORD@host:port, in config.toml or SAVESTREAM_REDIS_URL) to what redis \
             expects (requirepass, or the ACL user)"
        }
        fred::error::ErrorKind::Url | fred::error::ErrorKind::Config => {
            "correct [redis] url (SAVESTREAM_REDIS_URL): it reads redis://[USER:PASSWORD@]host:port[/db]"
        }
        fred::error::ErrorKind::IO | fred::error::ErrorKind::Timeout | fred::error::ErrorKind::Canceled => {
            "start redis there, or point [redis] url (SAVESTREAM_REDIS_URL) at a running one; \
             [redis] startup_wait_seconds says how long a starting process waits for it"
        }
        _ if details.starts_with("LOADING") => {
            "redis is still loading its data: start again once it has, or raise [redis] \
             startup_wait_seconds to wait for it"
        }
        _ if details.starts_with("NOPERM") => {
            "the redis user of [redis] url may not run a command savestream needs: allow it FUNCTION, \
             FCALL and the stream, hash and sorted-set commands on savestream's keys ({<prefix>}:*)"
        }
        _ => {
            "check that it is redis 7 or later (savestream loads a function library) and that it \
             accepts commands from this user"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(kind: fred::error::ErrorKind, details: &str) -> StoreError {
        StoreError::Unavailable(fred::error::Error::new(kind, details.to_owned()))
    }

    #[test]
    fn a_shown_redis_url_has_three_stars_for_its_password_and_nothing_percent_encoded() {
        let cases = [
            (
                "redis://:hunter2@cache.internal:6380/0",
                "redis://:***@cache.internal:6380/0",
            ),
            (
                "redis://app:hunter2@127.0.0.1:6379",
                "redis://app:***@127.0.0.1:6379",
            ),
            ("rediss://:p%40ss@host:6390", "rediss://:***@host:6390"),
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            ("not a url", "[redis] url (which is no URL)"),
        ];
        for (url, shown) in cases {
            assert_eq!(shown_redis_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_refused_connection_reads_as_its_message_and_says_to_start_redis() {
        let refused = std::io::Error::from_raw_os_error(libc_econnrefused());
        let error = RedisConnectError {
            at: shown_redis_url("redis://:hunter2@127.0.0.1:6390"),
            error: StoreError::Unavailable(refused.into()),
        };

        let text = error.to_string();

        assert!(text.starts_with("cannot connect to redis at redis://:***@127.0.0.1:6390: redis is unavailable: Connection refused; start redis there"), "{text}");
        assert!(
            !text.contains("Os {") && !text.contains("kind:") && !text.contains("hunter2"),
            "{text}"
        );
    }

    /// `ECONNREFUSED` on the platforms savestream runs on (Linux, macOS).
    fn libc_econnrefused() -> i32 {
        if cfg!(target_os = "macos") {
            61
        } else {
            111
        }
    }

    #[test]
    fn a_refused_password_says_redis_runs_and_the_password_is_wrong_not_to_start_redis() {
        for (details, says) in [
            (
                "WRONGPASS invalid username-password pair or user is disabled.",
                "refused the user name or password",
            ),
            (
                "NOAUTH Authentication required.",
                "wants a password, and [redis] url gives none",
            ),
        ] {
            let error = RedisConnectError {
                at: "redis://127.0.0.1:6390".to_owned(),
                error: unavailable(fred::error::ErrorKind::Auth, details),
            };

            let text = error.to_string();

            assert!(text.contains(says), "{text}");
            assert!(!text.contains(".;"), "{text}");
            assert!(text.contains("redis runs there"), "{text}");
            assert!(!text.contains("start redis"), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn every_advice_names_what_to_change() {
        for error in [
            unavailable(fred::error::ErrorKind::Timeout, "timed out"),
            unavailable(
                fred::error::ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            unavailable(fred::error::ErrorKind::Unknown, "ERR unknown command 'FUNCTION'"),
            unavailable(fred::error::ErrorKind::Url, "invalid url"),
            StoreError::Corrupt("x".to_owned()),
        ] {
            let text = RedisConnectError {
                at: "redis://h:1".to_owned(),
                error,
            }
            .to_string();
            assert!(text.contains("; "), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
