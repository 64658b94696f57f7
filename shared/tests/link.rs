//! Property tests for `savestream_shared::link`: parsing never panics, and every valid
//! link survives a round trip through its canonical text.

use proptest::prelude::*;
use savestream_shared::link::{ChannelId, ChatRef, MessageId, TelegramLink, Username};

/// Pieces that real and almost-real links are made of, so generated strings reach deep
/// into the parser instead of failing at the first character.
const PIECES: &[&str] = &[
    "https://",
    "http://",
    "ftp://",
    "t.me",
    "T.ME",
    "telegram.me",
    "www.",
    "example.com",
    "/",
    "//",
    "c",
    "s",
    "+",
    "joinchat",
    "share",
    "durov",
    "some_group",
    "_",
    "?",
    "&",
    "=",
    "#",
    ":",
    ":443",
    "@",
    "single",
    "comment",
    "thread",
    "0",
    "1",
    "42",
    "-1",
    "2147483648",
    "9223372036854775808",
    " ",
    "\t",
    "%20",
    "\0",
    "é",
    "\u{202e}",
];

fn message_id() -> impl Strategy<Value = MessageId> {
    (1..=i32::MAX).prop_map(|n| MessageId::new(n).expect("range starts at 1"))
}

fn chat() -> impl Strategy<Value = ChatRef> {
    let username = "[A-Za-z][A-Za-z0-9_]{3,30}[A-Za-z0-9]"
        .prop_filter_map("reserved word", |s| s.parse::<Username>().ok());
    let channel = (1..=i64::MAX).prop_map(|n| ChannelId::new(n).expect("range starts at 1"));
    prop_oneof![
        username.prop_map(ChatRef::Username),
        channel.prop_map(ChatRef::Channel),
    ]
}

fn link() -> impl Strategy<Value = TelegramLink> {
    (
        chat(),
        message_id(),
        proptest::option::of(message_id()),
        any::<bool>(),
        proptest::option::of(message_id()),
        proptest::option::of(message_id()),
    )
        .prop_map(
            |(chat, message_id, topic_id, single, comment, thread)| TelegramLink {
                chat,
                message_id,
                topic_id,
                single,
                comment,
                thread,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn link_parse_never_panics_on_arbitrary_text(input in ".*") {
        let _ = TelegramLink::parse(&input);
    }

    #[test]
    fn link_parse_never_panics_on_link_like_text(
        pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..16)
    ) {
        let _ = TelegramLink::parse(&pieces.concat());
    }

    #[test]
    fn link_round_trips_through_its_canonical_text(link in link()) {
        prop_assert_eq!(TelegramLink::parse(&link.to_string()), Ok(link));
    }

    #[test]
    fn link_parses_the_same_with_harmless_decorations(
        link in link(),
        scheme in proptest::sample::select(&["", "http://", "https://", "HTTPS://"][..]),
        host in proptest::sample::select(&["t.me", "www.t.me", "telegram.me", "www.telegram.me"][..]),
        suffix in proptest::sample::select(&["", "#top", "&embed=1", "&embed=1#x"][..]),
    ) {
        // Rebuild the canonical text with another scheme and host, then add a fragment or
        // an unknown parameter; none of that may change the parsed link.
        let canonical = link.to_string();
        let rest = canonical.trim_start_matches("https://t.me");
        let separator = if rest.contains('?') || !suffix.starts_with('&') { "" } else { "?" };
        let decorated = format!("  {scheme}{host}{rest}{separator}{suffix} ");
        prop_assert_eq!(TelegramLink::parse(&decorated), Ok(link));
    }
}
