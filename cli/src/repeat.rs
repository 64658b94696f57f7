//! Repeating a create whose fate is unknown. A 503 from the API (Redis did
//! not answer in time), a timeout or a connection lost mid-request all
//! leave open whether the tasks were stored. `add` sends each request with
//! an `Idempotency-Key` of its own and repeats it, with the same key, up to
//! four more times, 1, 2, 4 and 8 s apart (15 s of pauses, long enough for
//! Redis or the API to restart): a repeat of a create that was stored
//! answers with the first task instead of making another, so nothing is
//! created twice and nothing is lost.
//!
//! Each try may itself take up to the request timeout (`api.rs`) when the
//! API does not answer, so `add` gives up between 15 s and about 2¾
//! minutes after the first try.
//!
//! A request that never left (nothing listens) is not repeated when it is
//! the first: its answer is certain, and the user should hear it at once.
//! Once a try's fate is unknown, though, a refused connection is what an
//! API restarting looks like, and it is repeated too.

use std::future::Future;
use std::time::Duration;

use crate::api::{Api, ClientError};

/// The pauses before each repeat.
const PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// A fresh key for one request and its repeats.
pub fn new_key() -> String {
    format!("savestream-add-{}", xid::new())
}

/// Sends `send(key)`, repeating it with the same key while its fate is
/// unknown. Each repeat is announced on standard error.
pub async fn with_same_key<T, F, Fut>(api: &Api, mut send: F) -> Result<T, ClientError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let key = new_key();
    let mut fate_unknown_before = false;
    for pause in PAUSES {
        match send(key.clone()).await {
            Err(error) if worth_repeating(&error, fate_unknown_before) => {
                fate_unknown_before = true;
                let why = if is_connect(&error) {
                    // Not `explain`'s "is it running?": it was a moment ago.
                    anyhow::anyhow!(
                        "the API at {} does not accept connections (restarting?)",
                        api.base_url()
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
            answer => return answer,
        }
    }
    send(key).await
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

    #[tokio::test]
    async fn a_refused_connection_is_repeated_only_after_a_try_whose_fate_is_unknown() {
        assert!(!worth_repeating(&refused().await, false), "the first try");
        assert!(
            worth_repeating(&refused().await, true),
            "after a lost answer or a 503"
        );
    }
}
