//! [`TaskEvent`], the unit of the event log, and its wire form on the
//! `events` stream.
//!
//! This module is one of the two serialization boundaries of the project (the
//! other is the HTTP API). An entry on the stream is a flat list of fields:
//! `v` (the format version), `type`, `task`, `at` (ms since the epoch), then
//! the fields of its type. The function library (`store/library.lua`) writes
//! them; [`TaskEvent::from_fields`] reads them. Changing a field name is a
//! format change: bump [`EVENT_FORMAT_VERSION`] and keep reading the old one.
//! A field added later is optional and absent when empty (`resolved`'s
//! `validator`): entries written before it still decode, and readers that
//! predate it pass over it.
//!
//! Format 2 (2026-11-28) changed one event: `created` holds the request's
//! source, link, user, storage and dir as one field, `request`
//! ([`crate::request`]), as the task hash does, where format 1 had five
//! (`source`, `link`, `user`, `storage`, `dir`). Every other event is the
//! same in both, and entries of format 1 still decode.

use std::collections::HashMap;

use crate::request::{request_field, TaskRequest};
use crate::task::{Millis, SourceKind, TaskId};

/// The `v` field of every event entry written now.
pub const EVENT_FORMAT_VERSION: &str = "2";
/// The format before `created` took one `request` field; still read.
const FIVE_FIELD_CREATED_VERSION: &str = "1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    pub task_id: TaskId,
    pub at: Millis,
    pub kind: EventKind,
}

/// Every event a task can have. The set is closed on purpose: a new kind of
/// event is a new rule in the function library and in [`crate::task::Task::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created {
        source: SourceKind,
        link: String,
        user_id: i64,
        storage: String,
        dir: String,
        title: String,
    },
    /// The source named the file: its name, size when known, and where in the storage it goes.
    Resolved {
        attempt: u32,
        file_name: String,
        size: Option<u64>,
        path: String,
        title: String,
        /// What identifies this version of the file on its server (a direct
        /// link's strong ETag, else its Last-Modified), sent as `If-Range`
        /// when a later attempt resumes it. The field `validator` is absent
        /// when there is none (Telegram files, servers that give none, and
        /// every event written before it existed).
        validator: Option<String>,
    },
    /// A worker took the task; `attempt` is the lease fence from now on.
    Started {
        attempt: u32,
        worker: String,
    },
    /// The attempt ended without the file; the task is queued again, due at `due_at`.
    Retrying {
        attempt: u32,
        error: String,
        retries: u32,
        due_at: Millis,
    },
    Completed {
        attempt: u32,
        size: Option<u64>,
        path: String,
    },
    Failed {
        attempt: u32,
        error: String,
    },
    Canceled,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created { .. } => "created",
            EventKind::Resolved { .. } => "resolved",
            EventKind::Started { .. } => "started",
            EventKind::Retrying { .. } => "retrying",
            EventKind::Completed { .. } => "completed",
            EventKind::Failed { .. } => "failed",
            EventKind::Canceled => "canceled",
        }
    }
}

/// An entry on the `events` stream that is not a valid event of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event entry cannot be decoded: {0}")]
pub struct DecodeError(pub String);

impl TaskEvent {
    /// The entry's fields, in the order the function library writes them.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("v", EVENT_FORMAT_VERSION.to_owned()),
            ("type", self.kind.name().to_owned()),
            ("task", self.task_id.to_string()),
            ("at", self.at.to_string()),
        ];
        let size_text = |size: &Option<u64>| size.map(|size| size.to_string()).unwrap_or_default();
        match &self.kind {
            EventKind::Created {
                source,
                link,
                user_id,
                storage,
                dir,
                title,
            } => fields.extend([
                ("request", request_field(*source, link, *user_id, storage, dir)),
                ("title", title.clone()),
            ]),
            EventKind::Resolved {
                attempt,
                file_name,
                size,
                path,
                title,
                validator,
            } => {
                fields.extend([
                    ("attempt", attempt.to_string()),
                    ("file", file_name.clone()),
                    ("size", size_text(size)),
                    ("path", path.clone()),
                    ("title", title.clone()),
                ]);
                if let Some(validator) = validator {
                    fields.push(("validator", validator.clone()));
                }
            }
            EventKind::Started { attempt, worker } => {
                fields.extend([("attempt", attempt.to_string()), ("worker", worker.clone())])
            }
            EventKind::Retrying {
                attempt,
                error,
                retries,
                due_at,
            } => fields.extend([
                ("attempt", attempt.to_string()),
                ("error", error.clone()),
                ("retries", retries.to_string()),
                ("due", due_at.to_string()),
            ]),
            EventKind::Completed { attempt, size, path } => fields.extend([
                ("attempt", attempt.to_string()),
                ("size", size_text(size)),
                ("path", path.clone()),
            ]),
            EventKind::Failed { attempt, error } => {
                fields.extend([("attempt", attempt.to_string()), ("error", error.clone())])
            }
            EventKind::Canceled => {}
        }
        fields
    }

    /// Reads an entry of the `events` stream.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<TaskEvent, DecodeError> {
        let text = |name: &str| -> Result<String, DecodeError> {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| DecodeError(format!("missing field `{name}`")))
        };
        let number = |name: &str| -> Result<i64, DecodeError> {
            let value = text(name)?;
            value
                .parse()
                .map_err(|_| DecodeError(format!("field `{name}` is not a number: {value:?}")))
        };
        let attempt = || -> Result<u32, DecodeError> {
            u32::try_from(number("attempt")?)
                .map_err(|_| DecodeError("field `attempt` is out of range".into()))
        };
        let size = || -> Result<Option<u64>, DecodeError> {
            let value = text("size")?;
            if value.is_empty() {
                return Ok(None);
            }
            value
                .parse()
                .map(Some)
                .map_err(|_| DecodeError(format!("field `size` is not a size: {value:?}")))
        };
        let version = text("v")?;
        if version != EVENT_FORMAT_VERSION && version != FIVE_FIELD_CREATED_VERSION {
            return Err(DecodeError(format!("unknown event format version {version:?}")));
        }
        let task_id = TaskId::parse(&text("task")?).map_err(|error| DecodeError(error.to_string()))?;
        let at = number("at")?;
        let kind = match text("type")?.as_str() {
            "created" => {
                let request = if version == FIVE_FIELD_CREATED_VERSION {
                    TaskRequest {
                        source: SourceKind::parse(&text("source")?)
                            .ok_or_else(|| DecodeError("field `source` is not a source kind".into()))?,
                        link: text("link")?,
                        user_id: number("user")?,
                        storage: text("storage")?,
                        dir: text("dir")?,
                    }
                } else {
                    TaskRequest::parse(&text("request")?).map_err(DecodeError)?
                };
                EventKind::Created {
                    source: request.source,
                    link: request.link,
                    user_id: request.user_id,
                    storage: request.storage,
                    dir: request.dir,
                    title: text("title")?,
                }
            }
            "resolved" => EventKind::Resolved {
                attempt: attempt()?,
                file_name: text("file")?,
                size: size()?,
                path: text("path")?,
                title: text("title")?,
                // Optional: absent when the file has none.
                validator: fields.get("validator").filter(|value| !value.is_empty()).cloned(),
            },
            "started" => EventKind::Started {
                attempt: attempt()?,
                worker: text("worker")?,
            },
            "retrying" => EventKind::Retrying {
                attempt: attempt()?,
                error: text("error")?,
                retries: u32::try_from(number("retries")?)
                    .map_err(|_| DecodeError("field `retries` is out of range".into()))?,
                due_at: number("due")?,
            },
            "completed" => EventKind::Completed {
                attempt: attempt()?,
                size: size()?,
                path: text("path")?,
            },
            "failed" => EventKind::Failed {
                attempt: attempt()?,
                error: text("error")?,
            },
            "canceled" => EventKind::Canceled,
            other => return Err(DecodeError(format!("unknown event type {other:?}"))),
        };
        Ok(TaskEvent { task_id, at, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: EventKind) {
        let task_event = TaskEvent {
            task_id: TaskId::generate(),
            at: 1_700_000_000_123,
            kind,
        };
        let fields: HashMap<String, String> = task_event
            .to_fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        assert_eq!(TaskEvent::from_fields(&fields), Ok(task_event));
    }

    #[test]
    fn every_event_kind_round_trips_through_its_fields() {
        round_trip(EventKind::Created {
            source: SourceKind::Telegram,
            link: "https://t.me/channel/123".into(),
            user_id: 123456789,
            storage: "local1".into(),
            dir: "/downloads".into(),
            title: "[tgfiles](https://t.me/channel/123->local1:/downloads)".into(),
        });
        round_trip(EventKind::Resolved {
            attempt: 1,
            file_name: "file.pdf".into(),
            size: Some(42),
            path: "/downloads/file.pdf".into(),
            title: "[tgfiles](file.pdf->local1:/downloads/file.pdf)".into(),
            validator: None,
        });
        round_trip(EventKind::Resolved {
            attempt: 1,
            file_name: "file.pdf".into(),
            size: Some(42),
            path: "/downloads/file.pdf".into(),
            title: "[directlinks](file.pdf->local1:/downloads/file.pdf)".into(),
            validator: Some("\"5f2b-61a0\"".into()),
        });
        round_trip(EventKind::Resolved {
            attempt: 2,
            file_name: "stream.bin".into(),
            size: None,
            path: "/stream.bin".into(),
            title: "t".into(),
            validator: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        });
        round_trip(EventKind::Started {
            attempt: 3,
            worker: "host-1-abc".into(),
        });
        round_trip(EventKind::Retrying {
            attempt: 1,
            error: "timed out".into(),
            retries: 1,
            due_at: 5,
        });
        round_trip(EventKind::Completed {
            attempt: 1,
            size: Some(0),
            path: "/a".into(),
        });
        round_trip(EventKind::Failed {
            attempt: 0,
            error: "gone".into(),
        });
        round_trip(EventKind::Canceled);
    }

    #[test]
    fn a_resolved_entry_without_a_validator_has_no_such_field_and_older_entries_decode() {
        let resolved = |validator: Option<&str>| TaskEvent {
            task_id: TaskId::generate(),
            at: 1,
            kind: EventKind::Resolved {
                attempt: 1,
                file_name: "f.bin".into(),
                size: Some(3),
                path: "/f.bin".into(),
                title: "t".into(),
                validator: validator.map(str::to_owned),
            },
        };
        let names = |event: &TaskEvent| -> Vec<&'static str> {
            event.to_fields().into_iter().map(|(name, _)| name).collect()
        };
        assert!(!names(&resolved(None)).contains(&"validator"));
        assert_eq!(names(&resolved(Some("\"a\""))).last(), Some(&"validator"));
        // An entry written before the field existed (or with it empty).
        let mut fields: HashMap<String, String> = resolved(None)
            .to_fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        let decoded = TaskEvent::from_fields(&fields).unwrap();
        assert!(matches!(
            decoded.kind,
            EventKind::Resolved { validator: None, .. }
        ));
        fields.insert("validator".into(), String::new());
        let decoded = TaskEvent::from_fields(&fields).unwrap();
        assert!(matches!(
            decoded.kind,
            EventKind::Resolved { validator: None, .. }
        ));
    }

    #[test]
    fn a_created_event_of_format_1_with_five_request_fields_still_decodes() {
        // As the library wrote it before format 2.
        let task_id = TaskId::generate();
        let fields: HashMap<String, String> = [
            ("v", "1"),
            ("type", "created"),
            ("task", task_id.as_str()),
            ("at", "1700000000123"),
            ("source", "http"),
            ("link", "https://example.com/a.bin"),
            ("user", "123456789"),
            ("storage", "local1"),
            ("dir", "/downloads"),
            ("title", "a.bin"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        assert_eq!(
            TaskEvent::from_fields(&fields),
            Ok(TaskEvent {
                task_id,
                at: 1_700_000_000_123,
                kind: EventKind::Created {
                    source: SourceKind::Http,
                    link: "https://example.com/a.bin".into(),
                    user_id: 123456789,
                    storage: "local1".into(),
                    dir: "/downloads".into(),
                    title: "a.bin".into(),
                },
            })
        );
    }

    #[test]
    fn a_created_event_holds_its_request_as_the_task_hash_does() {
        let kind = EventKind::Created {
            source: SourceKind::Telegram,
            link: "https://t.me/channel/123".into(),
            user_id: 7,
            storage: "local1".into(),
            dir: "/d".into(),
            title: "t".into(),
        };
        let fields = TaskEvent {
            task_id: TaskId::generate(),
            at: 1,
            kind,
        }
        .to_fields();
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["v", "type", "task", "at", "request", "title"]);
        assert_eq!(
            fields[4].1,
            r#"["telegram","https://t.me/channel/123",7,"local1","/d"]"#
        );
    }

    #[test]
    fn an_entry_of_another_format_version_is_refused() {
        let mut fields: HashMap<String, String> = TaskEvent {
            task_id: TaskId::generate(),
            at: 1,
            kind: EventKind::Canceled,
        }
        .to_fields()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        fields.insert("v".into(), "3".into());
        let error = TaskEvent::from_fields(&fields).unwrap_err();
        assert!(error.0.contains("version"), "{error}");
    }
}
