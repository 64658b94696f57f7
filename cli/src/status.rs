//! `savestream status <id>`: a task's status, title, where it is saved,
//! its progress and its error, one field a line.

use std::process::ExitCode;

use crate::api::Api;
use crate::{format, out};

pub async fn run(api: &Api, task_id: &str) -> anyhow::Result<ExitCode> {
    match api.client().get_task().task_id(task_id).send().await {
        Ok(task) => {
            out::line(format::task(&task.into_inner()))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(api.explain(error).await),
    }
}
