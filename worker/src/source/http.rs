//! The `http` source: direct http(s) links, downloaded with reqwest.
//!
//! It owns everything about talking to a web server: timeouts, redirects
//! (followed up to [`MAX_REDIRECTS`], each hop checked by the SSRF guard in
//! [`super::ssrf`]), the file name (Content-Disposition, else the URL's last
//! path segment), the size (Content-Length, or a 206's Content-Range total), the
//! [`validator`] (strong ETag, else Last-Modified), resuming with
//! `Range: bytes=N-` and `If-Range: <validator>` (only from an answer that
//! is the whole rest of the file, never of a file whose size changed, and
//! never of one the server says was replaced: it answers 200 with the whole
//! new file, and the download starts over), a server that answers even a
//! GET without `Range` with part of the file (fetched in parts, see
//! [`HttpSource::whole_file`]), and turning HTTP statuses (including
//! successes that carry no file, such as 204) and transport failures into
//! [`SourceError`]s that say whether to retry and what to do.
//!
//! A task's first attempt makes one GET: [`Source::resolve_and_open`] reads
//! the file's name, size and validator from its answer and hands the answer
//! over as the download, so single-use (signed, one-time) links and
//! resources that differ per request are saved from the response that
//! described them. Only a resumed attempt, or one that starts over, asks
//! again ([`Source::open`]).
//!
//! Messages show links without their query string or user info, which often
//! carry credentials (signed URLs).

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use percent_encoding::percent_decode_str;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_DISPOSITION, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE,
    LAST_MODIFIED, RANGE, RETRY_AFTER,
};
use reqwest::{redirect, Response, StatusCode};
use savestream_shared::config::HttpConfig;
use savestream_shared::retry_after::parse_retry_after;
use savestream_shared::task::Task;
use url::Url;

use super::ssrf::{check_url, GuardedResolver, Refused};
use super::{Download, RemoteFile, Resolved, Source, SourceError};

/// The longest `Retry-After` a download honours. A server asking for more
/// is most likely misconfigured, and a task should not sit out of sight
/// for days on its word: it is tried again after this, as a counted retry.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// How many redirects one request follows.
pub const MAX_REDIRECTS: usize = 10;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for data before the download counts as stalled.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest validator kept; a longer header is taken for none (it would
/// only bloat the task's hash and every `resolved` event).
pub const MAX_VALIDATOR_LENGTH: usize = 512;

/// A redirect the policy refused; found again in the error's source chain.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("it redirected more than {MAX_REDIRECTS} times")]
    TooMany,
    #[error("it redirected to a {0}: link, and only http and https are followed")]
    Scheme(String),
}

/// Whether to follow a redirect to `url` after `visited` URLs (the first
/// request counts): http(s) only, at most [`MAX_REDIRECTS`] hops, and never
/// to an address the SSRF guard refuses.
fn check_redirect(
    url: &Url,
    visited: usize,
    allow_private_networks: bool,
) -> Result<(), Box<dyn StdError + Send + Sync>> {
    if visited > MAX_REDIRECTS {
        return Err(Box::new(RedirectRefused::TooMany));
    }
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Box::new(RedirectRefused::Scheme(url.scheme().to_owned())));
    }
    check_url(url, allow_private_networks)?;
    Ok(())
}

/// Downloads direct links.
#[derive(Clone, Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    allow_private_networks: bool,
}

impl HttpSource {
    pub fn new(config: &HttpConfig) -> Result<HttpSource, reqwest::Error> {
        let allow_private_networks = config.allow_private_networks;
        let policy = redirect::Policy::custom(move |attempt| {
            match check_redirect(attempt.url(), attempt.previous().len(), allow_private_networks) {
                Ok(()) => attempt.follow(),
                Err(error) => attempt.error(error),
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("savestream/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(policy)
            // A proxy would resolve names itself, out of the guard's sight.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private_networks,
            }))
            .build()?;
        Ok(HttpSource {
            client,
            allow_private_networks,
        })
    }

    /// The task's link, checked: http or https, and no refused literal IP.
    fn link(&self, task: &Task) -> Result<Url, SourceError> {
        let url = Url::parse(task.link.trim())
            .map_err(|error| SourceError::permanent(format!("the link is not a valid URL: {error}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(SourceError::permanent(format!(
                "{} is not an http or https link",
                display_url(&url)
            )));
        }
        check_url(&url, self.allow_private_networks)
            .map_err(|refused| SourceError::permanent(refused.to_string()))?;
        Ok(url)
    }

    /// Sends a GET, from `offset` when it is not 0 (with `If-Range` when
    /// given: a server whose file no longer matches it answers 200 with the
    /// whole file instead of the range), and checks the status: 200 and 206
    /// carry bytes of the file (and a 416 answers a range, when one was
    /// asked for); any other answer, even a success such as 204, is an error.
    async fn get(
        &self,
        url: &Url,
        offset: u64,
        if_range: Option<HeaderValue>,
    ) -> Result<Response, SourceError> {
        let mut request = self.client.get(url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
            if let Some(validator) = if_range {
                request = request.header(IF_RANGE, validator);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(url, &error))?;
        let status = response.status();
        if status == StatusCode::OK
            || status == StatusCode::PARTIAL_CONTENT
            || (offset > 0 && status == StatusCode::RANGE_NOT_SATISFIABLE)
        {
            return Ok(response);
        }
        let mut error = status_error(url, status);
        if let Some(wait) = asked_wait(&response) {
            error
                .message
                .push_str(&format!(" (it asks to wait {} s)", wait.as_secs()));
            error.retry_after = Some(wait);
        }
        Err(error)
    }
}

impl HttpSource {
    /// The download of the whole file from `response`, the answer to a GET
    /// without `Range` (see [`HttpSource::get`]). `known_size` is the size
    /// recorded for the task, the total when the answer does not tell one.
    ///
    /// A 200 is the file. A 206 is only part of it (RFC 9110, 15.3.7),
    /// even to a request that asked for no range: some servers and CDNs cap
    /// every answer (`Content-Range: bytes 0-1048575/3000000`), and taking
    /// its Content-Length for the file's size saved the first MiB of a
    /// 3 MB file as the whole of it. Such an answer is used as download
    /// managers such as aria2 use it: the file's size is Content-Range's
    /// total, the part is streamed, and the rest is asked for with
    /// `Range: bytes=N-` (with `If-Range: <validator>`), part after part,
    /// until the total is reached ([`in_parts`]). A 206 that is the whole
    /// file is the last part at once. Failing it instead (as a retryable
    /// error) would never end for such a server: every attempt would get
    /// the same first part. A 206 that does not start at byte 0, or does
    /// not say the file's size, cannot be put together into the file: a
    /// retryable error, as for a server that answers nonsense.
    fn whole_file(
        &self,
        url: &Url,
        response: Response,
        known_size: Option<u64>,
    ) -> Result<Download, SourceError> {
        if response.status() != StatusCode::PARTIAL_CONTENT {
            let total = response.content_length().or(known_size);
            return Ok(download(url, 0, total, response));
        }
        let header = content_range_header(&response);
        match parse_content_range(&header) {
            Some(ContentRange {
                first_last: Some((0, _)),
                total: Some(total),
            }) => {
                let first_validator = validator(response.headers());
                let first_part = body_stream(url, response);
                Ok(in_parts(
                    self.clone(),
                    url.clone(),
                    first_validator,
                    first_part,
                    total,
                ))
            }
            _ => Err(SourceError::retryable(format!(
                "{} answered a request for the whole file with part of it ({}), not saying which \
                 part of how large a file",
                display_url(url),
                shown_content_range(&header)
            ))),
        }
    }

    /// The answer to `Range: bytes=offset-`, the next part of a file sent in
    /// parts, as a stream of its bytes: a 206 from `offset`, of a file of
    /// `total` bytes, with the very validator of the first part (sent as
    /// `If-Range`, so that a file replaced since is not answered with a
    /// range of it). Anything else is a retryable error: the parts would
    /// not make one file, and the next attempt resumes (or starts over)
    /// from what was saved.
    async fn next_part(
        &self,
        url: &Url,
        offset: u64,
        total: u64,
        first_validator: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes, SourceError>>, SourceError> {
        let if_range = first_validator.and_then(|value| HeaderValue::from_str(value).ok());
        let response = self.get(url, offset, if_range).await?;
        let header = content_range_header(&response);
        let continues = response.status() == StatusCode::PARTIAL_CONTENT
            && validator(response.headers()).as_deref() == first_validator
            && matches!(
                parse_content_range(&header),
                Some(ContentRange {
                    first_last: Some((first, _)),
                    total: Some(part_total),
                }) if first == offset && part_total == total
            );
        if !continues {
            return Err(SourceError::retryable(format!(
                "{} sends the file in parts, and answered the request for the part from byte \
                 {offset} of {total} with {} ({}), which is not that part of the same file",
                display_url(url),
                response.status(),
                shown_content_range(&header)
            )));
        }
        Ok(body_stream(url, response))
    }
}

/// A response's `Content-Range`, empty when it has none (or not in ASCII).
fn content_range_header(response: &Response) -> String {
    response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn shown_content_range(header: &str) -> String {
    if header.is_empty() {
        "no Content-Range".to_owned()
    } else {
        format!("Content-Range: {header}")
    }
}

/// A file sent in parts (see [`HttpSource::whole_file`]): `first_part`'s
/// bytes, then each next part, asked for from the first byte not received
/// yet, until `total` bytes came. Counting the bytes received rather than
/// trusting each part's Content-Range continues a part that ends short
/// from where it ended.
fn in_parts(
    source: HttpSource,
    url: Url,
    first_validator: Option<String>,
    first_part: BoxStream<'static, Result<Bytes, SourceError>>,
    total: u64,
) -> Download {
    struct Parts {
        source: HttpSource,
        url: Url,
        first_validator: Option<String>,
        part: BoxStream<'static, Result<Bytes, SourceError>>,
        received: u64,
        total: u64,
    }
    let parts = Parts {
        source,
        url,
        first_validator: first_validator.clone(),
        part: first_part,
        received: 0,
        total,
    };
    let stream = futures::stream::try_unfold(parts, |mut parts| async move {
        loop {
            if let Some(chunk) = parts.part.try_next().await? {
                parts.received += chunk.len() as u64;
                return Ok(Some((chunk, parts)));
            }
            if parts.received >= parts.total {
                return Ok(None);
            }
            parts.part = parts
                .source
                .next_part(
                    &parts.url,
                    parts.received,
                    parts.total,
                    parts.first_validator.as_deref(),
                )
                .await?;
        }
    });
    Download {
        offset: 0,
        total: Some(total),
        validator: first_validator,
        stream: Box::pin(stream),
    }
}

/// The wait a 429 or 503 asked for with `Retry-After`, at most
/// [`MAX_RETRY_AFTER`]. The retry waits at least that long (an earlier one
/// would only be refused again) and still counts: a server that always
/// answers 429 must not keep a task forever.
fn asked_wait(response: &Response) -> Option<Duration> {
    if !matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now()).map(|wait| wait.min(MAX_RETRY_AFTER))
}

#[async_trait]
impl Source for HttpSource {
    /// The file, from the answer to a GET whose body is dropped unread (and
    /// its connection with it). An attempt uses [`Source::resolve_and_open`]
    /// and streams that body instead.
    async fn resolve(&self, task: &Task) -> Result<Vec<RemoteFile>, SourceError> {
        Ok(self.resolve_and_open(task).await?.files)
    }

    async fn resolve_and_open(&self, task: &Task) -> Result<Resolved, SourceError> {
        let url = self.link(task)?;
        // A GET rather than a HEAD: many servers and signed links answer
        // HEAD differently or not at all, and a one-time link would be used
        // up by it. Its answer describes the file and then is the download.
        let response = self.get(&url, 0, None).await?;
        let name = response
            .headers()
            .get(CONTENT_DISPOSITION)
            .and_then(|value| content_disposition_file_name(&String::from_utf8_lossy(value.as_bytes())))
            .or_else(|| url_file_name(response.url()))
            .or_else(|| url_file_name(&url));
        let mime = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let file_validator = validator(response.headers());
        // The size is the whole file's, which a 206 tells in Content-Range.
        let download = self.whole_file(&url, response, None)?;
        Ok(Resolved {
            files: vec![RemoteFile {
                name,
                size: download.total,
                mime,
                key: None,
                validator: file_validator,
            }],
            opened: Some(download),
        })
    }

    async fn open(&self, task: &Task, file: &RemoteFile, offset: u64) -> Result<Download, SourceError> {
        let url = self.link(task)?;
        // The recorded validator, as a header. One that cannot be sent (a
        // hand-edited hash) leaves no way to tell whether the bytes already
        // saved are of the file there now: the file is fetched whole.
        let if_range = file.validator.as_deref().map(HeaderValue::from_str).transpose();
        if let (true, Ok(if_range)) = (offset > 0, if_range) {
            // With `If-Range`, a 206 is a range of the very file whose
            // beginning was saved; a file replaced since (even by one of
            // the same size) comes back 200, whole, handled below as a
            // server that ignores Range. Without a recorded validator (a
            // task resolved before they were recorded, a server that gives
            // none) the range is asked for as it always was.
            let response = self.get(&url, offset, if_range).await?;
            let partial = response.status() == StatusCode::PARTIAL_CONTENT;
            if partial || response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_content_range);
                // Both answers tell the file's size: one other than the size
                // recorded for the task is another file, and fetching it
                // whole would only end at the wrong size.
                if let (Some(size), Some(total)) = (file.size, range.and_then(|range| range.total)) {
                    if total != size {
                        return Err(SourceError::changed_size(&task.link, size, Some(total)));
                    }
                }
                // A server that ignores If-Range but honours Range still
                // names the file it sends from: another validator than the
                // one recorded is another file.
                let same_file = match (validator(response.headers()), file.validator.as_deref()) {
                    (Some(now), Some(recorded)) => now == recorded,
                    _ => true,
                };
                if let Some(range) = range.filter(|_| partial && same_file) {
                    if is_rest_of_file(range, response.content_length(), offset, file.size) {
                        let total = range.total.or(file.size);
                        return Ok(download(&url, offset, total, response));
                    }
                }
            } else {
                // 200: the server ignores Range, or the file no longer
                // matches `If-Range`, and sends the whole file.
                let total = response.content_length().or(file.size);
                return Ok(download(&url, 0, total, response));
            }
            // 416, or a 206 that is not the rest of the file: fetch the file whole.
        }
        let response = self.get(&url, 0, None).await?;
        self.whole_file(&url, response, file.size)
    }
}

fn download(url: &Url, offset: u64, total: Option<u64>, response: Response) -> Download {
    // The version of the file this response carries: of a 200 after a
    // failed If-Range, the new file's.
    let version = validator(response.headers());
    Download {
        offset,
        total,
        validator: version,
        stream: body_stream(url, response),
    }
}

/// The bytes of `response`'s body, its failures as retryable errors.
fn body_stream(url: &Url, response: Response) -> BoxStream<'static, Result<Bytes, SourceError>> {
    let shown = display_url(url);
    let stream = response.bytes_stream().map_err(move |error| {
        if error.is_timeout() {
            SourceError::retryable(format!(
                "the download from {shown} stalled: no data for {} seconds",
                READ_TIMEOUT.as_secs()
            ))
        } else {
            SourceError::retryable(format!("the download from {shown} broke off: {}", causes(&error)))
        }
    });
    Box::pin(stream)
}

/// The error for a status that is not a success: 5xx, 408 and 429 are
/// worth retrying, any other answer means the link itself is wrong.
fn status_error(url: &Url, status: StatusCode) -> SourceError {
    let shown = display_url(url);
    let answered = format!("{shown} answered {status}");
    match status.as_u16() {
        429 => SourceError::retryable(format!("{answered}: the server is limiting requests")),
        408 => SourceError::retryable(format!("{answered}: the server timed out")),
        500..=599 => SourceError::retryable(format!("{answered}: the server is failing")),
        401 | 403 => SourceError::permanent(format!(
            "{answered}: the server refuses the download; check the link (it may have expired)"
        )),
        404 | 410 => SourceError::permanent(format!("{answered}: check the link")),
        416 => SourceError::permanent(format!("{answered}: the server cannot send this file")),
        // Successes that carry no file (only 200 and 206 do, see `get`):
        // saving their body would complete the task with an empty or a
        // wrong file. A 202 says the file is not ready yet.
        202 => SourceError::retryable(format!("{answered}: the file is not ready yet")),
        204 | 205 => SourceError::permanent(format!("{answered}: it sent no file; check the link")),
        200..=299 => SourceError::permanent(format!(
            "{answered}, which does not send a file (only 200 and 206 do): check the link"
        )),
        300..=399 => SourceError::permanent(format!("{answered} without a usable Location: check the link")),
        _ => SourceError::permanent(format!("{answered}: check the link")),
    }
}

/// The error for a request that got no answer.
fn transport_error(url: &Url, error: &reqwest::Error) -> SourceError {
    let shown = display_url(url);
    if let Some(refused) = find_cause::<Refused>(error) {
        return SourceError::permanent(refused.to_string());
    }
    if let Some(redirect) = find_cause::<RedirectRefused>(error) {
        return SourceError::permanent(format!("{shown} cannot be downloaded: {redirect}"));
    }
    if error.is_timeout() {
        return SourceError::retryable(format!("{shown} did not answer in time: {}", root_cause(error)));
    }
    if error.is_connect() {
        return SourceError::retryable(format!("cannot connect to {shown}: {}", root_cause(error)));
    }
    SourceError::retryable(format!("the request to {shown} failed: {}", causes(error)))
}

fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// The innermost cause, which says what happened ("Connection refused",
/// "failed to lookup address information") without the layers around it.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The messages of an error's sources, innermost last, without repeats:
/// reqwest's own message names no cause ("error sending request").
fn causes(error: &(dyn StdError + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut current = error.source();
    while let Some(error) = current {
        let message = error.to_string();
        if !messages.iter().any(|seen| seen.contains(&message)) {
            messages.push(message);
        }
        current = error.source();
    }
    if messages.is_empty() {
        error.to_string()
    } else {
        messages.join(": ")
    }
}

/// A link as it may be shown: no user info, no query, no fragment.
pub fn display_url(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

/// What identifies the version of the file a response carries, for
/// `If-Range` when a later attempt resumes it: the strong `ETag`, else the
/// `Last-Modified` date, else none. A weak ETag (`W/"..."`) may not be sent
/// in `If-Range` (RFC 9110, 13.1.5), nor may a malformed one (no quotes),
/// which a server could only fail to match; either falls back to
/// `Last-Modified`. Values that are not visible ASCII, or longer than
/// [`MAX_VALIDATOR_LENGTH`], count as absent.
pub fn validator(headers: &HeaderMap) -> Option<String> {
    let header = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty() && value.len() <= MAX_VALIDATOR_LENGTH)
    };
    let strong_etag = header(ETAG).filter(|etag| {
        etag.len() >= 2
            && etag.starts_with('"')
            && etag.ends_with('"')
            && !etag[1..etag.len() - 1].contains('"')
    });
    strong_etag.or_else(|| header(LAST_MODIFIED)).map(str::to_owned)
}

/// Whether a 206 answer to `bytes=offset-` is the rest of the file: from
/// `offset` to the file's last byte, of the `size` known before (if known).
///
/// A server may cap the range it answers `bytes=N-` with (`bytes
/// 30000-39999/100000`): that is not the rest, and taking it for the rest
/// saves a truncated file when the size is unknown, or fails every attempt
/// at the same byte when it is known. Such an answer is not continued with
/// further ranges: the caller starts over with one whole GET, the simpler of
/// the two correct answers. A single response cannot mix two versions of a
/// file, no second way of assembling a file is needed (a server that ignores
/// Range is already answered by starting over), and a server that caps its
/// ranges still sends the whole file to a GET without one.
fn is_rest_of_file(range: ContentRange, body_length: Option<u64>, offset: u64, size: Option<u64>) -> bool {
    let Some((first, last)) = range.first_last else {
        return false;
    };
    // A total of `*` (unknown to the server) says nothing about where the
    // file ends: only a size known before can.
    let Some(total) = range.total.or(size) else {
        return false;
    };
    size.is_none_or(|size| size == total)
        && first == offset
        && last.checked_add(1) == Some(total)
        && body_length.is_none_or(|length| Some(length) == total.checked_sub(offset))
}

/// A `Content-Range` header: `bytes FIRST-LAST/TOTAL`, or `bytes */TOTAL`
/// (a 416's), where TOTAL may be `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ContentRange {
    /// The first and last byte sent (inclusive), when a range was sent.
    first_last: Option<(u64, u64)>,
    /// The whole file's size, when the server knows it.
    total: Option<u64>,
}

fn parse_content_range(header: &str) -> Option<ContentRange> {
    let rest = header.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let first_last = match range.trim() {
        "*" => None,
        range => {
            let (first, last) = range.split_once('-')?;
            let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
            if last < first {
                return None;
            }
            Some((first, last))
        }
    };
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    if first_last.is_none() && total.is_none() {
        return None;
    }
    Some(ContentRange { first_last, total })
}

/// The file name a Content-Disposition header gives: `filename*` (RFC 5987,
/// percent-encoded with a charset) before `filename`, reduced to its last
/// path component as browsers do.
pub fn content_disposition_file_name(header: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for parameter in split_parameters(header).into_iter().skip(1) {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "filename*" => extended = decode_extended_value(value.trim()),
            "filename" => plain = Some(unquote(value.trim())),
            _ => {}
        }
    }
    extended
        .or(plain)
        .map(|name| last_path_component(&name).to_owned())
        .filter(|name| !name.trim().is_empty())
}

/// Splits at `;` outside quoted strings.
fn split_parameters(header: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in header.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .map(|rest| rest.strip_suffix('"').unwrap_or(rest))
    else {
        return value.to_owned();
    };
    let mut unquoted = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                unquoted.push(next);
            }
        } else {
            unquoted.push(c);
        }
    }
    unquoted
}

/// `UTF-8'en'na%C3%AFve.txt` into `naïve.txt`; ISO-8859-1 is decoded too.
fn decode_extended_value(value: &str) -> Option<String> {
    let value = unquote(value);
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?.to_ascii_lowercase();
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let bytes: Vec<u8> = percent_decode_str(encoded).collect();
    match charset.as_str() {
        "iso-8859-1" | "latin1" => Some(bytes.iter().map(|&byte| char::from(byte)).collect()),
        _ => Some(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

fn last_path_component(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// The last non-empty path segment of a URL, percent-decoded.
pub fn url_file_name(url: &Url) -> Option<String> {
    let segment = url.path_segments()?.rev().find(|segment| !segment.is_empty())?;
    let decoded = percent_decode_str(segment).decode_utf8_lossy().into_owned();
    let name = last_path_component(&decoded).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_content_disposition() {
        for (header, expected) in [
            ("attachment; filename=\"report.pdf\"", Some("report.pdf")),
            ("attachment; filename=report.pdf", Some("report.pdf")),
            ("inline; filename=\"a; b.txt\"", Some("a; b.txt")),
            ("attachment; filename=\"quo\\\"te.txt\"", Some("quo\"te.txt")),
            (
                "attachment; filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve%20file.txt",
                Some("naïve file.txt"),
            ),
            (
                "attachment; filename*=utf-8'en'%E2%82%AC%20rates.csv",
                Some("€ rates.csv"),
            ),
            ("attachment; filename*=iso-8859-1''caf%E9.txt", Some("café.txt")),
            ("attachment; FILENAME=\"UPPER.TXT\"", Some("UPPER.TXT")),
            ("attachment; filename=\"../../etc/passwd\"", Some("passwd")),
            ("attachment; filename=\"C:\\\\Users\\\\x.doc\"", Some("x.doc")),
            ("attachment", None),
            ("attachment; filename=\"\"", None),
            ("attachment; filename=\"dir/\"", None),
        ] {
            assert_eq!(
                content_disposition_file_name(header).as_deref(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn file_names_come_from_the_url_path_otherwise() {
        for (link, expected) in [
            ("https://example.com/files/report.pdf", Some("report.pdf")),
            (
                "https://example.com/files/my%20report.pdf?token=1",
                Some("my report.pdf"),
            ),
            ("https://example.com/files/dir/", Some("dir")),
            ("https://example.com/a/%2E%2E%2Fetc%2Fpasswd", Some("passwd")),
            ("https://example.com/", None),
            ("https://example.com", None),
        ] {
            let url = Url::parse(link).unwrap();
            assert_eq!(url_file_name(&url).as_deref(), expected, "{link}");
        }
    }

    #[test]
    fn links_are_shown_without_credentials() {
        let url = Url::parse("https://user:secret@example.com:8443/a/b.bin?sig=abc#frag").unwrap();
        assert_eq!(display_url(&url), "https://example.com:8443/a/b.bin?…");
        let url = Url::parse("http://example.com/x").unwrap();
        assert_eq!(display_url(&url), "http://example.com/x");
    }

    #[test]
    fn every_redirect_hop_is_checked() {
        let check = |link: &str, visited: usize, allow: bool| {
            check_redirect(&Url::parse(link).unwrap(), visited, allow).map_err(|error| error.to_string())
        };
        assert_eq!(check("https://example.com/f", 1, false), Ok(()));
        assert_eq!(check("https://example.com/f", MAX_REDIRECTS, false), Ok(()));
        assert_eq!(
            check("https://example.com/f", MAX_REDIRECTS + 1, false),
            Err("it redirected more than 10 times".to_owned())
        );
        assert!(check("http://127.0.0.1/f", 1, false)
            .unwrap_err()
            .contains("it is a loopback address"));
        assert!(check("http://169.254.169.254/latest/meta-data/", 1, false)
            .unwrap_err()
            .contains("link-local"));
        assert!(check("http://[fd00::1]/f", 1, false)
            .unwrap_err()
            .contains("unique local"));
        assert_eq!(check("http://10.0.0.1/f", 1, true), Ok(()));
        assert!(check("file:///etc/passwd", 1, true)
            .unwrap_err()
            .contains("a file: link"));
    }

    #[test]
    fn the_validator_is_the_strong_etag_else_last_modified() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            headers
        };
        const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
        for (pairs, expected) in [
            (
                vec![("etag", "\"abc\""), ("last-modified", DATE)],
                Some("\"abc\""),
            ),
            (vec![("etag", "\"\"")], Some("\"\"")),
            (vec![("etag", "W/\"abc\""), ("last-modified", DATE)], Some(DATE)),
            (vec![("etag", "W/\"abc\"")], None),
            (vec![("etag", "abc"), ("last-modified", DATE)], Some(DATE)),
            (vec![("etag", "\"a\"b\"")], None),
            (vec![("last-modified", DATE)], Some(DATE)),
            (vec![("last-modified", " ")], None),
            (vec![], None),
        ] {
            assert_eq!(validator(&headers(&pairs)).as_deref(), expected, "{pairs:?}");
        }
        let long = format!("\"{}\"", "a".repeat(MAX_VALIDATOR_LENGTH));
        assert_eq!(
            validator(&headers(&[("etag", &long), ("last-modified", DATE)])).as_deref(),
            Some(DATE)
        );
        let mut opaque = HeaderMap::new();
        opaque.insert(ETAG, HeaderValue::from_bytes(b"\"caf\xe9\"").unwrap());
        assert_eq!(validator(&opaque), None);
    }

    #[test]
    fn content_ranges_are_read() {
        let range = |first_last, total| Some(ContentRange { first_last, total });
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            range(Some((100, 199)), Some(200))
        );
        assert_eq!(
            parse_content_range("bytes 30000-39999/100000"),
            range(Some((30_000, 39_999)), Some(100_000))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), range(Some((5, 9)), None));
        assert_eq!(parse_content_range("bytes */200"), range(None, Some(200)));
        assert_eq!(parse_content_range("bytes */*"), None);
        assert_eq!(parse_content_range("bytes 9-5/200"), None);
        assert_eq!(parse_content_range("bytes 5-/200"), None);
        assert_eq!(parse_content_range("nonsense"), None);
    }

    #[test]
    fn only_a_range_to_the_end_of_the_file_is_the_rest_of_it() {
        let range = |first_last, total| ContentRange { first_last, total };
        let rest = range(Some((30_000, 99_999)), Some(100_000));
        assert!(is_rest_of_file(rest, Some(70_000), 30_000, Some(100_000)));
        assert!(is_rest_of_file(rest, None, 30_000, None));
        // Capped: the range stops before the end of the file.
        let capped = range(Some((30_000, 39_999)), Some(100_000));
        assert!(!is_rest_of_file(capped, Some(10_000), 30_000, Some(100_000)));
        assert!(!is_rest_of_file(capped, Some(10_000), 30_000, None));
        // Another start, another size, a body shorter than the range.
        assert!(!is_rest_of_file(rest, None, 20_000, Some(100_000)));
        assert!(!is_rest_of_file(rest, None, 30_000, Some(120_000)));
        assert!(!is_rest_of_file(rest, Some(10_000), 30_000, Some(100_000)));
        // An unknown total: only a size known before says where the file ends.
        let unknown = range(Some((30_000, 99_999)), None);
        assert!(is_rest_of_file(unknown, None, 30_000, Some(100_000)));
        assert!(!is_rest_of_file(unknown, None, 30_000, None));
        assert!(!is_rest_of_file(range(None, Some(100_000)), None, 30_000, None));
    }

    #[test]
    fn statuses_map_to_retryable_or_permanent_errors() {
        let url = Url::parse("https://example.com/f.bin?token=x").unwrap();
        let error = status_error(&url, StatusCode::NOT_FOUND);
        assert!(error.is_permanent());
        assert_eq!(
            error.message,
            "https://example.com/f.bin?… answered 404 Not Found: check the link"
        );
        for status in [500, 502, 503, 504, 429, 408] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(!status_error(&url, status).is_permanent(), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 451, 201, 203, 204, 205, 207] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(status_error(&url, status).is_permanent(), "{status}");
        }
        assert!(!status_error(&url, StatusCode::ACCEPTED).is_permanent());
    }
}
