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
    /// A webhook secret that is not `whsec_` followed by base64 (see
    /// `Signer::from_secret`). `problem` says which part is wrong; neither
    /// it nor the message shows the secret.
    #[error("[api] webhook_secret (or SAVESTREAM_API_WEBHOOK_SECRET) is not a Standard Webhooks secret: {problem}; it must be `whsec_` followed by the base64 of the key bytes: make one with `echo whsec_$(openssl rand -base64 32)`, give the receiver the same value, and start the worker again")]
    InvalidSecret { problem: &'static str },
    /// A webhook URL that no try could be sent to as configured: `problem`
    /// says why and what to change, and never shows the URL itself, whose
    /// user info and query may hold credentials.
    #[error("[api] webhook_url cannot be used: {problem}")]
    UnusableUrl { problem: String },
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
