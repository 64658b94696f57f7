//! [`Api`]: the generated `savestream-client` for one API, and the one place
//! where whatever goes wrong talking to it becomes a one-line error: the
//! API's own `error` text when it answered, and what to do when it did not.
//! Every message names the API by its URL with any password in it replaced
//! by `***` ([`redact`]): an error line ends up in logs and bug reports.

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

/// How to give the client a token, after the API's 401 to a request without one.
const NO_TOKEN_HINT: &str = "give savestream the token with --token or SAVESTREAM_TOKEN \
     (SAVESTREAM_API_TOKEN is the server's variable, which this client does not read)";

/// The token as given, without surrounding whitespace (the CR that
/// `SAVESTREAM_TOKEN=$(cat token.txt)` keeps from a file with CRLF lines, a
/// newline pasted with it). A control character inside it, which no HTTP
/// header can carry, is refused rather than sending no token at all; the
/// error never shows the token.
fn clean_token(token: &str) -> anyhow::Result<&str> {
    let token = token.trim();
    if token.chars().any(char::is_control) {
        return Err(usage(
            "the token given with --token or SAVESTREAM_TOKEN has a control character inside it, \
             which an HTTP header cannot carry: give the server's [api] token alone",
        ));
    }
    Ok(token)
}

/// `url` with `***` in place of the password of its user info
/// (`http://admin:***@host`), as given otherwise. Done on the text, not on
/// a parsed URL, so that it also hides the password of a `--url` that does
/// not parse (`admin:hunter2@host:8080`, without a scheme) and shows a
/// valid one exactly as the user wrote it.
pub fn redact(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| after_scheme + at);
    let authority = &url[after_scheme..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    let password_start = after_scheme + colon + 1;
    let password_end = after_scheme + at;
    format!("{}***{}", &url[..password_start], &url[password_end..])
}

/// The generated client's error type for every operation.
pub type ClientError = savestream_client::Error<ErrorResponse>;

pub struct Api {
    client: Client,
    /// The same token, without an overall timeout, for event streams that
    /// last as long as a download.
    streaming: reqwest::Client,
    base_url: String,
    /// `base_url` as messages show it: without its password.
    shown_url: String,
    /// `:PASSWORD@` as the URL's password appears in reqwest's own error
    /// texts, when it has one, for [`Api::scrub`].
    password_marker: Option<String>,
    /// Whether a token is sent: a 401 without one says how to give it.
    token_sent: bool,
}

impl Api {
    pub fn new(url: &str, token: &str) -> anyhow::Result<Api> {
        let base_url = url.trim().trim_end_matches('/').to_owned();
        let shown_url = redact(&base_url);
        let parsed = reqwest::Url::parse(&base_url).map_err(|error| {
            usage(format_args!(
                "--url (SAVESTREAM_URL) `{shown_url}` is not a URL ({error}): give one such as {DEFAULT_URL}"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(usage(format_args!(
                "--url (SAVESTREAM_URL) `{shown_url}` is not an http or https URL: give one such as {DEFAULT_URL}"
            )));
        }
        let token = clean_token(token)?;
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
            password_marker: parsed.password().map(|password| format!(":{password}@")),
            base_url,
            shown_url,
            token_sent: !token.is_empty(),
        })
    }

    /// The API's URL as messages show it: without a trailing slash, and
    /// with `***` for any password in it.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// `text` (an error's causes, which may quote the request's URL) with
    /// the URL's password replaced by `***`.
    fn scrub(&self, text: String) -> String {
        match &self.password_marker {
            Some(marker) => text.replace(marker, ":***@"),
            None => text,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The error of a failed call, in one line.
    pub async fn explain(&self, error: ClientError) -> anyhow::Error {
        match error {
            savestream_client::Error::ErrorResponse(response) => {
                let status = response.status();
                self.with_hint(status, response.into_inner().error)
            }
            savestream_client::Error::CommunicationError(error)
            | savestream_client::Error::ResponseBodyError(error)
            | savestream_client::Error::InvalidUpgrade(error) => self.explain_transport(&error),
            savestream_client::Error::UnexpectedResponse(response) => self.explain_unexpected(response).await,
            savestream_client::Error::InvalidResponsePayload(_, error) => anyhow!(
                "the API at {} sent an answer this client cannot read ({error}): is it a savestream API of the same version?",
                self.shown_url
            ),
            savestream_client::Error::InvalidRequest(message) | savestream_client::Error::Custom(message) => {
                anyhow!("{message}")
            }
        }
    }

    /// A transport error: nothing listens, it timed out, or the connection broke.
    pub fn explain_transport(&self, error: &reqwest::Error) -> anyhow::Error {
        if error.is_connect() {
            return self.explain_connect(error);
        }
        if error.is_timeout() {
            return anyhow!(
                "the API at {} did not answer in time: is it overloaded, or is Redis down? check `curl {}/ready`",
                self.shown_url,
                self.shown_url
            );
        }
        anyhow!(
            "lost the connection to the API at {} ({})",
            self.shown_url,
            self.scrub(causes(error))
        )
    }

    /// A connection that could not be made. Only a refused one means
    /// nothing listens there ("is it running?"); anything else (a name that
    /// does not resolve, a TLS handshake that failed, no answer in time)
    /// says what went wrong.
    fn explain_connect(&self, error: &reqwest::Error) -> anyhow::Error {
        if is_refused(error) {
            return self.unreachable();
        }
        if error.is_timeout() {
            return anyhow!(
                "cannot reach the API at {}: no connection within {} s: is the address right, and does no firewall drop it?",
                self.shown_url,
                CONNECT_TIMEOUT.as_secs()
            );
        }
        let causes = self.scrub(causes(error));
        if self.shown_url.starts_with("https:") && is_tls(error) {
            // rustls's words for a server that answered in plain HTTP.
            let hint = if causes.contains("InvalidContentType") {
                format!(
                    ": does it serve plain http? then use --url {}",
                    self.shown_url.replacen("https:", "http:", 1)
                )
            } else {
                String::new()
            };
            return anyhow!(
                "cannot reach the API at {}: the TLS handshake failed ({causes}){hint}",
                self.shown_url
            );
        }
        anyhow!("cannot reach the API at {}: {causes}", self.shown_url)
    }

    pub fn unreachable(&self) -> anyhow::Error {
        anyhow!(
            "cannot reach the API at {}: is it running? start it with `savestream up`",
            self.shown_url
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
            Some(error) => self.with_hint(status, error),
            None => anyhow!(
                "the API at {} answered {status}, which this client does not expect: is it a savestream API?",
                self.shown_url
            ),
        }
    }

    /// The API's own words for a refusal, and for a 401 to a request that
    /// carried no token, how to give this client one.
    fn with_hint(&self, status: reqwest::StatusCode, error: String) -> anyhow::Error {
        if status == reqwest::StatusCode::UNAUTHORIZED && !self.token_sent {
            return anyhow!("{error}; {NO_TOKEN_HINT}");
        }
        anyhow!("{error}")
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

/// `error` and its causes, outermost first. An I/O error's cause is the
/// error it wraps (`get_ref`): its own `source` skips that one, and the
/// kind of a TLS failure is only on it.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| {
        match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        }
    })
}

/// Whether any error in `error`'s chain is an I/O error of `kind`.
fn has_io_kind(error: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    chain(error).any(|error| {
        error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Whether `error` is a refused connection: nothing listens at the address.
pub fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    has_io_kind(error, std::io::ErrorKind::ConnectionRefused)
}

/// Whether a connection failed in its TLS handshake: rustls's errors reach
/// reqwest as an I/O error of kind `InvalidData` wrapping them (a
/// certificate not trusted, a server that does not speak TLS).
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    has_io_kind(error, std::io::ErrorKind::InvalidData)
}

/// `error`'s causes in one line, without reqwest's own "error sending
/// request for url (...)", which names what the message already names, and
/// hyper's "client error (Connect)", which says nothing more.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in chain(error).skip(1) {
        let text = cause.to_string();
        if !text.starts_with("client error (") && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        return error.to_string();
    }
    parts.join(": ")
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

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(
            redact("http://admin:hunter2@host:8080/x"),
            "http://admin:***@host:8080/x"
        );
        assert_eq!(
            redact("admin:hunter2@host:8080"),
            "admin:***@host:8080",
            "no scheme"
        );
        assert_eq!(redact("http://a:b:c@d@host"), "http://a:***@host");
        for unchanged in [
            "http://admin@host",
            "http://host:8080/a@b:c",
            "http://host?x=a:b@c",
        ] {
            assert_eq!(redact(unchanged), unchanged);
        }
        for url in ["admin:hunter2@host:8080", "ftp://admin:hunter2@host"] {
            let error = Api::new(url, "").err().unwrap().to_string();
            assert!(
                !error.contains("hunter2") && error.contains("admin:***@"),
                "{error}"
            );
        }
        let api = Api::new("http://admin:hunter2@127.0.0.1:9/", "").unwrap();
        assert_eq!(api.shown_url(), "http://admin:***@127.0.0.1:9");
        assert_eq!(
            api.scrub("error sending request for url (http://admin:hunter2@127.0.0.1:9/x)".into()),
            "error sending request for url (http://admin:***@127.0.0.1:9/x)"
        );
    }

    #[test]
    fn a_token_loses_surrounding_whitespace_and_one_with_a_control_character_inside_is_refused() {
        assert_eq!(clean_token("secret\r").unwrap(), "secret");
        assert_eq!(clean_token(" \tsecret \r\n").unwrap(), "secret");
        assert_eq!(clean_token("  ").unwrap(), "", "blank is no token");
        for inner in ["sec\rret", "sec\nret", "sec\tret", "sec\u{7f}ret"] {
            let error = clean_token(inner).unwrap_err();
            let message = error.to_string();
            assert!(error.is::<crate::exit::Usage>(), "{message}");
            assert!(
                message.contains("--token") && message.contains("SAVESTREAM_TOKEN"),
                "{message}"
            );
            assert!(!message.contains("sec"), "the token is never shown: {message}");
        }
        assert!(Api::new(DEFAULT_URL, " secret\r").unwrap().token_sent);
        assert!(!Api::new(DEFAULT_URL, "\r\n").unwrap().token_sent);
    }

    #[tokio::test]
    async fn a_connection_lost_mid_request_names_its_cause() {
        // An API that reads the request and closes without an answer.
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
        });
        let api = Api::new(&url, "").unwrap();

        let error = api.client().list_workers().send().await.expect_err("no answer");
        let message = api.explain(error).await.to_string();

        assert!(
            message.starts_with(&format!("lost the connection to the API at {url} (")),
            "{message}"
        );
        assert!(!message.contains("error sending request"), "{message}");
        assert!(
            message.contains("closed") || message.contains("reset"),
            "{message}"
        );
    }
}
