//! `savestream ls`: the queued and running tasks, oldest first, as the API
//! lists them (ended tasks are not listed; `status` shows one by id).

use std::process::ExitCode;

use savestream_client::types::TaskSummary;

use crate::api::Api;
use crate::format;

pub async fn run(api: &Api) -> anyhow::Result<ExitCode> {
    let list = match api.client().list_tasks().send().await {
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
        println!("no queued or running tasks");
    } else {
        println!("{}", format::table(&["ID", "STATUS", "TITLE"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn row(status: &str, task: &TaskSummary) -> Vec<String> {
    vec![task.id.clone(), status.to_owned(), task.title.clone()]
}
