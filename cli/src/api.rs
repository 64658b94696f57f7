//! [`Api`]: the generated `savestream-client` for one API, and the one place
//! where whatever goes wrong talking to it becomes a one-line error: the
//! API's own `error` text when it answered, and what to do when it did not.

use std::time::Duration;

use anyhow::anyhow;
use savestream_client::types::ErrorResponse;
use savestream_client::Client;

use crate::exit::usage;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How long to wait for a connection: a local or LAN API answers in
/// milliseconds, so a wait this long means nothing listens there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an event stream may stay silent: the API sends a keep-alive
/// comment every 15 seconds, so this much silence means the connection died.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// The generated client's error type for every operation.
pub type ClientError = savestream_client::Error<ErrorResponse>;

pub struct Api {
    client: Client,
    /// The same token, without an overall timeout, for event streams that
    /// last as long as a download.
    streaming: reqwest::Client,
    base_url: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> anyhow::Result<Api> {
        let base_url = url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|error| {
            usage(format_args!(
                "--url (SAVESTREAM_URL) `{url}` is not a URL ({error}): give one such as {DEFAULT_URL}"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(usage(format_args!(
                "--url (SAVESTREAM_URL) `{url}` is not an http or https URL: give one such as {DEFAULT_URL}"
            )));
        }
        let build_error = |error: reqwest::Error| anyhow!("cannot set up an HTTP client: {error}");
        let http = savestream_client::http_client_builder(token)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(build_error)?;
        let streaming = savestream_client::http_client_builder(token)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STREAM_READ_TIMEOUT)
            .build()
            .map_err(build_error)?;
        Ok(Api {
            client: Client::new_with_client(&base_url, http),
            streaming,
            base_url,
        })
    }

    /// The API's URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The error of a failed call, in one line.
    pub async fn explain(&self, error: ClientError) -> anyhow::Error {
        match error {
            savestream_client::Error::ErrorResponse(response) => anyhow!("{}", response.into_inner().error),
            savestream_client::Error::CommunicationError(error)
            | savestream_client::Error::ResponseBodyError(error)
            | savestream_client::Error::InvalidUpgrade(error) => self.explain_transport(&error),
            savestream_client::Error::UnexpectedResponse(response) => self.explain_unexpected(response).await,
            savestream_client::Error::InvalidResponsePayload(_, error) => anyhow!(
                "the API at {} sent an answer this client cannot read ({error}): is it a savestream API of the same version?",
                self.base_url
            ),
            savestream_client::Error::InvalidRequest(message) | savestream_client::Error::Custom(message) => {
                anyhow!("{message}")
            }
        }
    }

    /// A transport error: nothing listens, it timed out, or the connection broke.
    pub fn explain_transport(&self, error: &reqwest::Error) -> anyhow::Error {
        if error.is_connect() {
            return self.unreachable();
        }
        if error.is_timeout() {
            return anyhow!(
                "the API at {} did not answer in time: is it overloaded, or is Redis down? check `curl {}/ready`",
                self.base_url,
                self.base_url
            );
        }
        anyhow!("lost the connection to the API at {} ({error})", self.base_url)
    }

    pub fn unreachable(&self) -> anyhow::Error {
        anyhow!(
            "cannot reach the API at {}: is it running? start it with `savestream up`",
            self.base_url
        )
    }

    /// An answer the spec does not list (an older server, a proxy in
    /// between): its JSON `error` when it has one, else its status.
    pub async fn explain_unexpected(&self, response: reqwest::Response) -> anyhow::Error {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
        {
            Some(error) => anyhow!("{error}"),
            None => anyhow!(
                "the API at {} answered {status}, which this client does not expect: is it a savestream API?",
                self.base_url
            ),
        }
    }

    /// Opens a task's live event stream (`Accept: text/event-stream`),
    /// after `last_event_id` when given; `None` when the API answers 204: the
    /// task has ended and nothing comes after `last_event_id`. The generated
    /// client reads only the JSON form of this operation, so the stream is
    /// requested with the same token on a client without a request timeout.
    pub async fn open_event_stream(
        &self,
        task_id: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Option<reqwest::Response>> {
        let url = format!("{}/api/v1/tasks/{task_id}/events", self.base_url);
        let mut request = self
            .streaming
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.explain_transport(&error))?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.explain_unexpected(response).await);
        }
        Ok(Some(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_trailing_slashes_dropped() {
        let api = Api::new("http://127.0.0.1:8080/", "").unwrap();
        assert_eq!(api.base_url, "http://127.0.0.1:8080");
        let error = Api::new("127.0.0.1:8080", "").err().unwrap().to_string();
        assert!(error.contains("is not"), "{error}");
        let error = Api::new("ftp://example.com", "").err().unwrap().to_string();
        assert!(error.contains("not an http or https URL"), "{error}");
    }
}
