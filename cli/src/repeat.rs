//! Repeating a create whose fate is unknown. A 503 from the API (Redis did
//! not answer in time), a timeout or a connection lost mid-request all
//! leave open whether the tasks were stored. `add` sends each request with
//! an `Idempotency-Key` of its own (or one derived from the user's
//! `--idempotency-key`) and repeats it, with the same key, up to four more
//! times, 1, 2, 4 and 8 s apart (15 s of pauses, long enough for Redis or
//! the API to restart): a repeat of a create that was stored answers with
//! the first task instead of making another, so nothing is created twice
//! and nothing is lost.
//!
//! Each try may itself take up to the request timeout (`api.rs`) when the
//! API does not answer, so `add` gives up between 15 s and about 2¾
//! minutes after the first try.
//!
//! A request that never left (nothing listens) is not repeated when it is
//! the first: its answer is certain, and the user should hear it at once.
//! Once a try's fate is unknown, though, a refused connection is what an
//! API restarting looks like, and it is repeated too. When `add` gives up
//! after a try whose fate is unknown, its error says why from what the tries
//! met (the API answered 503 on every try, the task store unavailable; a
//! connection lost or timed out after the request was sent; a proxy's
//! 502-504; the API refusing connections afterwards), that the tasks may
//! have been created all the same, and gives the key: the same command with
//! `--idempotency-key KEY` then answers with them rather than creating them
//! twice.

use std::future::Future;
use std::time::Duration;

use savestream_shared::store::is_idempotency_key;

use crate::api::{Api, ClientError};

/// The pauses before each repeat.
const PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// A fresh key for one `add` and its repeats.
pub fn new_key() -> String {
    format!("savestream-add-{}", xid::new())
}

/// The longest `--idempotency-key`: the API takes 255 bytes, and the keys
/// of a second and later batch add a suffix to it (`batch_key`).
pub const MAX_KEY_LEN: usize = 200;

/// The `--idempotency-key` given, checked as the API checks a key (1 to
/// 255 printable ASCII characters, not blank), and shorter so that a
/// batch's suffix fits.
pub fn check_key(key: &str) -> Result<String, String> {
    if !is_idempotency_key(key, MAX_KEY_LEN) {
        return Err(format!(
            "an idempotency key is 1 to {MAX_KEY_LEN} printable ASCII characters: \
             give the one a previous `savestream add` printed, or a UUID"
        ));
    }
    Ok(key.to_owned())
}

/// The key of the `index`th batch request of an `add` whose key is `key`:
/// the key itself for the first, so one link and one batch look alike, and
/// `key/2`, `key/3`... after it. The same command with the same key splits
/// the same links into the same batches, so each repeats its own.
pub fn batch_key(key: &str, index: usize) -> String {
    match index {
        0 => key.to_owned(),
        _ => format!("{key}/{}", index + 1),
    }
}

/// A create that `add` gave up on: the error of its last try, how many
/// tries there were, whether any of them may have been stored, and what
/// the tries met.
pub struct GaveUp {
    pub error: ClientError,
    pub tries: usize,
    pub fate_unknown: bool,
    pub seen: Seen,
}

impl GaveUp {
    /// Whether the API refused the request because its key was first used
    /// for another request (422): repeating it with that key cannot help.
    pub fn key_reused(&self) -> bool {
        matches!(&self.error, savestream_client::Error::ErrorResponse(response) if response.status() == 422)
    }
}

/// How many tries met each failure that leaves a create's fate unknown,
/// and how many were refused a connection after one did: what the error
/// of an `add` that gave up says happened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The API answered 503: its task store (Redis) did not answer in time,
    /// and a create it gave up on may still be applied.
    pub unavailable: usize,
    /// A proxy before the API answered 502, 503 or 504.
    pub gateway: usize,
    /// The connection broke or timed out after the request was sent.
    pub lost: usize,
    /// The connection was refused (the API restarting).
    pub refused: usize,
}

impl Seen {
    fn count(&mut self, error: &ClientError) {
        use savestream_client::Error;
        match error {
            Error::ErrorResponse(response) if response.status() == 503 => self.unavailable += 1,
            Error::UnexpectedResponse(response) if matches!(response.status().as_u16(), 502..=504) => {
                self.gateway += 1
            }
            _ if is_connect(error) => self.refused += 1,
            Error::CommunicationError(_) | Error::ResponseBodyError(_) => self.lost += 1,
            _ => {}
        }
    }

    /// What happened, in words, for `tries` tries in all.
    fn words(&self, tries: usize) -> String {
        if self.unavailable == tries {
            return "the API answered 503 on every try: its task store (Redis) did not answer in time, \
                    and a create it gave up on may still be applied"
                .to_owned();
        }
        let of = |count: usize| match count {
            _ if count == tries => "every try".to_owned(),
            1 => "1 try".to_owned(),
            count => format!("{count} tries"),
        };
        let mut said = Vec::new();
        if self.unavailable > 0 {
            said.push(format!(
                "the API answered 503 to {} (its task store did not answer in time; a create it gave up on may still be applied)",
                of(self.unavailable)
            ));
        }
        if self.gateway > 0 {
            said.push(format!(
                "a proxy before the API answered 502-504 to {} (the API's own answer unknown)",
                of(self.gateway)
            ));
        }
        if self.lost > 0 {
            said.push(format!(
                "the connection was lost or timed out after the request was sent on {}",
                of(self.lost)
            ));
        }
        if self.refused > 0 {
            said.push(format!("the API refused the connection on {}", of(self.refused)));
        }
        said.join(", ")
    }
}

impl GaveUp {
    /// The error in one line. After a try whose fate is unknown it says
    /// that `what` ("the task") may have been created all the same, and how
    /// to find out without creating it twice: the same command with
    /// `--idempotency-key key`.
    pub async fn explain(self, api: &Api, key: &str, what: &str) -> anyhow::Error {
        if !self.fate_unknown {
            return api.explain(self.error).await;
        }
        let last = if is_connect(&self.error) {
            // Not `explain`'s "is it running?": it was, a moment ago.
            anyhow::anyhow!("the API at {} does not accept connections", api.shown_url())
        } else {
            api.explain(self.error).await
        };
        unknown_fate(&last.to_string(), self.tries, &self.seen, key, what)
    }
}

/// The error of an `add` that gave up after `tries` tries, the last failing
/// with `last`, at least one of them with its fate unknown; `seen` says
/// what they met.
fn unknown_fate(last: &str, tries: usize, seen: &Seen, key: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "gave up after {tries} tries ({last}); {}, so {what} may have been \
         created all the same: once the API answers, run this command again with \
         --idempotency-key {key}, which answers with what was created instead of creating it twice",
        seen.words(tries)
    )
}

/// Sends `send(key)`, repeating it with the same key while its fate is
/// unknown. Each repeat is announced on standard error.
pub async fn with_same_key<T, F, Fut>(api: &Api, key: &str, mut send: F) -> Result<T, GaveUp>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut fate_unknown_before = false;
    let mut tries = 0;
    let mut seen = Seen::default();
    for pause in PAUSES {
        tries += 1;
        match send(key.to_owned()).await {
            Err(error) if worth_repeating(&error, fate_unknown_before) => {
                fate_unknown_before = true;
                seen.count(&error);
                let why = if is_connect(&error) {
                    // Not `explain`'s "is it running?": it was a moment ago.
                    anyhow::anyhow!(
                        "the API at {} does not accept connections (restarting?)",
                        api.shown_url()
                    )
                } else {
                    api.explain(error).await
                };
                eprintln!(
                    "savestream: {why}: trying again in {} s with the same Idempotency-Key, so nothing is created twice",
                    pause.as_secs()
                );
                tokio::time::sleep(pause).await;
            }
            Ok(answer) => return Ok(answer),
            Err(error) => {
                seen.count(&error);
                return Err(GaveUp {
                    error,
                    tries,
                    fate_unknown: fate_unknown_before,
                    seen,
                });
            }
        }
    }
    tries += 1;
    send(key.to_owned()).await.map_err(|error| {
        seen.count(&error);
        GaveUp {
            // The last try's own fate counts too: a 503 or a lost answer.
            fate_unknown: fate_unknown_before || fate_unknown(&error),
            error,
            tries,
            seen,
        }
    })
}

/// Whether a failed create is sent again: when it may have been stored, or
/// may succeed if sent again; and a refused connection once an earlier
/// try's fate is unknown (the API restarting), since giving up then would
/// leave that fate unknown.
fn worth_repeating(error: &ClientError, fate_unknown_before: bool) -> bool {
    fate_unknown(error) || (fate_unknown_before && is_connect(error))
}

/// Whether the request failed to connect (nothing listens, or no connection
/// could be made in time): it never reached the API.
fn is_connect(error: &ClientError) -> bool {
    use savestream_client::Error;
    matches!(error, Error::CommunicationError(error) if error.is_connect())
}

/// Whether a failed create may have been stored, or may succeed if sent again.
fn fate_unknown(error: &ClientError) -> bool {
    use savestream_client::Error;
    match error {
        Error::ErrorResponse(response) => response.status() == 503,
        // A proxy in front of the API that could not reach it.
        Error::UnexpectedResponse(response) => matches!(response.status().as_u16(), 502..=504),
        Error::CommunicationError(error) | Error::ResponseBodyError(error) => !error.is_connect(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a request to a loopback port where nothing listens.
    async fn refused() -> ClientError {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = reqwest::get(url).await.expect_err("nothing listens");
        assert!(error.is_connect(), "{error}");
        savestream_client::Error::CommunicationError(error)
    }

    #[test]
    fn keys_are_checked_as_the_api_checks_them_and_batches_get_their_own() {
        assert_eq!(
            check_key("savestream-add-d4mq2nk0h9pc73b0qpag").unwrap(),
            "savestream-add-d4mq2nk0h9pc73b0qpag"
        );
        for bad in [
            "",
            "   ",
            "tab\there",
            "new\nline",
            "caf\u{e9}",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(batch_key("k", 0), "k");
        assert_eq!(batch_key("k", 1), "k/2");
        assert!(batch_key(&"k".repeat(MAX_KEY_LEN), 999).len() <= 255);
    }

    #[test]
    fn giving_up_after_an_unknown_fate_says_the_task_may_exist_and_gives_the_key() {
        let seen = Seen {
            lost: 1,
            refused: 4,
            ..Seen::default()
        };
        let message = unknown_fate(
            "the API at http://127.0.0.1:9 does not accept connections",
            5,
            &seen,
            "savestream-add-d4mq2nk0h9pc73b0qpag",
            "the task",
        )
        .to_string();
        assert_eq!(
            message,
            "gave up after 5 tries (the API at http://127.0.0.1:9 does not accept connections); \
             the connection was lost or timed out after the request was sent on 1 try, \
             the API refused the connection on 4 tries, so the task may have been created all the same: \
             once the API answers, run this command again with \
             --idempotency-key savestream-add-d4mq2nk0h9pc73b0qpag, which answers with what was \
             created instead of creating it twice"
        );
    }

    #[test]
    fn what_the_tries_met_is_said_as_it_happened() {
        let every_503 = Seen {
            unavailable: 5,
            ..Seen::default()
        };
        assert!(
            every_503
                .words(5)
                .starts_with("the API answered 503 on every try: its task store (Redis)"),
            "{}",
            every_503.words(5)
        );
        let then_refused = Seen {
            unavailable: 2,
            refused: 3,
            ..Seen::default()
        };
        let words = then_refused.words(5);
        assert!(words.starts_with("the API answered 503 to 2 tries ("), "{words}");
        assert!(
            words.ends_with("the API refused the connection on 3 tries"),
            "{words}"
        );
        assert!(!words.contains("lost"), "{words}");
        let lost = Seen {
            lost: 5,
            ..Seen::default()
        };
        assert_eq!(
            lost.words(5),
            "the connection was lost or timed out after the request was sent on every try"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_repeated_only_after_a_try_whose_fate_is_unknown() {
        assert!(!worth_repeating(&refused().await, false), "the first try");
        assert!(
            worth_repeating(&refused().await, true),
            "after a lost answer or a 503"
        );
    }
}
