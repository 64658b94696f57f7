//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `"{webhook-id}.{webhook-timestamp}.{body}"`.
//!
//! The key is `[api] webhook_secret`, which must be `whsec_` followed by the
//! base64 of the key bytes, as the spec writes secrets. The prefix is
//! required although the spec's libraries treat it as optional: many plain
//! passphrases (`mysecretpassword`, the 64 hex digits of
//! `openssl rand -hex 32`) are valid base64 too, and reading them as base64
//! would silently sign with other bytes than a receiver that uses the
//! passphrase itself checks against, so every webhook would be rejected
//! with no error at our end. A secret without the prefix, or whose rest is
//! not base64, is refused when the dispatcher is built (the worker's start).
//! The key never leaves this module and is never printed.

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
    /// Parses `[api] webhook_secret`: `whsec_`, then the base64 of the key
    /// (standard alphabet, padded), decoded as the `standardwebhooks`
    /// libraries decode it. Fails, without echoing the secret, when the
    /// prefix is missing (see the module docs for why it is required), when
    /// the rest is not base64, or when it decodes to no bytes.
    pub fn from_secret(secret: &str) -> Result<Signer, WebhookError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::InvalidSecret {
                problem:
                    "it does not start with `whsec_` (a passphrase is not used as the key: many are valid \
                      base64 and would silently become other key bytes than the receiver checks with)",
            })?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookError::InvalidSecret {
                problem: "what follows `whsec_` is not base64",
            })?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret {
                problem: "nothing follows `whsec_`",
            });
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
    fn a_secret_without_the_whsec_prefix_is_refused_even_when_it_is_base64() {
        let base64_valid = [
            // The spec's example secret, without its prefix.
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            // A passphrase, and what `openssl rand -hex 32` prints.
            "mysecretpassword",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ];
        for secret in base64_valid {
            assert!(STANDARD.decode(secret).is_ok(), "{secret} decodes: the danger");
        }
        for secret in base64_valid.into_iter().chain(["a plain passphrase"]) {
            let error = Signer::from_secret(secret).unwrap_err();

            assert!(matches!(error, WebhookError::InvalidSecret { .. }), "{secret}");
            let message = error.to_string();
            assert!(message.contains("[api] webhook_secret"), "{message}");
            assert!(message.contains("does not start with `whsec_`"), "{message}");
            assert!(
                message.contains("echo whsec_$(openssl rand -base64 32)"),
                "{message}"
            );
            assert!(!message.contains(secret), "the secret is not echoed: {message}");
        }
    }

    #[test]
    fn a_whsec_secret_that_is_not_base64_is_refused_without_echoing_it() {
        for secret in [
            "whsec_not*base64!",
            "whsec_",
            "whsec_QUFBQQ",
            "whsec_a plain passphrase",
        ] {
            let error = Signer::from_secret(secret).unwrap_err();

            assert!(matches!(error, WebhookError::InvalidSecret { .. }), "{secret}");
            let message = error.to_string();
            assert!(message.contains("[api] webhook_secret"), "{message}");
            assert!(message.contains("openssl rand -base64 32"), "{message}");
            assert!(!message.contains("not*base64") && !message.contains("passphrase"));
            assert!(!message.contains("QUFBQQ"), "{message}");
        }
        assert_eq!(
            format!("{:?}", Signer::from_secret("whsec_QUFBQQ==").unwrap()),
            "Signer([redacted])"
        );
    }
}
