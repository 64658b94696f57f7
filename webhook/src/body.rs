//! The JSON body of a webhook: `{"task_id","status","title","created_at","error"}`,
//! the same fields, in the same order and form, as `GET /api/v1/tasks/{id}`
//! shows them (SaveAny-Bot's contract, "Webhook Callback").

use savestream_shared::task::{rfc3339, Millis, Task};
use serde::Serialize;

/// The fields are declared in the contract's order; serde keeps it.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    task_id: &'a str,
    status: &'a str,
    title: &'a str,
    created_at: String,
    /// Empty when the task has no error, never absent.
    error: &'a str,
}

/// The body for `task`, as compact JSON.
pub fn body_json(task: &Task) -> String {
    body_of(
        task.id.as_str(),
        task.status.as_str(),
        &task.title,
        task.created_at,
        &task.error,
    )
}

/// The body from its fields (`created_at` in ms since the epoch), for a
/// task whose projection is gone and whose fields come from the log.
pub fn body_of(task_id: &str, status: &str, title: &str, created_at: Millis, error: &str) -> String {
    let body = WebhookBody {
        task_id,
        status,
        title,
        created_at: rfc3339(created_at),
        error,
    };
    // Serializing a struct of strings into a String cannot fail.
    serde_json::to_string(&body).expect("a struct of strings serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use savestream_shared::task::{SourceKind, TaskId, TaskStatus};

    #[test]
    fn the_body_has_the_contract_fields_in_order() {
        let task = Task {
            id: TaskId::parse("c9h8t1234abcdefghijk").unwrap(),
            status: TaskStatus::Completed,
            source: SourceKind::Telegram,
            link: "https://t.me/channel/123".into(),
            user_id: 1,
            storage: "local1".into(),
            dir: "/downloads".into(),
            title: "[tgfiles](file.pdf->local1:/downloads/file.pdf)".into(),
            file_name: None,
            size: None,
            path: None,
            validator: None,
            created_at: 1_705_638_600_000,
            updated_at: 0,
            started_at: None,
            ended_at: None,
            attempt: 1,
            retries: 0,
            error: String::new(),
            worker: None,
        };

        assert_eq!(
            body_json(&task),
            r#"{"task_id":"c9h8t1234abcdefghijk","status":"completed","title":"[tgfiles](file.pdf->local1:/downloads/file.pdf)","created_at":"2024-01-19T04:30:00Z","error":""}"#
        );
    }
}
