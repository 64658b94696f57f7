//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `"{webhook-id}.{webhook-timestamp}.{body}"`.
//!
//! The key is `[api] webhook_secret`, read as the spec and its reference
//! libraries read it: an optional `whsec_` prefix, then the base64 of the
//! key bytes. A secret that is not base64 is refused when the dispatcher is
//! built (the worker's start), not used as raw bytes: receivers verify with
//! those libraries, which would decode it and reject every signature. The
//! key never leaves this module and is never printed.

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
    /// Parses `[api] webhook_secret`: strips an optional `whsec_` and
    /// decodes the rest as base64 (standard alphabet, padded), exactly as
    /// the `standardwebhooks` libraries do, so `whsec_<b64>` and `<b64>`
    /// are the same key. Fails, without echoing the secret, when the rest
    /// is not base64 or decodes to no bytes.
    pub fn from_secret(secret: &str) -> Result<Signer, WebhookError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookError::InvalidSecret)?;
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
    fn the_secret_without_its_prefix_gives_the_same_signature() {
        let prefixed = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let bare = Signer::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();

        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            bare.sign(id, 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            bare.sign(id, 1614265330, body),
            prefixed.sign(id, 1614265330, body)
        );
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused_without_echoing_it() {
        for secret in [
            "whsec_not*base64!",
            "a plain passphrase",
            "whsec_",
            "whsec_QUFBQQ",
        ] {
            let error = Signer::from_secret(secret).unwrap_err();

            assert!(matches!(error, WebhookError::InvalidSecret), "{secret}");
            let message = error.to_string();
            assert!(message.contains("[api] webhook_secret"), "{message}");
            assert!(message.contains("openssl rand -base64 32"), "{message}");
            assert!(!message.contains("not*base64") && !message.contains("passphrase"));
        }
        assert_eq!(
            format!("{:?}", Signer::from_secret("whsec_QUFBQQ==").unwrap()),
            "Signer([redacted])"
        );
    }
}
