//! Repeating a create whose fate is unknown. A 503 from the API (Redis did
//! not answer in time), a timeout or a connection lost mid-request all
//! leave open whether the tasks were stored. `add` sends each request with
//! an `Idempotency-Key` of its own and repeats it, with the same key, a few
//! times over about fifteen seconds (long enough for Redis or the API to
//! restart): a repeat of a create that was stored answers with the first
//! task instead of making another, so nothing is created twice and nothing
//! is lost. A request that never left (nothing listens) is not repeated:
//! its answer is certain, and the user should hear it at once.

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
    for pause in PAUSES {
        match send(key.clone()).await {
            Err(error) if fate_unknown(&error) => {
                let why = api.explain(error).await;
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
