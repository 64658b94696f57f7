//! `savestream ls [--limit N]`: the queued and running tasks, oldest first,
//! as the API lists them (ended tasks are not listed; `status` shows one by
//! id). When a list holds fewer tasks than there are, a line on standard
//! error says so and how to see more.

use std::process::ExitCode;

use savestream_client::types::TaskSummary;

use crate::api::Api;
use crate::{format, out};

/// The API's own default, and its largest `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub async fn run(api: &Api, limit: u32) -> anyhow::Result<ExitCode> {
    let list = match api.client().list_tasks().limit(limit).send().await {
        Ok(list) => list.into_inner(),
        Err(error) => return Err(api.explain(error).await),
    };
    let rows: Vec<Vec<String>> = list
        .running
        .iter()
        .map(|task| row("running", task))
        .chain(list.queued.iter().map(|task| row("queued", task)))
        .collect();
    if rows.is_empty() {
        out::line("no queued or running tasks")?;
    } else {
        out::line(format::table(&["ID", "STATUS", "TITLE"], &rows))?;
    }
    let cut = [
        ("running", list.running.len(), format::count(list.running_total)),
        ("queued", list.queued.len(), format::count(list.queued_total)),
    ];
    for (status, shown, total) in cut {
        if (shown as u64) < total {
            eprintln!("{}", more_than_shown(status, shown, total, limit));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The note for a list the limit cut short.
fn more_than_shown(status: &str, shown: usize, total: u64, limit: u32) -> String {
    let hint = if limit < MAX_LIMIT {
        format!(
            ": `savestream ls --limit {}` shows more",
            (limit.saturating_mul(10)).min(MAX_LIMIT)
        )
    } else {
        String::new()
    };
    format!("showing the oldest {shown} of {total} {status} tasks{hint}")
}

fn row(status: &str, task: &TaskSummary) -> Vec<String> {
    vec![task.id.clone(), status.to_owned(), task.title.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_cut_short_says_how_many_there_are_and_how_to_see_more() {
        assert_eq!(
            more_than_shown("queued", 100, 1234, 100),
            "showing the oldest 100 of 1234 queued tasks: `savestream ls --limit 1000` shows more"
        );
        assert_eq!(
            more_than_shown("queued", 1000, 5000, 1000),
            "showing the oldest 1000 of 5000 queued tasks"
        );
    }
}
