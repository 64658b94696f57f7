//! Standard output. Every line a command prints goes through [`line`], so a
//! reader that went away (`savestream ls | head -1`) ends the command
//! quietly, as a program killed by SIGPIPE ends, instead of a panic.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

use anyhow::anyhow;

/// Standard output's reader is gone (the pipe was closed). `main` exits
/// with [`crate::exit::READER_GONE`] and says nothing.
#[derive(Debug)]
pub struct ReaderGone;

impl Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of standard output is gone")
    }
}

impl std::error::Error for ReaderGone {}

/// Prints `text` and a newline on standard output, at once (a script
/// reading the ids of `add` sees each as soon as it is created).
pub fn line(text: impl Display) -> anyhow::Result<()> {
    write_line(&mut std::io::stdout().lock(), text)
}

fn write_line(out: &mut impl Write, text: impl Display) -> anyhow::Result<()> {
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(error) => Err(anyhow!("cannot write to standard output: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose every write fails with `kind`.
    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_a_reader_gone_and_other_failures_are_errors() {
        let mut written = Vec::new();
        write_line(&mut written, "abc").unwrap();
        assert_eq!(written, b"abc\n");
        let gone = write_line(&mut Failing(ErrorKind::BrokenPipe), "abc").unwrap_err();
        assert!(gone.is::<ReaderGone>(), "{gone}");
        let full = write_line(&mut Failing(ErrorKind::StorageFull), "abc").unwrap_err();
        assert!(!full.is::<ReaderGone>(), "{full}");
        assert!(
            full.to_string().starts_with("cannot write to standard output"),
            "{full}"
        );
    }
}
