//! [`WebhookError`]: what building or running a dispatcher can fail with,
//! in variants the caller acts on differently.

use savestream_shared::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `[api] webhook_url` is not set: there is nothing to deliver to, and
    /// the caller should simply not start a dispatcher.
    #[error("webhooks are disabled: [api] webhook_url is not set")]
    Disabled,
    /// The webhook URL is not an http or https URL.
    #[error("webhook_url must be an http or https URL, not {scheme}:")]
    InvalidUrl { scheme: String },
    /// A `whsec_` secret whose rest is not base64. The secret is not shown.
    #[error("webhook_secret starts with `whsec_` but the rest is not valid base64")]
    InvalidSecret,
    /// Options that cannot work together, named in the message.
    #[error("invalid webhook dispatcher options: {0}")]
    InvalidOptions(String),
    /// The HTTP client could not be built (for example no TLS roots).
    #[error("building the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WebhookError {
    /// True for [`WebhookError::Disabled`]: not a failure, just nothing to run.
    pub fn is_disabled(&self) -> bool {
        matches!(self, WebhookError::Disabled)
    }
}
