//! The layers every request passes through, outermost first:
//! - [`observe`]: one tracing span per request (method, path, task id), a
//!   log line with status and latency, and the request counted in
//!   `savestream_http_requests_total`; every error becomes its JSON response
//!   here, so nothing leaves the server as plain text;
//! - [`json_panic`]: a handler that panics answers 500 JSON instead of
//!   dropping the connection;
//! - [`limit_body`]: bodies over 64 KiB are refused with 413 before any
//!   handler reads them, whether or not they announce their length.
//!
//! Headers are never logged: the `Authorization` header holds the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use poem::error::ResponseError;
use poem::http::header::CONTENT_LENGTH;
use poem::middleware::PanicHandler;
use poem::PathPattern;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

use crate::error::{into_json_response, ApiError, MAX_BODY_BYTES};

pub async fn observe<E: Endpoint>(next: Arc<E>, request: Request) -> poem::Result<Response> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %path,
        task_id = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        // The router leaves the pattern it matched on the response (or the
        // error), which is what the request counter is labelled with.
        let (response, route) = match next.call(request).await {
            Ok(output) => {
                let response = output.into_response();
                let route = response.data::<PathPattern>().map(|pattern| pattern.0.clone());
                (response, route)
            }
            Err(error) => {
                let route = error.data::<PathPattern>().map(|pattern| pattern.0.clone());
                (into_json_response(error, &method, &path), route)
            }
        };
        let status = response.status();
        crate::metrics::http_request(method.as_str(), route.as_deref(), status.as_u16());
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), elapsed_ms, "request");
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Answers a panicking handler with the same JSON every other error has.
#[derive(Clone, Copy)]
pub struct JsonPanic;

impl PanicHandler for JsonPanic {
    type Response = Response;

    fn get_response(&self, _panic: Box<dyn std::any::Any + Send + 'static>) -> Self::Response {
        tracing::error!("a request handler panicked");
        ApiError::Internal.as_response()
    }
}

pub fn json_panic() -> poem::middleware::CatchPanic<JsonPanic> {
    poem::middleware::CatchPanic::new().with_handler(JsonPanic)
}

/// How much of an oversized body is still read (and thrown away) before the
/// 413 is sent. A client still writing its body when the server answers and
/// closes sees a broken connection instead of the 413; reading a little more
/// lets every ordinary client get its answer, while this cap keeps a huge
/// upload from costing more than a moment.
const DRAIN_LIMIT: u64 = 4 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn limit_body<E: Endpoint>(next: Arc<E>, mut request: Request) -> poem::Result<Response> {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut chunks = request.take_body().into_bytes_stream();
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        drain(&mut chunks, 0).await;
        return Err(ApiError::PayloadTooLarge.into());
    }
    // Buffering is cheap at this size, and it catches chunked bodies that
    // announce no length.
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|error| ApiError::BadRequest(format!("cannot read the request body: {error}")))?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            drain(&mut chunks, body.len() as u64).await;
            return Err(ApiError::PayloadTooLarge.into());
        }
    }
    request.set_body(body);
    next.call(request).await.map(IntoResponse::into_response)
}

/// Reads and discards the rest of a body, up to [`DRAIN_LIMIT`] bytes in all
/// and [`DRAIN_TIMEOUT`].
async fn drain<S>(chunks: &mut S, mut read: u64)
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while read <= DRAIN_LIMIT {
            match chunks.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
}
