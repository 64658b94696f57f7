//! # savestream-worker
//!
//! The worker process: it takes tasks from the Redis queue, downloads their
//! files from a [`source::Source`] and keeps them in a [`storage::Storage`].
//! Any number of worker processes run against one Redis, each running
//! `workers` tasks at once; leases, fenced transitions and the function
//! library in `savestream-shared` keep them from stepping on each other.
//!
//! ## Layout
//! - [`app`]: `Application::build_with_role` and `run_until_stopped(shutdown)`:
//!   start-up, the [`Role`] a process plays (tasks, webhooks or both) and
//!   the graceful shutdown order.
//! - [`consumer`]: the intake loop (`XREADGROUP ... BLOCK` for exactly the
//!   free slots) and `run_job`, the life of one work item.
//! - [`lease`]: the heartbeat (which also keeps this process in the registry
//!   of live workers), the reaper of expired leases, the retry promoter and
//!   the hourly housekeeping.
//! - [`metrics`]: the Prometheus counters, histograms and queue gauges, and
//!   the `/metrics` listener.
//! - [`login`](mod@login): the terminal prompt of `savestream-worker login`.
//! - [`rebuild`](mod@rebuild): `savestream-worker rebuild`, the projection
//!   recomputed from the event log, refused while workers are registered.
//! - [`cancel`]: the pub/sub subscriber that stops canceled tasks at once.
//! - [`pipeline`]: `process(lease) -> Outcome`, one attempt of one task:
//!   resolve, reserve, stream, finish, record; one file, or every file of an
//!   album.
//! - [`retry`]: the backoff before a retry, a pure function.
//! - [`running`]: the tasks this process runs right now.
//! - [`context`]: what all of the above share.
//! - [`source`]: the `Source` trait; [`source::http`] for direct links and
//!   [`source::ssrf`], the guard that keeps them off private networks;
//!   [`source::telegram`] for message links, over `savestream-telegram`.
//! - [`storage`]: the `Storage` trait, checked names and paths
//!   ([`storage::path`]), and the `local` storage.
//!
//! ## Invariants
//! - The pipeline sees only the `Source` and `Storage` traits; nothing in
//!   it knows HTTP, Telegram or the file system.
//! - Telegram credentials are used only by [`source::telegram`] (through
//!   `savestream-telegram`), one connection per process, and never logged.
//! - The worker writes only fenced transitions of the attempts it holds; a
//!   refused transition means "stop", never "try harder".
//! - Nothing is written outside a storage's base path, and memory does not
//!   grow with the size of a file.

pub mod app;
pub mod cancel;
pub mod consumer;
pub mod context;
pub mod lease;
pub mod login;
pub mod metrics;
pub mod pipeline;
pub mod rebuild;
pub mod retry;
pub mod running;
pub mod source;
pub mod storage;

pub use app::{Application, Role, RunError, StartupError};
