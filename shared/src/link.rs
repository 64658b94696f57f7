//! Parsing user-supplied Telegram message links into a typed [`TelegramLink`].
//!
//! This module owns one job: turning the text a user pastes (`https://t.me/durov/42`,
//! `t.me/c/1234567/8/42?single`, ...) into a [`TelegramLink`] whose parts are already
//! validated, or into a [`LinkError`] that tells the user which part is wrong and what to
//! do about it. It is pure and knows nothing about Telegram's API: whether the chat or the
//! message exists is for the caller to find out.
//!
//! [`TelegramLink`]'s `Display` writes the canonical `https://t.me/...` form, which parses
//! back to an equal value.
//!
//! ## Decisions worth knowing
//! - Input longer than [`MAX_LINK_LEN`] bytes is rejected before any other work, so a
//!   hostile paste costs nothing; surrounding whitespace is trimmed after that check.
//! - A link may have no scheme, `http://` or `https://`; any other scheme is rejected.
//! - User info (`user@t.me`) and ports (`t.me:443`) are rejected: Telegram never puts them
//!   in a message link, so their presence means the text is not what it claims to be.
//! - Fragments (`#...`) are ignored: browsers and chat apps append them, and they carry
//!   nothing a message link needs.
//! - Nothing is percent-decoded. Telegram writes message links in plain ASCII, and a
//!   username or id that needs decoding is not a valid one anyway.
//! - Unknown query parameters are ignored; a known one given twice is rejected because we
//!   cannot tell which value the user meant.

use std::fmt;
use std::str::FromStr;

/// The longest input [`TelegramLink::parse`] looks at, in bytes.
pub const MAX_LINK_LEN: usize = 2048;

/// Hosts that serve Telegram message links, compared case-insensitively.
const TELEGRAM_HOSTS: [&str; 4] = ["t.me", "www.t.me", "telegram.me", "www.telegram.me"];

/// First path segments that name a Telegram feature rather than a chat. They are checked
/// before username validation so the user hears "not a message link" instead of
/// "invalid username", and [`Username`] refuses them so every [`TelegramLink`] prints as
/// a link that parses back.
const RESERVED_PATHS: [&str; 18] = [
    "addemoji",
    "addlist",
    "addstickers",
    "addtheme",
    "bg",
    "boost",
    "confirmphone",
    "contact",
    "giftcode",
    "invoice",
    "iv",
    "joinchat",
    "login",
    "msg",
    "proxy",
    "setlanguage",
    "share",
    "socks",
];

/// Why a piece of text is not a Telegram message link we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is empty: paste a https://t.me/... message link")]
    Empty,
    #[error("the link is {0} bytes long, more than the {max} allowed: paste only the message link", max = MAX_LINK_LEN)]
    TooLong(usize),
    #[error("the link contains the control character U+{:04X}: paste the link as plain text", u32::from(*.0))]
    ControlCharacter(char),
    #[error("`{0}://` links are not supported: use a https://t.me/... message link")]
    UnsupportedScheme(String),
    #[error("the link has no host: use a https://t.me/... message link")]
    MissingHost,
    #[error("`{0}` is not a Telegram host: use a https://t.me/... message link")]
    NotTelegramHost(String),
    #[error("the link has login details before the host: remove everything up to and including the `@`")]
    UserInfo,
    #[error("the link names a port (`:{0}`): remove it")]
    Port(String),
    #[error(
        "the link has nothing after the host: a message link looks like https://t.me/<channel>/<message>"
    )]
    MissingPath,
    #[error("`{0}` has an empty part (`//`): remove the extra slash")]
    EmptySegment(String),
    #[error("`{0}` is a web preview link: drop the /s/ to link the message itself")]
    WebPreview(String),
    #[error("`{0}` is a story link, not a message link: copy the link of a message instead")]
    Story(String),
    #[error(
        "`{0}` is an invite link, not a message link: join the chat, then copy the link of a message in it"
    )]
    Invite(String),
    #[error("`{0}` is not a message link: in Telegram, use Copy Link on the message you want")]
    NotMessageLink(String),
    #[error("`{0}` links to a chat, not a message: copy the link of a message in that chat")]
    NoMessageId(String),
    #[error("`{0}` has too many parts: a message link looks like https://t.me/<channel>/<message>")]
    TooManySegments(String),
    #[error("`{0}` is not a valid Telegram username: usernames are 5 to 32 letters, digits or underscores, start with a letter and do not end with an underscore")]
    InvalidUsername(String),
    #[error("`{value}` is not a valid {kind}: use a whole number from 1 to {}", .kind.max())]
    InvalidId { kind: IdKind, value: String },
    #[error("`single={0}` is not understood: write just `?single` to pick one item of an album")]
    InvalidSingle(String),
    #[error("`{0}` appears more than once in the query: keep only one")]
    RepeatedParameter(&'static str),
}

/// Which number in a link was wrong, for [`LinkError::InvalidId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Chat,
    Message,
    Topic,
    Comment,
    Thread,
}

impl IdKind {
    /// The largest value Telegram allows for this kind of id.
    pub fn max(self) -> i64 {
        match self {
            IdKind::Chat => i64::MAX,
            _ => i64::from(i32::MAX),
        }
    }

    fn invalid(self, value: &str) -> LinkError {
        LinkError::InvalidId {
            kind: self,
            value: value.to_owned(),
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Chat => "chat id",
            IdKind::Message => "message id",
            IdKind::Topic => "topic id",
            IdKind::Comment => "comment id",
            IdKind::Thread => "thread id",
        })
    }
}

/// A public Telegram username, case preserved as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Username {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Every check is ASCII-only, so byte length equals character count here.
        let valid = (5..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && !s.ends_with('_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !is_reserved(s);
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(LinkError::InvalidUsername(s.to_owned()))
        }
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a private channel or supergroup as it appears in `t.me/c/<id>/...` links
/// (without the `-100` prefix the Bot API adds). Always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(i64);

impl ChannelId {
    /// Returns `None` unless `id` is positive.
    pub fn new(id: i64) -> Option<Self> {
        (id > 0).then_some(Self(id))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message id within a chat; also used for topic, comment and thread ids, which are
/// message ids too. Always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(i32);

impl MessageId {
    /// Returns `None` unless `id` is positive.
    pub fn new(id: i32) -> Option<Self> {
        (id > 0).then_some(Self(id))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The chat a link points into.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChatRef {
    /// A public chat: `t.me/<username>/...`.
    Username(Username),
    /// A private channel or supergroup: `t.me/c/<id>/...`.
    Channel(ChannelId),
}

impl fmt::Display for ChatRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatRef::Username(name) => name.fmt(f),
            ChatRef::Channel(id) => write!(f, "c/{id}"),
        }
    }
}

/// A parsed Telegram message link. Any combination of field values is a valid link,
/// because each field's type already rules out invalid values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TelegramLink {
    pub chat: ChatRef,
    pub message_id: MessageId,
    /// The forum topic, from `t.me/<chat>/<topic>/<message>`.
    pub topic_id: Option<MessageId>,
    /// `?single`: the user wants this one item of an album, not the whole album.
    pub single: bool,
    /// `?comment=<id>`: a comment under a channel post.
    pub comment: Option<MessageId>,
    /// `?thread=<id>`: the thread (or topic) the message belongs to.
    pub thread: Option<MessageId>,
}

impl TelegramLink {
    /// Parses a user-supplied message link. Never panics; see the module docs for what is
    /// accepted.
    pub fn parse(input: &str) -> Result<Self, LinkError> {
        if input.len() > MAX_LINK_LEN {
            return Err(LinkError::TooLong(input.len()));
        }
        let input = input.trim();
        if input.is_empty() {
            return Err(LinkError::Empty);
        }
        if let Some(c) = input.chars().find(|c| c.is_control()) {
            return Err(LinkError::ControlCharacter(c));
        }

        let rest = strip_scheme(input)?;
        // The fragment goes first because a `?` inside it is not the start of a query.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (rest, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query),
            None => (rest, ""),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_host(authority)?;

        let mut link = parse_path(path)?;
        apply_query(&mut link, query)?;
        Ok(link)
    }
}

impl FromStr for TelegramLink {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TelegramLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://t.me/{}/", self.chat)?;
        if let Some(topic) = self.topic_id {
            write!(f, "{topic}/")?;
        }
        write!(f, "{}", self.message_id)?;
        let params = [
            self.single.then(|| "single".to_owned()),
            self.comment.map(|id| format!("comment={id}")),
            self.thread.map(|id| format!("thread={id}")),
        ];
        for (i, param) in params.iter().flatten().enumerate() {
            let separator = if i == 0 { '?' } else { '&' };
            write!(f, "{separator}{param}")?;
        }
        Ok(())
    }
}

fn is_reserved(segment: &str) -> bool {
    RESERVED_PATHS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(segment))
}

/// Removes an `http://` or `https://` prefix and rejects any other scheme.
fn strip_scheme(input: &str) -> Result<&str, LinkError> {
    let Some((scheme, rest)) = input.split_once("://") else {
        return Ok(input);
    };
    // A `://` after something that cannot be a scheme (say, inside a query value) does not
    // start a scheme, so the input is scheme-less.
    let scheme_shaped = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_shaped {
        return Ok(input);
    }
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
        Ok(rest)
    } else {
        Err(LinkError::UnsupportedScheme(scheme.to_owned()))
    }
}

fn check_host(authority: &str) -> Result<(), LinkError> {
    if authority.contains('@') {
        return Err(LinkError::UserInfo);
    }
    // Only an all-digit suffix is a port; anything else after a colon (as in `tg:resolve`)
    // means this is not a host we know, which the host check below reports.
    if let Some((_, port)) = authority.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LinkError::Port(port.to_owned()));
        }
    }
    if authority.is_empty() {
        return Err(LinkError::MissingHost);
    }
    if TELEGRAM_HOSTS
        .iter()
        .any(|host| host.eq_ignore_ascii_case(authority))
    {
        Ok(())
    } else {
        Err(LinkError::NotTelegramHost(authority.to_owned()))
    }
}

/// Parses everything between the host and the query; `path` has no leading slash.
fn parse_path(path: &str) -> Result<TelegramLink, LinkError> {
    // Errors quote the path with its leading slash, as the user sees it in the link.
    let shown = || format!("/{path}");
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err(LinkError::MissingPath);
    }
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.contains(&"") {
        return Err(LinkError::EmptySegment(shown()));
    }

    let is = |segment: &str, keyword: &str| segment.eq_ignore_ascii_case(keyword);
    let (chat, ids) = match segments.as_slice() {
        [first, ..] if first.starts_with('+') || is(first, "joinchat") => {
            return Err(LinkError::Invite(shown()))
        }
        [first, ..] if is(first, "s") => return Err(LinkError::WebPreview(shown())),
        [first, chat, ids @ ..] if is(first, "c") => (ChatRef::Channel(channel_id(chat)?), ids),
        [first] if is(first, "c") => return Err(LinkError::NoMessageId(shown())),
        [first, ..] if is_reserved(first) => return Err(LinkError::NotMessageLink(shown())),
        [first, ids @ ..] => (ChatRef::Username(first.parse()?), ids),
        // `split` always yields at least one segment, but returning an error keeps this
        // function total without an `unreachable!`.
        [] => return Err(LinkError::MissingPath),
    };
    let (topic_id, message) = match ids {
        [] => return Err(LinkError::NoMessageId(shown())),
        [first, ..] if is(first, "s") => return Err(LinkError::Story(shown())),
        [message] => (None, message),
        [topic, message] => (Some(message_id(topic, IdKind::Topic)?), message),
        _ => return Err(LinkError::TooManySegments(shown())),
    };
    Ok(TelegramLink {
        chat,
        message_id: message_id(message, IdKind::Message)?,
        topic_id,
        single: false,
        comment: None,
        thread: None,
    })
}

fn apply_query(link: &mut TelegramLink, query: &str) -> Result<(), LinkError> {
    let mut seen_single = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "single" => {
                if std::mem::replace(&mut seen_single, true) {
                    return Err(LinkError::RepeatedParameter("single"));
                }
                if !matches!(value, "" | "1") {
                    return Err(LinkError::InvalidSingle(value.to_owned()));
                }
                link.single = true;
            }
            "comment" => set_once(&mut link.comment, "comment", value, IdKind::Comment)?,
            "thread" => set_once(&mut link.thread, "thread", value, IdKind::Thread)?,
            // Telegram and other apps add parameters we have no use for (for example
            // `?embed=1`); they do not change which message the link points to.
            _ => {}
        }
    }
    Ok(())
}

fn set_once(
    slot: &mut Option<MessageId>,
    name: &'static str,
    value: &str,
    kind: IdKind,
) -> Result<(), LinkError> {
    if slot.is_some() {
        return Err(LinkError::RepeatedParameter(name));
    }
    *slot = Some(message_id(value, kind)?);
    Ok(())
}

/// Returns `value` if it is a non-empty run of ASCII digits. Rust's integer parsing also
/// accepts a leading `+` or `-`, which a link id must not have.
fn digits(value: &str) -> Option<&str> {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then_some(value)
}

fn message_id(value: &str, kind: IdKind) -> Result<MessageId, LinkError> {
    digits(value)
        .and_then(|d| d.parse().ok())
        .and_then(MessageId::new)
        .ok_or_else(|| kind.invalid(value))
}

fn channel_id(value: &str) -> Result<ChannelId, LinkError> {
    digits(value)
        .and_then(|d| d.parse().ok())
        .and_then(ChannelId::new)
        .ok_or_else(|| IdKind::Chat.invalid(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` and compares the canonical form (which spells out every field) or
    /// the exact error with `expected`.
    fn check(input: &str, expected: Result<&str, LinkError>) {
        let got = TelegramLink::parse(input).map(|link| link.to_string());
        assert_eq!(got, expected.map(str::to_owned), "input: {input:?}");
    }

    fn id(kind: IdKind, value: &str) -> LinkError {
        kind.invalid(value)
    }

    #[test]
    fn link_accepts_every_supported_form() {
        let cases = [
            ("https://t.me/durov/42", "https://t.me/durov/42"),
            ("http://t.me/durov/42", "https://t.me/durov/42"),
            ("t.me/durov/42", "https://t.me/durov/42"),
            ("HTTPS://T.ME/Durov/42", "https://t.me/Durov/42"),
            ("https://telegram.me/durov/42", "https://t.me/durov/42"),
            ("https://www.telegram.me/durov/42", "https://t.me/durov/42"),
            ("www.t.me/durov/42", "https://t.me/durov/42"),
            ("https://t.me/durov/42/", "https://t.me/durov/42"),
            ("  \t https://t.me/durov/42 \n", "https://t.me/durov/42"),
            ("t.me/c/1234567/89", "https://t.me/c/1234567/89"),
            ("t.me/c/1234567/5/89", "https://t.me/c/1234567/5/89"),
            ("t.me/some_group/5/89", "https://t.me/some_group/5/89"),
            ("t.me/durov/42?single", "https://t.me/durov/42?single"),
            ("t.me/durov/42?single=", "https://t.me/durov/42?single"),
            ("t.me/durov/42?single=1", "https://t.me/durov/42?single"),
            ("t.me/durov/42?comment=7", "https://t.me/durov/42?comment=7"),
            ("t.me/durov/42?thread=3", "https://t.me/durov/42?thread=3"),
            (
                "t.me/durov/42?thread=3&comment=7&single",
                "https://t.me/durov/42?single&comment=7&thread=3",
            ),
            ("t.me/durov/42?embed=1&single", "https://t.me/durov/42?single"),
            ("t.me/durov/42?&&single&", "https://t.me/durov/42?single"),
            ("t.me/durov/42#anchor?comment=x", "https://t.me/durov/42"),
            ("t.me/durov/0042", "https://t.me/durov/42"),
            (
                "t.me/c/9223372036854775807/2147483647",
                "https://t.me/c/9223372036854775807/2147483647",
            ),
            ("t.me/a2345/1", "https://t.me/a2345/1"),
            ("t.me/a__b_c/1", "https://t.me/a__b_c/1"),
            (
                "t.me/abcdefghijklmnopqrstuvwxyz012345/1",
                "https://t.me/abcdefghijklmnopqrstuvwxyz012345/1",
            ),
            ("t.me/durov/42?x=https://example.com", "https://t.me/durov/42"),
        ];
        for (input, canonical) in cases {
            check(input, Ok(canonical));
        }
    }

    #[test]
    fn link_fields_are_filled_in() {
        let link = TelegramLink::parse("t.me/c/77/5/89?single&comment=7&thread=3").unwrap();
        assert_eq!(link.chat, ChatRef::Channel(ChannelId::new(77).unwrap()));
        assert_eq!(link.message_id.get(), 89);
        assert_eq!(link.topic_id.map(MessageId::get), Some(5));
        assert!(link.single);
        assert_eq!(link.comment.map(MessageId::get), Some(7));
        assert_eq!(link.thread.map(MessageId::get), Some(3));
        assert_eq!(
            "t.me/durov/1".parse::<TelegramLink>().unwrap().chat.to_string(),
            "durov"
        );
    }

    #[test]
    fn link_rejects_input_that_is_not_a_link() {
        check("", Err(LinkError::Empty));
        check(" \n\t ", Err(LinkError::Empty));
        let long = format!("t.me/durov/{}", "1".repeat(MAX_LINK_LEN));
        check(&long, Err(LinkError::TooLong(long.len())));
        check("t.me/durov/4\u{0}2", Err(LinkError::ControlCharacter('\0')));
        check("t.me/du\u{7f}rov/42", Err(LinkError::ControlCharacter('\u{7f}')));
        check("t.me/durov\n/42", Err(LinkError::ControlCharacter('\n')));
    }

    #[test]
    fn link_rejects_wrong_scheme_host_or_authority() {
        let not_host = |host: &str| Err(LinkError::NotTelegramHost(host.to_owned()));
        check(
            "ftp://t.me/durov/42",
            Err(LinkError::UnsupportedScheme("ftp".into())),
        );
        check(
            "tg://resolve?domain=durov",
            Err(LinkError::UnsupportedScheme("tg".into())),
        );
        check("https://example.com/durov/42", not_host("example.com"));
        check("example.com", not_host("example.com"));
        check("https://t.me.evil.com/durov/42", not_host("t.me.evil.com"));
        check("https://telegram.org/durov/42", not_host("telegram.org"));
        check("https:t.me/durov/42", not_host("https:t.me"));
        check("t.me:/durov/42", not_host("t.me:"));
        check("https:///durov/42", Err(LinkError::MissingHost));
        check("/durov/42", Err(LinkError::MissingHost));
        check("https://user@t.me/durov/42", Err(LinkError::UserInfo));
        check("https://user:pw@t.me/durov/42", Err(LinkError::UserInfo));
        check("t.me:99999/x", Err(LinkError::Port("99999".into())));
        check("https://t.me:443/durov/42", Err(LinkError::Port("443".into())));
    }

    #[test]
    fn link_rejects_links_that_are_not_message_links() {
        let path = |p: &str| p.to_owned();
        check("https://t.me", Err(LinkError::MissingPath));
        check("https://t.me/", Err(LinkError::MissingPath));
        check("t.me/durov//42", Err(LinkError::EmptySegment(path("/durov//42"))));
        check("t.me/s/durov/42", Err(LinkError::WebPreview(path("/s/durov/42"))));
        check("t.me/S/durov", Err(LinkError::WebPreview(path("/S/durov"))));
        check("t.me/durov/s/5", Err(LinkError::Story(path("/durov/s/5"))));
        check("t.me/+AbCdEf123", Err(LinkError::Invite(path("/+AbCdEf123"))));
        check(
            "t.me/joinchat/AbCdEf",
            Err(LinkError::Invite(path("/joinchat/AbCdEf"))),
        );
        for other in [
            "/addstickers/Animals",
            "/share/url?url=x",
            "/proxy?server=1.2.3.4&port=443",
            "/socks?server=x",
            "/addlist/abc",
            "/iv?url=x",
        ] {
            let shown = other.split('?').next().unwrap().to_owned();
            check(&format!("t.me{other}"), Err(LinkError::NotMessageLink(shown)));
        }
        check("t.me/durov", Err(LinkError::NoMessageId(path("/durov"))));
        check("t.me/durov/", Err(LinkError::NoMessageId(path("/durov/"))));
        check("t.me/c/1234567", Err(LinkError::NoMessageId(path("/c/1234567"))));
        check("t.me/c", Err(LinkError::NoMessageId(path("/c"))));
        check(
            "t.me/durov/1/2/3",
            Err(LinkError::TooManySegments(path("/durov/1/2/3"))),
        );
        check(
            "t.me/c/1/2/3/4",
            Err(LinkError::TooManySegments(path("/c/1/2/3/4"))),
        );
    }

    #[test]
    fn link_rejects_bad_ids() {
        use IdKind::*;
        check("t.me/durov/abc", Err(id(Message, "abc")));
        check("t.me/durov/0", Err(id(Message, "0")));
        check("t.me/durov/-5", Err(id(Message, "-5")));
        check("t.me/durov/+5", Err(id(Message, "+5")));
        check("t.me/durov/2147483648", Err(id(Message, "2147483648")));
        check("t.me/durov/1e3", Err(id(Message, "1e3")));
        check("t.me/durov/%31", Err(id(Message, "%31")));
        check("t.me/c/abc/5", Err(id(Chat, "abc")));
        check("t.me/c/0/5", Err(id(Chat, "0")));
        check("t.me/c/-1001234/5", Err(id(Chat, "-1001234")));
        check(
            "t.me/c/9223372036854775808/5",
            Err(id(Chat, "9223372036854775808")),
        );
        check("t.me/c/1/x/5", Err(id(Topic, "x")));
        check("t.me/durov/0/5", Err(id(Topic, "0")));
        check("t.me/durov/5?comment=abc", Err(id(Comment, "abc")));
        check("t.me/durov/5?comment", Err(id(Comment, "")));
        check("t.me/durov/5?comment=0", Err(id(Comment, "0")));
        check("t.me/durov/5?thread=-3", Err(id(Thread, "-3")));
        check("t.me/durov/5?thread=99999999999", Err(id(Thread, "99999999999")));
    }

    #[test]
    fn link_rejects_bad_query_values() {
        check("t.me/durov/5?single=0", Err(LinkError::InvalidSingle("0".into())));
        check(
            "t.me/durov/5?single=yes",
            Err(LinkError::InvalidSingle("yes".into())),
        );
        check(
            "t.me/durov/5?single&single",
            Err(LinkError::RepeatedParameter("single")),
        );
        check(
            "t.me/durov/5?comment=1&comment=2",
            Err(LinkError::RepeatedParameter("comment")),
        );
        check(
            "t.me/durov/5?thread=1&thread=1",
            Err(LinkError::RepeatedParameter("thread")),
        );
    }

    #[test]
    fn link_rejects_invalid_usernames() {
        for name in [
            "abcd",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "1durov",
            "_durov",
            "durov_",
            "du-rov",
            "dur.ov",
            "@durov",
            "дуров_канал",
            "durov%20",
        ] {
            check(
                &format!("t.me/{name}/1"),
                Err(LinkError::InvalidUsername(name.into())),
            );
        }
        assert!("share".parse::<Username>().is_err());
        assert!("JoinChat".parse::<Username>().is_err());
    }

    #[test]
    fn link_newtypes_refuse_non_positive_values() {
        assert!(MessageId::new(0).is_none());
        assert!(MessageId::new(-1).is_none());
        assert_eq!(MessageId::new(1).map(MessageId::get), Some(1));
        assert!(ChannelId::new(0).is_none());
        assert!(ChannelId::new(i64::MIN).is_none());
        assert_eq!(ChannelId::new(i64::MAX).map(ChannelId::get), Some(i64::MAX));
    }

    #[test]
    fn link_error_messages_name_the_wrong_part() {
        let message = |input: &str| TelegramLink::parse(input).unwrap_err().to_string();
        assert_eq!(
            message("https://example.com/durov/1"),
            "`example.com` is not a Telegram host: use a https://t.me/... message link"
        );
        assert_eq!(
            message("t.me/s/durov/5"),
            "`/s/durov/5` is a web preview link: drop the /s/ to link the message itself"
        );
        assert_eq!(
            message("t.me/durov/0"),
            "`0` is not a valid message id: use a whole number from 1 to 2147483647"
        );
        assert_eq!(
            message("t.me/durov\u{0}"),
            "the link contains the control character U+0000: paste the link as plain text"
        );
        // Every message starts lowercase (or with a quoted part) and has no trailing period.
        for input in [
            "",
            "ftp://x",
            "t.me",
            "t.me/durov",
            "t.me/+x",
            "t.me/durov/5?single=2",
        ] {
            let text = message(input);
            assert!(!text.ends_with('.'), "{text}");
            assert!(!text.starts_with(|c: char| c.is_uppercase()), "{text}");
        }
    }
}
