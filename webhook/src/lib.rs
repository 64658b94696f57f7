//! # savestream-webhook
//!
//! The webhook dispatcher: it turns the terminal events of the `events`
//! stream (`completed`, `failed`, `canceled`) into signed `POST`s to
//! `[api] webhook_url`, durably, at least once, with retries spread over
//! `[webhook] span_hours`. It runs inside worker processes; the worker
//! binary starts it (`--role webhooks` runs it alone).
//!
//! ## Layout
//! - [`dispatcher`]: [`Dispatcher`], its `run` loop and the step functions
//!   the loop (and the tests) drive: ingest events, claim due deliveries,
//!   try one, record the result.
//! - [`options`]: [`DispatcherOptions`] (defaults from config) and the
//!   [`Backoff`] schedule.
//! - [`send`]: one HTTP try and what it answered; `Retry-After` parsing.
//! - [`signature`]: Standard Webhooks signing (`webhook-signature: v1,...`).
//! - [`body`]: the JSON body, as `GET /api/v1/tasks/{id}` shows a task.
//! - [`error`]: what building or running a dispatcher fails with, [`WebhookError`].
//!
//! ## Where the state lives
//! Everything a delivery needs to survive a crash is in Redis, written by
//! `savestream_shared::store::webhooks`: the `webhooks` consumer group on
//! `events`, a hash per delivery and the `webhooks:due` sorted set. A
//! dispatcher holds nothing but in-flight tries, so any number of them can
//! run, and one that dies loses nothing.
//!
//! ## Invariants
//! - The API token and the webhook secret are never logged, and neither
//!   is the URL (it may carry credentials): logs name its host only.
//! - No task sleeps holding a concurrency slot: a retry waits in the due set.

pub mod body;
pub mod dispatcher;
pub mod error;
pub mod options;
pub mod send;
pub mod signature;

pub use dispatcher::Dispatcher;
pub use error::WebhookError;
pub use options::{Backoff, DispatcherOptions};
pub use signature::Signer;
