//! # savestream-telegram
//!
//! The Telegram source: resolving message links to the files they name and downloading those
//! files as fast as Telegram allows, in parallel precise parts, through every fault Telegram
//! throws. The worker plugs it in behind its `Source` trait; this crate knows nothing of tasks,
//! Redis or storage.
//!
//! ## Layout
//! - [`api`]: the [`TelegramApi`] seam (resolve, refetch, get a part) and the plain data it
//!   speaks ([`MediaMessage`], [`Media`], [`FileLocation`]).
//! - [`grammers`]: [`GrammersApi`], the real client (grammers 0.11): connection, sign-in,
//!   links, `upload.getFile` in precise mode; [`grammers::settings`] holds the
//!   session-sharing rule.
//! - [`fake`]: [`fake::FakeTelegram`], a faithful in-process Telegram with fault injection.
//! - [`download`]: [`Downloader`], parallel parts in order with a bounded reorder window.
//! - [`parts`]: the request plan and the parts-in-flight rule, pure.
//! - [`naming`]: file names and album titles, pure.
//! - [`rpc`]: Telegram's RPC errors mapped to [`TelegramError`], pure.
//! - [`login`](mod@login): the interactive user login behind `savestream-worker login`.
//! - [`error`]: [`TelegramError`], every failure in words a user can act on.
//!
//! ## Invariants
//! - Only [`grammers`] (and [`rpc`], which reads grammers' error type) imports grammers; the
//!   public API above it speaks this crate's own types.
//! - Every part request obeys precise mode's rules ([`parts::is_valid_request`]); the fake
//!   refuses any that does not, so the tests prove it.
//! - Secrets (bot token, app hash, session, proxy password) are never logged or printed by
//!   `Debug`.

pub mod api;
pub mod download;
pub mod error;
pub mod fake;
pub mod grammers;
pub mod login;
pub mod naming;
pub mod parts;
pub mod rpc;

pub use api::{ChatKey, ChatKind, FileKind, FileLocation, Media, MediaMessage, MessageRef, TelegramApi};
pub use download::{ByteStream, DownloadOptions, Downloader};
pub use error::TelegramError;
pub use grammers::GrammersApi;
pub use login::{login, LoginError, LoginPrompt};
