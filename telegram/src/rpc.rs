//! Telegram's RPC errors, as grammers reports them, turned into [`TelegramError`]s.
//!
//! One pure function per grammers error type, used by the real client ([`crate::GrammersApi`])
//! and by the fake ([`crate::fake::FakeTelegram`]), so both fail with the same words.
//! grammers strips the number out of an error's name into `value`: `FLOOD_WAIT_31` arrives as
//! `name: "FLOOD_WAIT", value: Some(31)`, `FILE_MIGRATE_4` as `FILE_MIGRATE` with `Some(4)`.

use grammers_mtsender::{InvocationError, RpcError};

use crate::error::TelegramError;

/// What the failed request was about, so the error can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A chat, labelled as the user sees it: `@durov` or `123` (a `t.me/c/123` id).
    Chat(&'a str),
    /// A username lookup, without the `@`.
    Username(&'a str),
    /// A message in a chat.
    Message { chat: &'a str, id: i32 },
    /// A file part.
    File,
    /// Signing in.
    Login,
}

impl Subject<'_> {
    fn chat_label(&self) -> String {
        match self {
            Subject::Chat(chat) | Subject::Message { chat, .. } => (*chat).to_owned(),
            Subject::Username(name) => format!("@{name}"),
            Subject::File | Subject::Login => "(unknown)".to_owned(),
        }
    }
}

/// The flood wait assumed when Telegram names none; it always does, so this is a guard only.
const UNSPECIFIED_FLOOD_WAIT_SECONDS: u32 = 5;

/// Maps one RPC error to what it means for the user and for the retry policy.
pub fn from_rpc(error: &RpcError, subject: Subject<'_>) -> TelegramError {
    let name = error.name.as_str();
    match name {
        "FLOOD_WAIT" | "SLOWMODE_WAIT" => TelegramError::FloodWait {
            seconds: error.value.unwrap_or(UNSPECIFIED_FLOOD_WAIT_SECONDS),
            premium: false,
        },
        "FLOOD_PREMIUM_WAIT" => TelegramError::FloodWait {
            seconds: error.value.unwrap_or(UNSPECIFIED_FLOOD_WAIT_SECONDS),
            premium: true,
        },
        // Other 420s (FLOOD_TEST_PHONE_WAIT and future ones) are flood waits by another name.
        _ if error.code == 420 => TelegramError::FloodWait {
            seconds: error.value.unwrap_or(UNSPECIFIED_FLOOD_WAIT_SECONDS),
            premium: false,
        },
        // A reference can be refreshed whether Telegram calls it expired or invalid.
        "FILE_REFERENCE_EXPIRED" | "FILE_REFERENCE_INVALID" => TelegramError::FileReferenceExpired,
        "FILE_MIGRATE" => match error.value.and_then(|dc| i32::try_from(dc).ok()) {
            Some(dc) => TelegramError::FileMigrate(dc),
            None => rpc(error),
        },
        "CHANNEL_PRIVATE" | "CHANNEL_INVALID" | "CHAT_FORBIDDEN" | "USER_NOT_PARTICIPANT"
        | "CHANNEL_PUBLIC_GROUP_NA" => TelegramError::NotMember {
            chat: subject.chat_label(),
        },
        "CHAT_ID_INVALID" | "PEER_ID_INVALID" | "CHANNEL_ID_INVALID" => {
            TelegramError::chat_not_found(&subject.chat_label())
        }
        "USERNAME_NOT_OCCUPIED" | "USERNAME_INVALID" => match subject {
            Subject::Username(username) => TelegramError::username_not_found(username),
            other => TelegramError::chat_not_found(&other.chat_label()),
        },
        "MSG_ID_INVALID" | "MESSAGE_ID_INVALID" | "MESSAGE_IDS_EMPTY" => match subject {
            Subject::Message { chat, id } => TelegramError::message_not_found(chat, id),
            other => TelegramError::NotFound(format!(
                "the message does not exist in chat {}: it was deleted or the link is wrong",
                other.chat_label()
            )),
        },
        "AUTH_KEY_UNREGISTERED" | "AUTH_KEY_INVALID" | "AUTH_KEY_PERM_EMPTY" | "SESSION_EXPIRED" => {
            TelegramError::Unauthorized(format!(
                "the session is not logged in ({name}): run `savestream-worker login` again \
                 (user session) or check `[telegram] token` (bot)"
            ))
        }
        // The same auth key was used from two places (IP addresses) at once, as happens when a
        // session file is copied to a second host: Telegram revokes the key for everyone using
        // it, so no retry can work and every worker on that session now fails the same way.
        "AUTH_KEY_DUPLICATED" => TelegramError::Unauthorized(
            "Telegram revoked the user session because it was used from two places at once \
             (AUTH_KEY_DUPLICATED), for every worker using it: a session file copied to another \
             host does this. Run `savestream-worker login` on each worker host, so that each host \
             has a login of its own (never copy the session file between hosts), or use a bot \
             token (`[telegram] token`)"
                .to_owned(),
        ),
        "SESSION_REVOKED" => TelegramError::Unauthorized(
            "the session was ended from another device (SESSION_REVOKED): run `savestream-worker login` again"
                .to_owned(),
        ),
        "SESSION_PASSWORD_NEEDED" => TelegramError::Unauthorized(
            "the account has a 2FA password and the session is not fully logged in \
             (SESSION_PASSWORD_NEEDED): run `savestream-worker login` again"
                .to_owned(),
        ),
        "USER_DEACTIVATED" | "USER_DEACTIVATED_BAN" => TelegramError::Unauthorized(format!(
            "the account was deleted or banned by Telegram ({name}): log in with another account"
        )),
        "ACCESS_TOKEN_INVALID" | "ACCESS_TOKEN_EXPIRED" => TelegramError::Unauthorized(format!(
            "the bot token was refused ({name}): copy `[telegram] token` again from @BotFather"
        )),
        "API_ID_INVALID" | "API_ID_PUBLISHED_FLOOD" => TelegramError::Unauthorized(format!(
            "the app id and hash were refused ({name}): set `[telegram] app_id` and `app_hash` \
             from https://my.telegram.org"
        )),
        "BOT_METHOD_INVALID" => TelegramError::Unsupported(
            "a bot cannot open this link (BOT_METHOD_INVALID): enable `[telegram.userbot]` and log in \
             with a user account"
                .to_owned(),
        ),
        _ if error.code == 401 => TelegramError::Unauthorized(format!(
            "Telegram answered 401 {name}: run `savestream-worker login` again or check `[telegram] token`"
        )),
        _ => rpc(error),
    }
}

/// Maps any grammers failure: RPC errors through [`from_rpc`], the rest by what they mean for
/// a retry (a dropped connection can be retried; a corrupt answer cannot).
pub fn from_invocation(error: &InvocationError, subject: Subject<'_>) -> TelegramError {
    match error {
        InvocationError::Rpc(rpc_error) => from_rpc(rpc_error, subject),
        InvocationError::Io(io_error) => TelegramError::Disconnected(io_error.to_string()),
        InvocationError::Transport(transport_error) => {
            TelegramError::Disconnected(format!("transport error: {transport_error}"))
        }
        InvocationError::Dropped(reason) => {
            TelegramError::Disconnected(format!("the request was dropped: {reason}"))
        }
        InvocationError::Authentication(auth_error) => {
            TelegramError::Disconnected(format!("could not set up an encrypted connection: {auth_error}"))
        }
        InvocationError::Deserialize(deserialize_error) => {
            TelegramError::Protocol(format!("the answer could not be read: {deserialize_error}"))
        }
        InvocationError::InvalidDc => {
            TelegramError::Protocol("Telegram named a data centre this session does not know".to_owned())
        }
        InvocationError::Session(session_error) => TelegramError::Session(session_error.to_string()),
    }
}

fn rpc(error: &RpcError) -> TelegramError {
    TelegramError::Rpc {
        code: error.code,
        name: error.name.clone(),
        value: error.value,
    }
}

/// Builds an [`RpcError`] as grammers would from Telegram's text (`FLOOD_WAIT_31`), for the
/// fake and for tests.
pub fn rpc_error(code: i32, message: &str) -> RpcError {
    RpcError::from(grammers_tl_types::types::RpcError {
        error_code: code,
        error_message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(code: i32, message: &str, subject: Subject<'_>, expected: TelegramError) {
        let mapped = from_rpc(&rpc_error(code, message), subject);
        assert_eq!(mapped, expected, "{code} {message}");
    }

    #[test]
    fn rpc_errors_map_to_what_they_mean() {
        let chat = Subject::Chat("123");
        let message = Subject::Message {
            chat: "@durov",
            id: 42,
        };
        check(
            420,
            "FLOOD_WAIT_31",
            Subject::File,
            TelegramError::FloodWait {
                seconds: 31,
                premium: false,
            },
        );
        check(
            420,
            "FLOOD_PREMIUM_WAIT_7",
            Subject::File,
            TelegramError::FloodWait {
                seconds: 7,
                premium: true,
            },
        );
        check(
            420,
            "SLOWMODE_WAIT_10",
            chat,
            TelegramError::FloodWait {
                seconds: 10,
                premium: false,
            },
        );
        check(
            420,
            "FLOOD_TEST_PHONE_WAIT_3",
            Subject::Login,
            TelegramError::FloodWait {
                seconds: 3,
                premium: false,
            },
        );
        check(
            400,
            "FILE_REFERENCE_EXPIRED",
            Subject::File,
            TelegramError::FileReferenceExpired,
        );
        check(
            400,
            "FILE_REFERENCE_INVALID",
            Subject::File,
            TelegramError::FileReferenceExpired,
        );
        check(
            303,
            "FILE_MIGRATE_4",
            Subject::File,
            TelegramError::FileMigrate(4),
        );
        check(
            406,
            "CHANNEL_PRIVATE",
            chat,
            TelegramError::NotMember { chat: "123".into() },
        );
        check(
            400,
            "CHANNEL_INVALID",
            chat,
            TelegramError::NotMember { chat: "123".into() },
        );
        check(
            400,
            "USER_NOT_PARTICIPANT",
            chat,
            TelegramError::NotMember { chat: "123".into() },
        );
        check(400, "CHAT_ID_INVALID", chat, TelegramError::chat_not_found("123"));
        check(400, "PEER_ID_INVALID", chat, TelegramError::chat_not_found("123"));
        check(
            400,
            "USERNAME_NOT_OCCUPIED",
            Subject::Username("nobody_here"),
            TelegramError::username_not_found("nobody_here"),
        );
        check(
            400,
            "USERNAME_INVALID",
            Subject::Username("x"),
            TelegramError::username_not_found("x"),
        );
        check(
            400,
            "MSG_ID_INVALID",
            message,
            TelegramError::message_not_found("@durov", 42),
        );
        check(
            400,
            "MESSAGE_ID_INVALID",
            message,
            TelegramError::message_not_found("@durov", 42),
        );
        check(
            400,
            "LIMIT_INVALID",
            Subject::File,
            TelegramError::Rpc {
                code: 400,
                name: "LIMIT_INVALID".into(),
                value: None,
            },
        );
        check(
            500,
            "INTERDC_2_CALL_ERROR",
            Subject::File,
            TelegramError::Rpc {
                code: 500,
                name: "INTERDC_CALL_ERROR".into(),
                value: Some(2),
            },
        );
    }

    #[test]
    fn credential_errors_are_unauthorized_and_say_what_to_do() {
        for (code, message, advice) in [
            (401, "AUTH_KEY_UNREGISTERED", "savestream-worker login"),
            (401, "SESSION_REVOKED", "savestream-worker login"),
            (401, "USER_DEACTIVATED_BAN", "another account"),
            (400, "ACCESS_TOKEN_INVALID", "@BotFather"),
            (400, "API_ID_INVALID", "my.telegram.org"),
            (401, "SOMETHING_NEW", "savestream-worker login"),
        ] {
            let mapped = from_rpc(&rpc_error(code, message), Subject::Login);
            let TelegramError::Unauthorized(text) = &mapped else {
                panic!("{message} mapped to {mapped:?}");
            };
            assert!(text.contains(advice), "{message}: {text}");
            assert!(!mapped.is_retryable(), "{message}");
        }
    }

    #[test]
    fn a_key_used_from_two_hosts_is_a_permanent_error_that_says_to_log_in_on_each_host() {
        for subject in [Subject::Login, Subject::File, Subject::Chat("@x")] {
            let mapped = from_rpc(&rpc_error(406, "AUTH_KEY_DUPLICATED"), subject);

            let TelegramError::Unauthorized(text) = &mapped else {
                panic!("AUTH_KEY_DUPLICATED mapped to {mapped:?}");
            };
            assert!(!mapped.is_retryable());
            assert!(text.contains("AUTH_KEY_DUPLICATED"), "{text}");
            assert!(text.contains("two places at once"), "{text}");
            assert!(
                text.contains("`savestream-worker login` on each worker host"),
                "{text}"
            );
            assert!(text.contains("[telegram] token"), "{text}");
        }
    }

    #[test]
    fn bots_asked_for_user_only_methods_are_told_to_use_a_user_session() {
        let mapped = from_rpc(&rpc_error(400, "BOT_METHOD_INVALID"), Subject::Chat("@x"));
        assert!(matches!(&mapped, TelegramError::Unsupported(text) if text.contains("userbot")));
    }

    #[test]
    fn transport_failures_are_retryable_disconnects() {
        let io = InvocationError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        let mapped = from_invocation(&io, Subject::File);
        assert!(matches!(mapped, TelegramError::Disconnected(_)));
        assert!(mapped.is_retryable());

        let dropped = from_invocation(&InvocationError::Dropped("runner gone"), Subject::File);
        assert!(matches!(dropped, TelegramError::Disconnected(_)));

        let invalid_dc = from_invocation(&InvocationError::InvalidDc, Subject::File);
        assert!(!invalid_dc.is_retryable());
    }
}
