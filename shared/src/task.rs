//! The task domain: ids, statuses, and the [`Task`] that a fold over its
//! events produces.
//!
//! [`Task::apply`] is the Rust mirror of the transition rules in the Redis
//! function library (`store/library.lua`): the library decides live, this
//! fold rebuilds the projection from the log, and a test proves the two
//! agree. Nothing else in the code base sets a status.

use std::fmt;
use std::str::FromStr;

use crate::event::{EventKind, TaskEvent};

/// A task id: an xid, 20 lowercase base32 characters (`0-9a-v`).
///
/// The only ways to get one are [`TaskId::generate`] and [`TaskId::parse`],
/// so a `TaskId` in hand is always well formed and safe inside a Redis key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task id {0:?} is not valid: task ids are 20 characters of 0-9 and a-v, as returned by POST /api/v1/tasks")]
pub struct InvalidTaskId(pub String);

impl TaskId {
    pub fn generate() -> TaskId {
        TaskId(xid::new().to_string())
    }

    pub fn parse(text: &str) -> Result<TaskId, InvalidTaskId> {
        let valid = text.len() == 20
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b));
        if valid {
            Ok(TaskId(text.to_owned()))
        } else {
            Err(InvalidTaskId(text.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the task was created, by the time in its id (an xid: whole
    /// seconds), in ms since the epoch.
    pub fn created_ms(&self) -> Option<Millis> {
        let id: xid::Id = self.0.parse().ok()?;
        let since_epoch = id.time().duration_since(std::time::UNIX_EPOCH).ok()?;
        Millis::try_from(since_epoch.as_millis()).ok()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TaskId {
    type Err = InvalidTaskId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskId::parse(text)
    }
}

/// A task's status, exactly the five values of SaveAny-Bot's contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Completed, failed and canceled tasks never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A Telegram message link (`telegram_url`).
    Telegram,
    /// A direct http(s) link (`url`).
    Http,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Telegram => "telegram",
            SourceKind::Http => "http",
        }
    }

    pub fn parse(text: &str) -> Option<SourceKind> {
        match text {
            "telegram" => Some(SourceKind::Telegram),
            "http" => Some(SourceKind::Http),
            _ => None,
        }
    }

    /// The tag in a task's title, as SaveAny-Bot writes it.
    pub fn title_tag(self) -> &'static str {
        match self {
            SourceKind::Telegram => "tgfiles",
            SourceKind::Http => "directlinks",
        }
    }
}

/// Milliseconds since the Unix epoch, as Redis' `TIME` gives them to the
/// function library.
pub type Millis = i64;

/// A task as the projection holds it (without progress, which is not an
/// event and so not part of the fold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub status: TaskStatus,
    pub source: SourceKind,
    /// The `telegram_url` or `url` the task was created with.
    pub link: String,
    pub user_id: i64,
    pub storage: String,
    /// The directory inside the storage, absolute (`/` by default).
    pub dir: String,
    pub title: String,
    /// Known once the source resolved the file.
    pub file_name: Option<String>,
    pub size: Option<u64>,
    /// The file's path inside the storage, once resolved.
    pub path: Option<String>,
    /// What identified the resolved file's version on its server (a direct
    /// link's strong ETag or Last-Modified), for `If-Range` on a resume;
    /// `None` when the source gave none. The latest `resolved` event's.
    pub validator: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// How many times the task was started; the current attempt is the
    /// lease fence that every worker transition must present.
    pub attempt: u32,
    /// Retryable failures so far.
    pub retries: u32,
    /// The last error, empty when none.
    pub error: String,
    /// The consumer that holds the current attempt.
    pub worker: Option<String>,
}

/// A transition the rules refuse. The function library refuses the same
/// ones; here it means the log holds something the library never wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTransition {
    #[error("task {task_id}: `{event}` before `created`")]
    NotCreated { task_id: String, event: &'static str },
    #[error("task {task_id}: `created` twice")]
    AlreadyCreated { task_id: String },
    #[error("task {task_id}: `{event}` is not allowed when the task is {status}")]
    Illegal {
        task_id: String,
        event: &'static str,
        status: TaskStatus,
    },
    #[error("task {task_id}: `{event}` carries attempt {got}, but the current attempt is {current}")]
    StaleAttempt {
        task_id: String,
        event: &'static str,
        got: u32,
        current: u32,
    },
}

impl Task {
    /// Applies one event to the state before it (`None`: no task yet).
    pub fn apply(state: Option<Task>, task_event: &TaskEvent) -> Result<Task, InvalidTransition> {
        let task_id = task_event.task_id.as_str().to_owned();
        let event = task_event.kind.name();
        let at = task_event.at;
        let mut task = match (state, &task_event.kind) {
            (
                None,
                EventKind::Created {
                    source,
                    link,
                    user_id,
                    storage,
                    dir,
                    title,
                },
            ) => {
                return Ok(Task {
                    id: task_event.task_id.clone(),
                    status: TaskStatus::Queued,
                    source: *source,
                    link: link.clone(),
                    user_id: *user_id,
                    storage: storage.clone(),
                    dir: dir.clone(),
                    title: title.clone(),
                    file_name: None,
                    size: None,
                    path: None,
                    validator: None,
                    created_at: at,
                    updated_at: at,
                    started_at: None,
                    ended_at: None,
                    attempt: 0,
                    retries: 0,
                    error: String::new(),
                    worker: None,
                })
            }
            (None, _) => return Err(InvalidTransition::NotCreated { task_id, event }),
            (Some(_), EventKind::Created { .. }) => {
                return Err(InvalidTransition::AlreadyCreated { task_id })
            }
            (Some(task), _) => task,
        };
        let illegal = |status| InvalidTransition::Illegal {
            task_id: task_id.clone(),
            event,
            status,
        };
        // Worker transitions are fenced: they name the attempt they belong to.
        let fenced = |task: &Task, attempt: u32| -> Result<(), InvalidTransition> {
            if task.status != TaskStatus::Running {
                return Err(illegal(task.status));
            }
            if attempt != task.attempt {
                return Err(InvalidTransition::StaleAttempt {
                    task_id: task_id.clone(),
                    event,
                    got: attempt,
                    current: task.attempt,
                });
            }
            Ok(())
        };
        match &task_event.kind {
            EventKind::Created { .. } => unreachable!("handled above"),
            EventKind::Started { attempt, worker } => {
                // A running task may be started again: that is a takeover of
                // an expired lease, and it fences the previous holder out.
                if task.status.is_terminal() {
                    return Err(illegal(task.status));
                }
                if *attempt != task.attempt + 1 {
                    return Err(InvalidTransition::StaleAttempt {
                        task_id,
                        event,
                        got: *attempt,
                        current: task.attempt,
                    });
                }
                task.status = TaskStatus::Running;
                task.attempt = *attempt;
                task.worker = Some(worker.clone());
                task.started_at = Some(at);
                // The error of the retry or release before it is not this attempt's.
                task.error = String::new();
            }
            EventKind::Resolved {
                attempt,
                file_name,
                size,
                path,
                title,
                validator,
            } => {
                fenced(&task, *attempt)?;
                task.file_name = Some(file_name.clone());
                task.size = *size;
                task.path = Some(path.clone());
                task.title = title.clone();
                // Replaced, not kept: a file resolved without one has none.
                task.validator = validator.clone();
            }
            EventKind::Retrying {
                attempt,
                error,
                retries,
                due_at: _,
            } => {
                fenced(&task, *attempt)?;
                task.status = TaskStatus::Queued;
                task.error = error.clone();
                task.retries = *retries;
            }
            EventKind::Completed { attempt, size, path } => {
                fenced(&task, *attempt)?;
                task.status = TaskStatus::Completed;
                task.size = *size;
                task.path = Some(path.clone());
                task.error = String::new();
                task.ended_at = Some(at);
            }
            EventKind::Failed { attempt, error } => {
                fenced(&task, *attempt)?;
                task.status = TaskStatus::Failed;
                task.error = error.clone();
                task.ended_at = Some(at);
            }
            EventKind::Canceled => {
                if task.status.is_terminal() {
                    return Err(illegal(task.status));
                }
                task.status = TaskStatus::Canceled;
                task.ended_at = Some(at);
            }
        }
        task.updated_at = at;
        Ok(task)
    }

    /// Folds a task's events, oldest first, into the task they describe.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a TaskEvent>,
    ) -> Result<Option<Task>, InvalidTransition> {
        let mut state = None;
        for task_event in events {
            state = Some(Task::apply(state, task_event)?);
        }
        Ok(state)
    }
}

/// A timestamp as the API and webhooks show it: RFC 3339 in UTC with a `Z`
/// and whole seconds, like the contract's `2024-01-19T04:30:00Z`.
pub fn rfc3339(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, TaskEvent};

    fn created(task_id: &TaskId) -> TaskEvent {
        TaskEvent {
            task_id: task_id.clone(),
            at: 1,
            kind: EventKind::Created {
                source: SourceKind::Telegram,
                link: "https://t.me/channel/1".into(),
                user_id: 1,
                storage: "local1".into(),
                dir: "/".into(),
                title: "t".into(),
            },
        }
    }

    fn event(task_id: &TaskId, at: Millis, kind: EventKind) -> TaskEvent {
        TaskEvent {
            task_id: task_id.clone(),
            at,
            kind,
        }
    }

    /// Folds `kinds` after a `created` event and checks the resulting status,
    /// or the name of the refused event.
    fn check(kinds: Vec<EventKind>, expected: Result<TaskStatus, &str>) {
        let task_id = TaskId::generate();
        let mut events = vec![created(&task_id)];
        events.extend(
            kinds
                .into_iter()
                .enumerate()
                .map(|(index, kind)| event(&task_id, index as Millis + 2, kind)),
        );
        let folded = Task::fold(&events);
        match (folded, expected) {
            (Ok(Some(task)), Ok(status)) => assert_eq!(task.status, status, "{events:?}"),
            (Err(error), Err(refused)) => assert!(error.to_string().contains(refused), "{error}"),
            (other, expected) => panic!("{events:?}: got {other:?}, expected {expected:?}"),
        }
    }

    fn started(attempt: u32) -> EventKind {
        EventKind::Started {
            attempt,
            worker: "w".into(),
        }
    }

    fn completed(attempt: u32) -> EventKind {
        EventKind::Completed {
            attempt,
            size: None,
            path: "/f".into(),
        }
    }

    fn retrying(attempt: u32) -> EventKind {
        EventKind::Retrying {
            attempt,
            error: "e".into(),
            retries: 1,
            due_at: 0,
        }
    }

    #[test]
    fn legal_transitions() {
        check(vec![], Ok(TaskStatus::Queued));
        check(vec![started(1)], Ok(TaskStatus::Running));
        check(vec![started(1), completed(1)], Ok(TaskStatus::Completed));
        check(
            vec![
                started(1),
                EventKind::Failed {
                    attempt: 1,
                    error: "e".into(),
                },
            ],
            Ok(TaskStatus::Failed),
        );
        check(vec![started(1), retrying(1)], Ok(TaskStatus::Queued));
        check(
            vec![started(1), retrying(1), started(2), completed(2)],
            Ok(TaskStatus::Completed),
        );
        check(
            vec![started(1), started(2), completed(2)],
            Ok(TaskStatus::Completed),
        );
        check(vec![EventKind::Canceled], Ok(TaskStatus::Canceled));
        check(vec![started(1), EventKind::Canceled], Ok(TaskStatus::Canceled));
    }

    fn resolved(attempt: u32, validator: Option<&str>) -> EventKind {
        EventKind::Resolved {
            attempt,
            file_name: "f.bin".into(),
            size: Some(3),
            path: "/f.bin".into(),
            title: "t".into(),
            validator: validator.map(str::to_owned),
        }
    }

    #[test]
    fn the_validator_is_the_latest_resolved_events_and_outlives_a_retry() {
        let task_id = TaskId::generate();
        let fold = |kinds: Vec<EventKind>| {
            let mut events = vec![created(&task_id)];
            events.extend(kinds.into_iter().map(|kind| event(&task_id, 2, kind)));
            Task::fold(&events).unwrap().unwrap().validator
        };
        assert_eq!(fold(vec![started(1)]), None);
        assert_eq!(
            fold(vec![
                started(1),
                resolved(1, Some("\"a\"")),
                retrying(1),
                started(2)
            ]),
            Some("\"a\"".to_owned())
        );
        assert_eq!(
            fold(vec![started(1), resolved(1, Some("\"a\"")), resolved(1, None)]),
            None
        );
    }

    #[test]
    fn illegal_transitions() {
        check(
            vec![completed(0)],
            Err("`completed` is not allowed when the task is queued"),
        );
        check(
            vec![started(1), EventKind::Canceled, completed(1)],
            Err("when the task is canceled"),
        );
        check(
            vec![started(1), completed(1), started(2)],
            Err("`started` is not allowed when the task is completed"),
        );
        check(
            vec![started(1), completed(1), EventKind::Canceled],
            Err("when the task is completed"),
        );
        check(
            vec![started(1), started(2), completed(1)],
            Err("carries attempt 1, but the current attempt is 2"),
        );
        check(vec![started(2)], Err("carries attempt 2"));
    }

    #[test]
    fn a_retry_or_release_shows_its_error_until_the_next_attempt_starts() {
        let task_id = TaskId::generate();
        let mut events = vec![created(&task_id), event(&task_id, 2, started(1))];
        events.push(event(&task_id, 3, retrying(1)));
        let queued = Task::fold(&events).unwrap().unwrap();
        assert_eq!((queued.status, queued.error.as_str()), (TaskStatus::Queued, "e"));
        events.push(event(&task_id, 4, started(2)));
        let running = Task::fold(&events).unwrap().unwrap();
        assert_eq!(
            (running.status, running.error.as_str()),
            (TaskStatus::Running, "")
        );
    }

    #[test]
    fn an_event_before_created_or_a_second_created_is_refused() {
        let task_id = TaskId::generate();
        let error = Task::fold(&[event(&task_id, 1, started(1))]).unwrap_err();
        assert!(matches!(error, InvalidTransition::NotCreated { .. }));
        let error = Task::fold(&[created(&task_id), created(&task_id)]).unwrap_err();
        assert!(matches!(error, InvalidTransition::AlreadyCreated { .. }));
    }

    #[test]
    fn task_ids_are_xids() {
        let generated = TaskId::generate();
        assert_eq!(TaskId::parse(generated.as_str()), Ok(generated));
        for bad in [
            "",
            "c9h8t1234abcd",
            "C9H8T1234ABCD5678901",
            "c9h8t1234abcd567890w",
            "../../../../etc/passwd",
        ] {
            assert!(TaskId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_z() {
        assert_eq!(rfc3339(1_705_638_600_000), "2024-01-19T04:30:00Z");
    }
}
