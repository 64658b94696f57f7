//! # savestream-client
//!
//! A Rust client for savestream's HTTP task API, generated at build time by
//! progenitor from `openapi/openapi.json` (see `build.rs`). Nothing here is
//! written by hand except [`with_token`] and [`http_client_builder`]: progenitor ignores the spec's
//! security scheme, so the bearer token travels as a default header of the
//! `reqwest::Client` the generated [`Client`] wraps.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = savestream_client::with_token("http://localhost:8080", "your-secret-token-here")?;
//! let created = client
//!     .create_task()
//!     .body_map(|body| body.telegram_url("https://t.me/channel/123".to_owned()).user_id(123456789))
//!     .send()
//!     .await?;
//! println!("{}", created.task_id);
//! # Ok(()) }
//! ```

#![allow(clippy::all, unused_imports, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/client.rs"));

/// A client for the API at `base_url` that sends `Authorization: Bearer <token>`
/// with every request (an empty token sends none).
pub fn with_token(base_url: &str, token: &str) -> Result<Client, reqwest::Error> {
    let http = http_client_builder(token).build()?;
    Ok(Client::new_with_client(base_url, http))
}

/// The `reqwest::ClientBuilder` behind [`with_token`]: the bearer token as a
/// sensitive default header, and nothing else, so a caller can add its own
/// timeouts before wrapping the built client with [`Client::new_with_client`].
pub fn http_client_builder(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    if !token.is_empty() {
        // A token with bytes a header cannot hold is sent as none at all: the
        // server then answers 401, which says what is wrong.
        if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    reqwest::Client::builder().default_headers(headers)
}
