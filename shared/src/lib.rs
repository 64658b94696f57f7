//! # savestream-shared
//!
//! The library every savestream process links: the task domain, config.toml,
//! Telegram link parsing and the Redis task store.
//!
//! ## Layout
//! - [`config`]: config.toml and its `SAVESTREAM_*` environment overlay, loaded once into types.
//! - [`link`]: Telegram message links parsed into [`link::TelegramLink`].

pub mod config;
pub mod link;
