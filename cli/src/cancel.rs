//! `savestream cancel <id>`: cancels a queued or running task. A task that
//! already ended is refused by the API, and its words are printed.

use std::process::ExitCode;

use crate::api::Api;
use crate::out;

pub async fn run(api: &Api, task_id: &str) -> anyhow::Result<ExitCode> {
    match api.client().cancel_task().task_id(task_id).send().await {
        Ok(_) => {
            out::line(format_args!("canceled {task_id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(api.explain(error).await),
    }
}
