//! Fuzz target: `TelegramLink::parse` on arbitrary text.
//!
//! It checks what the parser promises, not just that it returns: it never
//! panics, its errors print, and every link it accepts prints (`Display`)
//! as the canonical form, which parses back to an equal link (and prints
//! the same again). It touches nothing but the parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use savestream_shared::link::TelegramLink;

fuzz_target!(|data: &[u8]| {
    // The API hands the parser JSON strings, which are always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match TelegramLink::parse(text) {
        Ok(link) => {
            let canonical = link.to_string();
            let reparsed = TelegramLink::parse(&canonical)
                .unwrap_or_else(|error| panic!("{canonical:?} (from {text:?}) does not parse back: {error}"));
            assert_eq!(reparsed, link, "{text:?} -> {canonical:?} changed on the way back");
            assert_eq!(reparsed.to_string(), canonical);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
        }
    }
});
