//! Fuzz target: `Config::from_toml_str` on arbitrary text and environment.
//!
//! The input is split at its first NUL byte: before it is config.toml, after
//! it one `NAME=value` environment variable a line (the `SAVESTREAM_*`
//! overlay). The loader must never panic, and every error must print as one
//! line, as its docs promise. It touches nothing but the loader: no file is
//! read, no environment variable is set.

#![no_main]

use libfuzzer_sys::fuzz_target;
use savestream_shared::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = input.split_once('\0').unwrap_or((input, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    match Config::from_toml_str(toml, "fuzz", env) {
        Ok(loaded) => {
            // Printing a config (and its secrets, redacted) must work too.
            let _ = format!("{:?}", loaded.config);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
            assert!(!message.contains('\n'), "a multi-line error: {message:?}");
        }
    }
});
