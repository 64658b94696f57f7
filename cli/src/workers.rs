//! `savestream workers`: the live worker processes, where they run, their
//! slots and the tasks they hold, from `GET /api/v1/workers`.

use std::process::ExitCode;

use crate::api::Api;
use crate::{format, out};

pub async fn run(api: &Api) -> anyhow::Result<ExitCode> {
    let list = match api.client().list_workers().send().await {
        Ok(list) => list.into_inner(),
        Err(error) => return Err(api.explain(error).await),
    };
    if list.workers.is_empty() {
        out::line(
            "no live workers: start one with `savestream-worker --config config.toml` (or `savestream up`)",
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .workers
        .iter()
        .map(|worker| {
            let tasks = if worker.tasks.is_empty() {
                "-".to_owned()
            } else {
                worker.tasks.join(",")
            };
            vec![
                worker.name.clone(),
                worker.host.clone(),
                worker.pid.to_string(),
                worker.role.clone(),
                format!("{}/{}", worker.tasks.len(), worker.slots),
                worker.seen_at.clone(),
                tasks,
            ]
        })
        .collect();
    out::line(format::table(
        &["NAME", "HOST", "PID", "ROLE", "BUSY", "SEEN", "TASKS"],
        &rows,
    ))?;
    Ok(ExitCode::SUCCESS)
}
