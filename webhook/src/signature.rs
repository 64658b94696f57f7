//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `"{webhook-id}.{webhook-timestamp}.{body}"`.
//!
//! The key is `[api] webhook_secret`: a `whsec_<base64>` secret is decoded
//! as the Standard Webhooks spec says; any other secret is used as its raw
//! bytes, so a plain passphrase works too. The key never leaves this module
//! and is never printed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::WebhookError;

/// The prefix of a base64 secret in the Standard Webhooks spec.
const SECRET_PREFIX: &str = "whsec_";

/// A signing key, parsed once at start.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// Parses `[api] webhook_secret`. Fails only for a `whsec_` secret whose
    /// rest is not base64, and does not echo it.
    pub fn from_secret(secret: &str) -> Result<Signer, WebhookError> {
        let key = match secret.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|_| WebhookError::InvalidSecret)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Signer { key })
    }

    /// The `webhook-signature` header value for one try.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &str) -> String {
        // HMAC takes keys of any length, so `new_from_slice` cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks spec (and of its reference
    /// libraries' tests): this secret, id, timestamp and body give this
    /// signature.
    #[test]
    fn the_standard_webhooks_example_signature_is_reproduced() {
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();

        let signature = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );

        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_without_the_prefix_is_used_as_raw_bytes() {
        let raw = Signer::from_secret("plain passphrase").unwrap();
        let encoded = Signer::from_secret(&format!("whsec_{}", STANDARD.encode("plain passphrase"))).unwrap();

        assert_eq!(raw.sign("msg_1", 1, "{}"), encoded.sign("msg_1", 1, "{}"));
    }

    #[test]
    fn a_whsec_secret_that_is_not_base64_is_refused_without_echoing_it() {
        let error = Signer::from_secret("whsec_not*base64!").unwrap_err();

        assert!(matches!(error, WebhookError::InvalidSecret));
        assert!(!error.to_string().contains("not*base64"));
        assert_eq!(
            format!("{:?}", Signer::from_secret("s").unwrap()),
            "Signer([redacted])"
        );
    }
}
