//! # savestream-api
//!
//! The HTTP task API: SaveAny-Bot's task contract (`/health`, `/api/v1/tasks`)
//! and savestream's additions, served by poem-openapi with its OpenAPI
//! document at `/openapi.json` and Swagger UI at `/docs`. The process is
//! stateless: it validates, authenticates and calls the task store; it never
//! talks to Telegram, so any number of replicas can run.
//!
//! ## Layout
//! - [`startup`]: `Application::build` connects and binds; `run_until_stopped` serves until shutdown.
//! - [`routes`]: the operations, one module per resource (`health`, `tasks`, `events`, `storages`, `workers`).
//! - [`create_batcher`]: concurrent creates share one `savestream_create_batch` call.
//! - [`new_task`]: every check on a create request, turning it into the store's `NewTask`.
//! - [`direct_link`]: direct http(s) links (`url`) checked into a `DirectLink`.
//! - [`wire`]: the JSON types, their docs and examples, converted from `shared`'s domain types.
//! - [`auth`]: the bearer token, checked in constant time by the `Authorized` extractor.
//! - [`error`]: `ApiError` and the one mapping of errors to statuses and JSON bodies.
//! - [`middleware`]: request logging, JSON for every error, panics, the 64 KiB body limit.
//! - [`metrics`]: Prometheus counters and scrape-time gauges, and `GET /metrics` (outside the OpenAPI document).
//! - [`live_events`]: tailing the event log for the Server-Sent Events stream.
//! - [`state`]: `AppState`, shared by every handler.
//! - [`registration`]: the process's heartbeat in the registry of live API processes, which `rebuild` checks.
//!
//! ## Invariants
//! - Nothing is written to Redis for a refused request: every check runs before the create is handed to the store.
//! - Every response that is not a success has a JSON body `{"error": "..."}`, but for the few
//!   that hyper sends itself, with no body, before a request reaches poem: a request line it
//!   cannot parse (a URI with bytes no URI has: 400) and a URI over 64 KiB (414).
//! - Only this crate derives poem-openapi types; `shared` knows nothing of HTTP.
//! - The bearer token is never logged, and headers are never logged.

pub mod auth;
pub mod create_batcher;
pub mod direct_link;
pub mod error;
pub mod live_events;
pub mod metrics;
pub mod middleware;
pub mod new_task;
pub mod registration;
pub mod routes;
pub mod startup;
pub mod state;
pub mod wire;

use poem_openapi::{ContactObject, LicenseObject, OpenApiService};

pub use startup::{Application, StartupError};

const DESCRIPTION: &str = "\
Saves Telegram media and direct links into storages: SaveAny-Bot's HTTP task API, served by savestream.

`/health`, `/ready`, `/metrics`, `/docs` and `/openapi.json` need no token; every other endpoint needs \
`Authorization: Bearer <token>` when the server has an `[api] token`. Every error answers with a JSON body `{\"error\": \"...\"}` that says what to change. \
Times are RFC 3339 in UTC.";

/// The API's OpenAPI service, which is both its router and its document.
/// It needs no config and no Redis, so `--print-openapi` can build it anywhere.
pub fn openapi_service() -> OpenApiService<routes::Apis, ()> {
    OpenApiService::new(routes::apis(), "savestream", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
        .license(LicenseObject::new("MIT"))
        .contact(ContactObject::new().name("savestream"))
}

/// The OpenAPI document as `/openapi.json` serves it and `openapi/openapi.json` commits it.
pub fn openapi_json() -> String {
    openapi_service().spec()
}
