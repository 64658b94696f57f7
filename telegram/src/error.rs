//! [`TelegramError`]: every way the Telegram source can fail, each in words a user can act on.
//!
//! This module owns the error type and the constructors that phrase the common cases
//! ("message 42 does not exist in chat @durov") so the real client and the fake say the
//! same thing. Turning Telegram's RPC errors into these variants is [`crate::rpc`]'s job.

use std::time::Duration;

/// Why the Telegram source could not do what was asked.
///
/// The variants that change what a caller does next are separate: [`FloodWait`] says how long
/// to wait, [`FileReferenceExpired`] asks for a refetch, [`FileMigrate`] names the data centre
/// to ask instead. Everything else carries a message for the task's `error` field.
///
/// [`FloodWait`]: TelegramError::FloodWait
/// [`FileReferenceExpired`]: TelegramError::FileReferenceExpired
/// [`FileMigrate`]: TelegramError::FileMigrate
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelegramError {
    /// FLOOD_WAIT_X or FLOOD_PREMIUM_WAIT_X: Telegram refuses more requests for `seconds`.
    #[error(
        "Telegram asks to wait {seconds} s before the next request ({}): the task is retried later",
        if *premium {
            "FLOOD_PREMIUM_WAIT, the download speed limit of accounts without Telegram Premium"
        } else {
            "FLOOD_WAIT, too many requests from this account"
        }
    )]
    FloodWait { seconds: u32, premium: bool },

    /// FILE_REFERENCE_EXPIRED: the file reference in the message we hold is stale; refetching
    /// the message gives a fresh one.
    #[error(
        "Telegram says the file reference expired (FILE_REFERENCE_EXPIRED) and refetching the \
         message did not renew it: the task is retried later"
    )]
    FileReferenceExpired,

    /// FILE_MIGRATE_X: the file lives on data centre X; ask there.
    #[error(
        "Telegram says the file is stored on data centre {0} (FILE_MIGRATE) and following it did not succeed"
    )]
    FileMigrate(i32),

    /// The connection dropped, timed out or could not be made.
    #[error("the connection to Telegram failed: {0}")]
    Disconnected(String),

    /// The account (user or bot) cannot read the chat.
    #[error(
        "the account is not a member of chat {chat}: join the chat with the account whose session \
         the workers use (or add the bot to it), then retry"
    )]
    NotMember { chat: String },

    /// The message, chat or user does not exist (or this account cannot see it). The text is a
    /// whole sentence built by one of the constructors below.
    #[error("{0}")]
    NotFound(String),

    /// The message holds something that is not a file, or the link asks for something the
    /// account cannot do. The text is a whole sentence.
    #[error("{0}")]
    Unsupported(String),

    /// Telegram refused the credentials: the bot token, the session or the app id/hash.
    #[error("Telegram refused the login: {0}")]
    Unauthorized(String),

    /// Any other answer Telegram gave, kept as Telegram spelt it.
    #[error("Telegram answered {code} {name}{}", value.map(|value| format!(" ({value})")).unwrap_or_default())]
    Rpc {
        code: i32,
        name: String,
        value: Option<u32>,
    },

    /// `[telegram]` in config.toml cannot be used as it is.
    #[error("the Telegram settings cannot be used: {0}")]
    Config(String),

    /// The session file could not be opened, copied or written.
    #[error("the Telegram session file: {0}")]
    Session(String),

    /// A resume asked for bytes past the end of the file.
    #[error(
        "the partial file already has {offset} bytes but the Telegram file has only {size}: \
         delete the partial file and retry"
    )]
    OffsetBeyondEnd { offset: u64, size: u64 },

    /// Telegram answered in a way the protocol does not allow (more bytes than asked for, a CDN
    /// redirect we did not offer to follow, a message that changed its file under us).
    #[error("Telegram sent an answer that cannot be used: {0}")]
    Protocol(String),
}

impl TelegramError {
    /// Whether another attempt, later, may succeed. Flood waits, stale references, migrations,
    /// dropped connections and Telegram's internal errors are worth retrying; a missing
    /// message, a chat the account cannot read or unsupported media never get better.
    pub fn is_retryable(&self) -> bool {
        match self {
            TelegramError::FloodWait { .. }
            | TelegramError::FileReferenceExpired
            | TelegramError::FileMigrate(_)
            | TelegramError::Disconnected(_) => true,
            TelegramError::Rpc { code, name, .. } => is_transient_rpc(*code, name),
            TelegramError::NotMember { .. }
            | TelegramError::NotFound(_)
            | TelegramError::Unsupported(_)
            | TelegramError::Unauthorized(_)
            | TelegramError::Config(_)
            | TelegramError::Session(_)
            | TelegramError::OffsetBeyondEnd { .. }
            | TelegramError::Protocol(_) => false,
        }
    }

    /// How long Telegram asked us to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TelegramError::FloodWait { seconds, .. } => Some(Duration::from_secs(u64::from(*seconds))),
            _ => None,
        }
    }

    /// "no chat or user is called @name" (USERNAME_NOT_OCCUPIED, USERNAME_INVALID).
    pub fn username_not_found(username: &str) -> TelegramError {
        TelegramError::NotFound(format!(
            "no chat or user is called @{username}: check the username in the link"
        ))
    }

    /// A chat id that names nothing this account can see (CHAT_ID_INVALID, PEER_ID_INVALID).
    pub fn chat_not_found(chat: &str) -> TelegramError {
        TelegramError::NotFound(format!(
            "chat {chat} does not exist or this account cannot see it: check the link"
        ))
    }

    /// A message id that names nothing in the chat (MSG_ID_INVALID, MESSAGE_ID_INVALID, or an
    /// empty answer).
    pub fn message_not_found(chat: &str, message_id: i32) -> TelegramError {
        TelegramError::NotFound(format!(
            "message {message_id} does not exist in chat {chat}: it was deleted or the link is wrong"
        ))
    }

    /// A topic link whose message belongs to another topic.
    pub fn not_in_topic(chat: &str, message_id: i32, topic_id: i32) -> TelegramError {
        TelegramError::NotFound(format!(
            "message {message_id} is not in topic {topic_id} of chat {chat}: check the link"
        ))
    }

    /// A `?comment=` link on a channel without a discussion group.
    pub fn no_discussion(chat: &str) -> TelegramError {
        TelegramError::NotFound(format!(
            "chat {chat} has no discussion group, so the link's comment does not exist"
        ))
    }

    /// A message that holds something other than a document or a photo; `holds` says what,
    /// as in "a poll" or "no media".
    pub fn unsupported_media(chat: &str, message_id: i32, holds: &str) -> TelegramError {
        TelegramError::Unsupported(format!(
            "message {message_id} in chat {chat} holds {holds}: only documents (files, videos, \
             music, stickers) and photos can be saved"
        ))
    }
}

/// Telegram's own failures: 5xx, -503 (timeouts inside Telegram) and the names it uses for
/// them. The [error docs](https://core.telegram.org/api/errors) say these may be retried.
fn is_transient_rpc(code: i32, name: &str) -> bool {
    code >= 500
        || code == -503
        || matches!(
            name,
            "TIMEOUT" | "RPC_CALL_FAIL" | "RPC_MCGET_FAIL" | "INTERDC_CALL_ERROR" | "INTERDC_CALL_RICH_ERROR"
        )
        || name.ends_with("_TOO_MUCH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let retryable = [
            TelegramError::FloodWait {
                seconds: 3,
                premium: false,
            },
            TelegramError::FileReferenceExpired,
            TelegramError::FileMigrate(4),
            TelegramError::Disconnected("reset".into()),
            TelegramError::Rpc {
                code: 500,
                name: "INTERNAL".into(),
                value: None,
            },
            TelegramError::Rpc {
                code: -503,
                name: "TIMEOUT".into(),
                value: None,
            },
        ];
        for error in retryable {
            assert!(error.is_retryable(), "{error:?}");
        }
        let permanent = [
            TelegramError::NotMember { chat: "123".into() },
            TelegramError::message_not_found("@durov", 4),
            TelegramError::unsupported_media("@durov", 4, "a poll"),
            TelegramError::Unauthorized("x".into()),
            TelegramError::Rpc {
                code: 400,
                name: "LIMIT_INVALID".into(),
                value: None,
            },
        ];
        for error in permanent {
            assert!(!error.is_retryable(), "{error:?}");
        }
    }

    #[test]
    fn messages_name_what_went_wrong_without_a_trailing_period() {
        let cases = [
            (
                TelegramError::NotMember { chat: "123".into() },
                "the account is not a member of chat 123",
            ),
            (
                TelegramError::unsupported_media("@durov", 7, "a poll"),
                "message 7 in chat @durov holds a poll",
            ),
            (
                TelegramError::FloodWait {
                    seconds: 30,
                    premium: true,
                },
                "wait 30 s",
            ),
            (
                TelegramError::Rpc {
                    code: 400,
                    name: "LIMIT_INVALID".into(),
                    value: None,
                },
                "Telegram answered 400 LIMIT_INVALID",
            ),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert!(text.contains(expected), "{text:?} should contain {expected:?}");
            assert!(!text.ends_with('.'), "{text:?}");
        }
    }

    #[test]
    fn flood_wait_reports_how_long_to_wait() {
        let error = TelegramError::FloodWait {
            seconds: 12,
            premium: false,
        };
        assert_eq!(error.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!(TelegramError::FileReferenceExpired.retry_after(), None);
    }
}
