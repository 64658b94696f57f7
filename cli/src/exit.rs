//! The exit codes, listed in `main.rs`'s documentation, and the one for a
//! command that ended in an error.

use crate::out::ReaderGone;

/// The API refused, could not be reached, or something else went wrong.
pub const FAILURE: u8 = 1;
/// Standard output's reader went away: 128 + SIGPIPE (13), what a shell
/// reports for a program that SIGPIPE killed. Not 0, since the command
/// stopped before it was done (`add` creates no more tasks once nobody
/// reads their ids), so `set -o pipefail` sees it as any other program cut
/// short by `| head`.
pub const READER_GONE: u8 = 141;

/// The exit code of a command that ended in `error`, and whether to print it.
pub fn for_error(error: &anyhow::Error) -> (u8, bool) {
    if caused_by::<ReaderGone>(error) {
        return (READER_GONE, false);
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
        assert_eq!(for_error(&anyhow::anyhow!("refused")), (FAILURE, true));
        let gone = Err::<(), _>(anyhow::Error::new(ReaderGone))
            .context("printing ids")
            .unwrap_err();
        assert_eq!(for_error(&gone), (READER_GONE, false));
    }
}
