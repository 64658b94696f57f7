//! The API's operations: one `#[OpenApi]` type per resource, grouped in the
//! docs by [`ApiTags`].
//!
//! Every operation except `/health` and `/ready` takes
//! [`crate::auth::Authorized`] as its first argument, so the token is checked
//! before anything else is read.
//!
//! [`allowed_methods`] says which methods a path answers, read from the same
//! operations, for the `Allow` header of a 405.

pub mod events;
pub mod health;
pub mod storages;
pub mod tasks;
pub mod workers;

use std::sync::LazyLock;

use poem::http::Method;
use poem_openapi::{OpenApi, Tags};
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

/// The methods a request path answers, as an `Allow` header value
/// (`GET, HEAD, POST`), or `None` for a path the server does not route.
///
/// Read from the operations themselves, plus the routes outside the OpenAPI
/// document ([`crate::startup::GET_ONLY_ROUTES`]), so a new operation is
/// listed without anyone remembering to. `HEAD` is listed wherever `GET` is:
/// poem answers it with the `GET` handler.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    static ROUTES: LazyLock<Vec<(String, String)>> = LazyLock::new(routed_methods);
    ROUTES
        .iter()
        .find(|(template, _)| path_matches(template, path))
        .map(|(_, allow)| allow.as_str())
}

/// Every routed path template (`/api/v1/tasks/{task_id}`) with its `Allow` value.
fn routed_methods() -> Vec<(String, String)> {
    let mut routes: Vec<(String, Vec<Method>)> = Vec::new();
    let operations = Apis::meta()
        .into_iter()
        .flat_map(|api| api.paths)
        .flat_map(|path| {
            let template = path.path;
            path.operations
                .into_iter()
                .map(move |operation| (template.clone(), operation.method))
        });
    let plain = crate::startup::GET_ONLY_ROUTES
        .iter()
        .map(|path| ((*path).to_owned(), Method::GET));
    for (template, method) in operations.chain(plain) {
        match routes.iter_mut().find(|(known, _)| *known == template) {
            Some((_, methods)) => methods.push(method),
            None => routes.push((template, vec![method])),
        }
    }
    routes
        .into_iter()
        .map(|(template, mut methods)| {
            if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
                methods.push(Method::HEAD);
            }
            methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            (template, allow)
        })
        .collect()
}

/// Whether `path` is an instance of `template`, where a `{name}` segment of
/// the template stands for any one non-empty segment.
fn path_matches(template: &str, path: &str) -> bool {
    let mut template_segments = template.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (template_segments.next(), path_segments.next()) {
            (None, None) => return true,
            (Some(expected), Some(segment)) => {
                let is_parameter = expected.starts_with('{') && expected.ends_with('}');
                if is_parameter && !segment.is_empty() || expected == segment {
                    continue;
                }
                return false;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_list_each_paths_operations_with_head_beside_get() {
        assert_eq!(allowed_methods("/api/v1/tasks"), Some("GET, HEAD, POST"));
        assert_eq!(
            allowed_methods("/api/v1/tasks/d4mq2nk0h9pc73b0qpag"),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(
            allowed_methods("/api/v1/tasks/d4mq2nk0h9pc73b0qpag/events"),
            Some("GET, HEAD")
        );
        assert_eq!(allowed_methods("/health"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/metrics"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/api/v1/tasks/"), None);
        assert_eq!(allowed_methods("/api/v1/nope"), None);
    }

    #[test]
    fn every_documented_path_has_allowed_methods() {
        let spec: serde_json::Value = serde_json::from_str(&crate::openapi_json()).unwrap();
        for (template, item) in spec["paths"].as_object().unwrap() {
            let path = template.replace("{task_id}", "d4mq2nk0h9pc73b0qpag");
            let allow = allowed_methods(&path).unwrap_or_else(|| panic!("{path} has no allowed methods"));
            for method in item.as_object().unwrap().keys() {
                assert!(
                    allow
                        .split(", ")
                        .any(|listed| listed.eq_ignore_ascii_case(method)),
                    "{template}: {method} is missing from {allow:?}"
                );
            }
        }
    }
}
