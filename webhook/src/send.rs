//! One HTTP try of a delivery, and what the receiver answered.
//!
//! [`Sender`] owns the reqwest client, the URL, the bearer token and the
//! [`Signer`]; it builds the request (body and Standard Webhooks headers),
//! bounds it by the per-try timeout, reads at most `max_response_body` bytes
//! of the answer and throws them away. It decides nothing about retries:
//! [`Answer`] reports the status and `Retry-After`, and the dispatcher
//! decides. Redirects are not followed: a receiver that moved answers 3xx,
//! which is retried like any other non-2xx until the config is fixed, and
//! the bearer token never travels to a host it was not configured for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use url::Url;

use savestream_shared::retry_after::parse_retry_after;

use crate::error::WebhookError;
use crate::options::DispatcherOptions;
use crate::signature::Signer;

const USER_AGENT_VALUE: &str = concat!("savestream-webhook/", env!("CARGO_PKG_VERSION"));

/// What one try got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, `None` when no response came (connection refused,
    /// timeout, reset).
    pub status: Option<u16>,
    /// `Retry-After` of a 429 or 503, as a delay from now.
    pub retry_after: Option<Duration>,
    /// Why the try failed, empty on 2xx. Never holds the URL, token or secret.
    pub error: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|status| (200..300).contains(&status))
    }
}

/// Debug shows the receiver's host only (see [`Sender::host`]): the URL
/// may carry credentials in its user info, path or query.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    url: Url,
    /// `Bearer <token>`, marked sensitive so no reqwest debug output shows it.
    authorization: Option<HeaderValue>,
    signer: Option<Signer>,
    max_response_body: usize,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Sender")
            .field("host", &self.host())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[redacted]"),
            )
            .field("signed", &self.signer.is_some())
            .field("max_response_body", &self.max_response_body)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender to `url` (http or https only). `token` empty sends no
    /// `Authorization`; `signer` `None` sends no `webhook-signature`.
    pub fn new(
        url: Url,
        token: &str,
        signer: Option<Signer>,
        options: &DispatcherOptions,
    ) -> Result<Sender, WebhookError> {
        check_url(&url)?;
        if !token.is_empty() && (!url.username().is_empty() || url.password().is_some()) {
            // reqwest sends the URL's user info as `Authorization: Basic`,
            // and the token would add `Authorization: Bearer`: two headers
            // of a kind a request may carry once, which nginx answers with
            // 400 and most frameworks read as the first (the Basic one), so
            // every delivery would fail until it is given up.
            return Err(WebhookError::UnusableUrl {
                problem: "it carries credentials (user:password@) while [api] token is set, and the                           receiver would get two Authorization headers (Basic from the URL, Bearer from                           the token); remove the credentials from the URL and have the receiver check                           the Bearer token or the webhook-signature instead"
                    .into(),
            });
        }
        // url's parser accepts what the HTTP stack refuses to send (a URI
        // of 64 KiB or more): every try would fail with "not a valid Uri"
        // for a day, so it is refused at start instead.
        if http::Uri::try_from(url.as_str()).is_err() {
            return Err(WebhookError::UnusableUrl {
                problem: format!(
                    "the HTTP client cannot send a request to it ({} bytes long, where URIs stop at \
                     65,534): shorten it",
                    url.as_str().len()
                ),
            });
        }
        let authorization = if token.is_empty() {
            None
        } else {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| WebhookError::InvalidOptions("api.token is not a valid header value".into()))?;
            value.set_sensitive(true);
            Some(value)
        };
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Sender {
            client,
            url,
            authorization,
            signer,
            max_response_body: options.max_response_body,
        })
    }

    /// The receiver's host, the only part of the URL that may be logged.
    pub fn host(&self) -> String {
        match (self.url.host_str(), self.url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => String::new(),
        }
    }

    /// Sends one try of `body` as `webhook_id`, timestamped now.
    pub async fn send(&self, webhook_id: &str, body: &str) -> Answer {
        let timestamp = unix_seconds();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body.to_owned());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(signer) = &self.signer {
            request = request.header("webhook-signature", signer.sign(webhook_id, timestamp, body));
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return Answer {
                    status: None,
                    retry_after: None,
                    error: describe(error),
                }
            }
        };
        let status = response.status();
        let retry_after =
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse_retry_after(value, SystemTime::now()))
            } else {
                None
            };
        // The status decides the outcome; the body is read only so that a
        // well-behaved keep-alive connection can be reused, up to the cap,
        // and a failure to read it changes nothing.
        let mut read = 0usize;
        while read < self.max_response_body {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        drop(response);
        Answer {
            status: Some(status.as_u16()),
            retry_after,
            error: if status.is_success() {
                String::new()
            } else {
                format!("the receiver answered {status}")
            },
        }
    }
}

/// Refuses a URL that is not http or https.
pub fn check_url(url: &Url) -> Result<(), WebhookError> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(WebhookError::InvalidUrl {
            scheme: other.to_owned(),
        }),
    }
}

/// A reqwest error and its causes, without the URL (it may hold credentials).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = kind.to_owned();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_s_debug_shows_the_host_and_no_credential() {
        let options = DispatcherOptions::from_config(&savestream_shared::config::Config::default());
        let signer = || Some(Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        let with_user_info =
            Url::parse("https://hook-user:hook-password@example.com:8443/hook/path-secret?key=query-secret")
                .unwrap();
        let with_token = Url::parse("https://example.com:8443/hook/path-secret?key=query-secret").unwrap();
        let senders = [
            Sender::new(with_user_info, "", signer(), &options).unwrap(),
            Sender::new(with_token, "the-api-token", signer(), &options).unwrap(),
        ];

        for sender in senders {
            let shown = format!("{sender:?}");

            assert!(shown.contains("example.com:8443"), "{shown}");
            for secret in [
                "hook-user",
                "hook-password",
                "path-secret",
                "query-secret",
                "the-api-token",
                "MfKQ9r8",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
    }

    #[test]
    fn a_url_with_credentials_is_refused_while_a_token_is_set_as_it_would_send_two_authorizations() {
        let options = DispatcherOptions::from_config(&savestream_shared::config::Config::default());
        let url = Url::parse("https://hook-user:hook-password@example.com/hook").unwrap();

        let error = Sender::new(url, "the-api-token", None, &options).unwrap_err();

        assert!(matches!(error, WebhookError::UnusableUrl { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("two Authorization headers"), "{message}");
        for secret in ["hook-user", "hook-password", "the-api-token"] {
            assert!(!message.contains(secret), "{secret} in {message}");
        }
    }

    #[test]
    fn a_url_too_long_to_send_is_refused_at_start() {
        let options = DispatcherOptions::from_config(&savestream_shared::config::Config::default());
        let url = Url::parse(&format!("https://example.com/{}", "a".repeat(70_000))).unwrap();

        let error = Sender::new(url, "", None, &options).unwrap_err();

        assert!(matches!(error, WebhookError::UnusableUrl { .. }), "{error}");
        assert!(error.to_string().contains("shorten it"), "{error}");
        let fits = Url::parse(&format!("https://example.com/{}", "a".repeat(60_000))).unwrap();
        assert!(Sender::new(fits, "", None, &options).is_ok());
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        assert!(check_url(&Url::parse("https://example.com/hook").unwrap()).is_ok());
        assert!(check_url(&Url::parse("http://127.0.0.1:9/hook").unwrap()).is_ok());
        let error = check_url(&Url::parse("ftp://example.com/hook").unwrap()).unwrap_err();
        assert!(matches!(error, WebhookError::InvalidUrl { ref scheme } if scheme == "ftp"));
    }
}
