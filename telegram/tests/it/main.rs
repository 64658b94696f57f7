//! Behaviour tests of the Telegram source against `FakeTelegram`: every link form, byte-exact
//! downloads, resumes, every injected fault, the reorder window and cancellation.
//!
//! One test binary (`it`), one module per concern; shared set-up is in `support`. Tests that
//! wait (flood waits, slow parts, backoff) run on tokio's paused clock, so they take no real
//! time.

mod download;
mod faults;
mod resolve;
mod support;
mod unreachable;
