//! The API's operations: one `#[OpenApi]` type per resource, grouped in the
//! docs by [`ApiTags`].
//!
//! Every operation except `/health` and `/ready` takes
//! [`crate::auth::Authorized`] as its first argument, so the token is checked
//! before anything else is read.

pub mod events;
pub mod health;
pub mod storages;
pub mod tasks;
pub mod workers;

use poem_openapi::Tags;
use savestream_shared::task::TaskId;

use crate::error::ApiError;

#[derive(Tags)]
pub enum ApiTags {
    /// Liveness and readiness probes; they need no token.
    Health,
    /// Download tasks: create, inspect, list, cancel, and follow their events.
    Tasks,
    /// The storages a user may save into.
    Storages,
    /// The live worker processes and the tasks they hold.
    Workers,
}

/// Every operation of the API, in the order the docs show them.
pub type Apis = (
    health::HealthApi,
    tasks::TasksApi,
    events::EventsApi,
    storages::StoragesApi,
    workers::WorkersApi,
);

pub fn apis() -> Apis {
    (
        health::HealthApi,
        tasks::TasksApi,
        events::EventsApi,
        storages::StoragesApi,
        workers::WorkersApi,
    )
}

/// A `{task_id}` path segment. An id that is not even well formed names no
/// task, so it is answered like an unknown one: 404.
pub fn parse_task_id(text: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(text).map_err(|error| ApiError::NotFound(format!("task not found: {error}")))
}

/// Records the task a request is about on its tracing span.
pub fn record_task_id(task_id: &TaskId) {
    tracing::Span::current().record("task_id", task_id.as_str());
}
