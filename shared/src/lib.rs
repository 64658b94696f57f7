//! # savestream-shared
//!
//! The library every savestream process links: the task domain, config.toml,
//! Telegram link parsing and the Redis task store.
//!
//! ## Layout
//! - [`config`]: config.toml and its `SAVESTREAM_*` environment overlay, loaded once into types.
//! - [`link`]: Telegram message links parsed into [`link::TelegramLink`].
//! - [`dir_path`]: `dir_path` values parsed into [`dir_path::DirPath`], absolute and unable to escape the storage.
//! - [`task`]: `TaskId`, `TaskStatus` and `Task::apply`, the Rust mirror of the transition rules.
//! - [`event`]: `TaskEvent` and its wire form on the `events` stream.
//! - [`request`]: `TaskRequest`, a task's source, link, user, storage and dir, and their one-field form.
//! - [`keys`]: every Redis key name, under one hash tag.
//! - [`store`]: `Store`, the door to Redis; `store/library.lua` holds every transition.
//! - [`retry_after`]: `Retry-After` headers read as a delay.
//! - [`stream_id`]: stream entry ids, compared as Redis orders them.
//! - [`title`]: task titles in SaveAny-Bot's `[tgfiles](file->storage:/path)` form.
//! - [`telemetry`]: tracing set-up shared by both binaries (`--log-format human|json`).

pub mod config;
pub mod dir_path;
pub mod event;
pub mod keys;
pub mod link;
pub mod request;
pub mod retry_after;
pub mod shutdown;
pub mod store;
pub mod stream_id;
pub mod task;
pub mod telemetry;
pub mod title;
