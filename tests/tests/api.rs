//! Black-box tests of `savestream-api`: the real binary against a private
//! redis-server, through the progenitor client generated from
//! `openapi/openapi.json` for the happy paths (proving generated SDKs work)
//! and raw HTTP for everything a generated client would never send.
//!
//! No worker runs here, so created tasks stay queued.
//!
//! - `batch`: many tasks in one request.
//! - `contract`: SaveAny-Bot's documented requests and answers, exactly.
//! - `client`: the generated client end to end.
//! - `errors`: every refusal, its status, its JSON body, and that it wrote nothing.
//! - `events`: the event history as JSON and as a live SSE stream.
//! - `operations`: docs, spec, readiness across a Redis outage, shutdown, logs.

mod api {
    mod batch;
    mod client;
    mod contract;
    mod errors;
    mod events;
    pub mod helpers;
    mod operations;
}
