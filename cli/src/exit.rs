//! The exit codes, listed in `main.rs`'s documentation, and the one for a
//! command that ended in an error.

use std::fmt::Display;

use crate::out::ReaderGone;

/// The API refused, could not be reached, or something else went wrong.
pub const FAILURE: u8 = 1;
/// A bad command line or input (a `--url` that is not one, a link that is
/// neither kind): what clap exits with for its own usage errors.
pub const USAGE: u8 = 2;
/// `watch` could not follow its task to the end (the API unreachable, the
/// task unknown): how the task ends is unknown, unlike with 1, which says it
/// failed or was canceled.
pub const NOT_FOLLOWED: u8 = 3;
/// `up`'s stop was not clean: the worker cut its drain short (its own exit
/// code 3: running tasks left to their leases), or a child exited with an
/// error or had to be killed.
pub const SHUTDOWN_NOT_CLEAN: u8 = 3;
/// Standard output's reader went away: 128 + SIGPIPE (13), what a shell
/// reports for a program that SIGPIPE killed. Not 0, since the command
/// stopped before it was done (`add` creates no more tasks once nobody
/// reads their ids), so `set -o pipefail` sees it as any other program cut
/// short by `| head`.
pub const READER_GONE: u8 = 141;

/// An error in what the user gave (arguments, environment, standard input),
/// found before anything was sent: exits [`USAGE`].
#[derive(Debug)]
pub struct Usage(String);

impl Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error saying `message`.
pub fn usage(message: impl Display) -> anyhow::Error {
    anyhow::Error::new(Usage(message.to_string()))
}

/// The exit code of a command that ended in `error`, and whether to print
/// it; `watching` for `watch`.
pub fn for_error(error: &anyhow::Error, watching: bool) -> (u8, bool) {
    if caused_by::<ReaderGone>(error) {
        return (READER_GONE, false);
    }
    if caused_by::<Usage>(error) {
        return (USAGE, true);
    }
    if watching {
        return (NOT_FOLLOWED, true);
    }
    (FAILURE, true)
}

/// Whether `E` is `error` or anything in its chain of causes.
fn caused_by<E: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<E>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_error_has_its_code() {
        let refused = anyhow::anyhow!("refused");
        assert_eq!(for_error(&refused, false), (FAILURE, true));
        assert_eq!(
            for_error(&refused, true),
            (NOT_FOLLOWED, true),
            "`watch` that could not follow its task does not say it failed"
        );
        let gone = Err::<(), _>(anyhow::Error::new(ReaderGone))
            .context("printing ids")
            .unwrap_err();
        assert_eq!(for_error(&gone, false), (READER_GONE, false));
        assert_eq!(for_error(&gone, true), (READER_GONE, false));
        let bad_link = Err::<(), _>(usage("`x` is not a link"))
            .context("link 2 of 3")
            .unwrap_err();
        assert_eq!(for_error(&bad_link, false), (USAGE, true));
        assert_eq!(for_error(&bad_link, true), (USAGE, true));
    }
}
