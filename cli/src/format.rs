//! How the client shows things: byte counts, tasks, and aligned columns.
//! Only text for people; nothing here talks to the API.

use indicatif::HumanBytes;
use savestream_client::types::{Task, TaskStatus, WebhookDelivery};

/// `1.50 MiB`.
pub fn bytes(count: u64) -> String {
    HumanBytes(count).to_string()
}

/// Progress as one phrase: `1.00 MiB of 4.00 MiB (25%) at 512.00 KiB/s`.
pub fn progress(downloaded: u64, total: Option<u64>, bytes_per_second: u64) -> String {
    let mut text = bytes(downloaded);
    if let Some(total) = total.filter(|total| *total > 0) {
        let percent = downloaded.saturating_mul(100) / total;
        text.push_str(&format!(" of {} ({percent}%)", bytes(total)));
    }
    if bytes_per_second > 0 {
        text.push_str(&format!(" at {}/s", bytes(bytes_per_second)));
    }
    text
}

/// `savestream status`: one field a line, labels aligned.
pub fn task(task: &Task) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("task", task.task_id.clone()),
        ("status", task.status.to_string()),
        ("title", task.title.clone()),
        ("source", format!("{} {}", task.source, task.link)),
        ("storage", format!("{}:{}", task.storage_name, saved_path(task))),
        ("created", task.created_at.clone()),
        ("updated", task.updated_at.clone()),
        (
            "attempts",
            format!("{} ({} retries)", task.attempts, task.retries),
        ),
    ];
    if task.status == TaskStatus::Running || task.progress.downloaded_bytes > 0 {
        lines.push((
            "progress",
            progress(
                count(task.progress.downloaded_bytes),
                task.progress.total_bytes.map(count),
                count(task.progress.bytes_per_second),
            ),
        ));
    }
    if !task.error.is_empty() {
        lines.push(("error", task.error.clone()));
    }
    if let Some(webhook) = &task.webhook {
        lines.push(("webhook", webhook_delivery(webhook)));
    }
    let width = lines.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `delivered (1 try, last answer 200)`.
fn webhook_delivery(webhook: &WebhookDelivery) -> String {
    let tries = match webhook.attempts {
        1 => "1 try".to_owned(),
        count => format!("{count} tries"),
    };
    match webhook.last_status {
        Some(status) => format!("{} ({tries}, last answer {status})", webhook.state),
        None if webhook.attempts > 0 => format!("{} ({tries}, no answer)", webhook.state),
        None => webhook.state.to_string(),
    }
}

/// The file's path in its storage once known, else the directory it goes into.
pub fn saved_path(task: &Task) -> &str {
    if task.path.is_empty() {
        &task.dir_path
    } else {
        &task.path
    }
}

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(column) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(column, cell)| {
                // The last column is not padded, and an empty one leaves no
                // blanks behind: lines carry no trailing whitespace.
                if column == last {
                    (*cell).to_owned()
                } else {
                    format!("{cell:<width$}", width = widths[column])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    std::iter::once(line(header.to_vec()))
        .chain(
            rows.iter()
                .map(|row| line(row.iter().map(String::as_str).collect())),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// A count or size as the API sends it (`int64`, never negative) as the
/// unsigned number it is; a negative one, which no server sends, reads as 0.
pub fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use savestream_client::types::WebhookState;

    use super::*;

    #[test]
    fn progress_says_what_is_known() {
        assert_eq!(progress(0, None, 0), "0 B");
        assert_eq!(
            progress(1024 * 1024, Some(4 * 1024 * 1024), 512 * 1024),
            "1.00 MiB of 4.00 MiB (25%) at 512.00 KiB/s"
        );
    }

    #[test]
    fn a_webhook_delivery_says_its_state_tries_and_last_answer() {
        let delivery = |state, attempts, last_status| WebhookDelivery {
            webhook_id: "msg_x_1-0".to_owned(),
            state,
            attempts,
            last_status,
        };
        assert_eq!(
            webhook_delivery(&delivery(WebhookState::Delivered, 1, Some(200))),
            "delivered (1 try, last answer 200)"
        );
        assert_eq!(
            webhook_delivery(&delivery(WebhookState::GaveUp, 10, None)),
            "gave_up (10 tries, no answer)"
        );
        assert_eq!(
            webhook_delivery(&delivery(WebhookState::Pending, 0, None)),
            "pending"
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["longer".to_owned(), "v".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            table(&["ONE", "TWO", "THREE"], &rows),
            "ONE     TWO         THREE\na       long value  x\nlonger  v"
        );
    }
}
