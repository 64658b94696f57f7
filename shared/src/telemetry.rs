//! Logging for both binaries: tracing to stderr, human-readable by default
//! (in colour on a terminal unless `NO_COLOR` is set), JSON lines with
//! `--log-format json`. `RUST_LOG` filters as usual.
//!
//! Secrets never reach a log line because they are `config::Secret`s, whose
//! `Debug` and `Display` print `[redacted]`.

use tracing_subscriber::EnvFilter;

/// The `--log-format` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use `human` or `json`")),
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(colours_wanted()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Colours only on a terminal, and never with `NO_COLOR` set: escape codes
/// in a log file, a journal or `savestream up > up.log` are noise.
fn colours_wanted() -> bool {
    use std::io::IsTerminal;
    // no-color.org: only a NO_COLOR that is set and not empty turns colour off.
    std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty()) && std::io::stderr().is_terminal()
}
