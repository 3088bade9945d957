//! Webhooks: `POST /hooks/<trigger>` on the server's listener, with
//! optional HMAC-SHA256 verification in the GitHub style (header
//! `x-hub-signature-256: sha256=<hex of HMAC(secret, body)>`). A request
//! with a missing or wrong signature is answered 401 and nothing is
//! queued; an accepted one is answered 202 once its event is on disk.
//!
//! A request that is a CloudEvent (binary or structured mode) is taken as
//! it is. Any other body becomes an event of `type` `wisp.webhook`,
//! `source` `/hooks/<trigger>`, `subject` the value of
//! `event_type_header` (GitHub's `x-github-event`) when present, `id` the
//! value of `delivery_id_header` (`x-github-delivery`) or a new id, data
//! the body with its content type; the other request headers are kept as
//! the `headers` extension.

use crate::TriggerError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// Longest webhook secret, in bytes.
pub const MAX_SECRET_BYTES: usize = 256;
/// Largest webhook body, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A webhook trigger's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Shared secret; when set, every request must be signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Header carrying `sha256=<hex>` (default `x-hub-signature-256`).
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Header whose value becomes the event's `subject` (default `x-github-event`).
    #[serde(default = "default_event_type_header")]
    pub event_type_header: String,
    /// Header whose value becomes the event's `id` (default `x-github-delivery`).
    #[serde(default = "default_delivery_id_header")]
    pub delivery_id_header: String,
}

fn default_signature_header() -> String {
    "x-hub-signature-256".into()
}
fn default_event_type_header() -> String {
    "x-github-event".into()
}
fn default_delivery_id_header() -> String {
    "x-github-delivery".into()
}

impl WebhookConfig {
    /// Checks the secret and header names.
    pub fn validate(&self) -> Result<(), TriggerError> {
        if let Some(s) = &self.secret
            && (s.is_empty() || s.len() > MAX_SECRET_BYTES)
        {
            return Err(TriggerError::invalid(
                "secret",
                format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        for (field, value) in [
            ("signature_header", &self.signature_header),
            ("event_type_header", &self.event_type_header),
            ("delivery_id_header", &self.delivery_id_header),
        ] {
            if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                return Err(TriggerError::invalid(
                    field,
                    "must be a valid HTTP header name",
                ));
            }
        }
        Ok(())
    }

    /// Whether `signature` (the header's value, `sha256=<hex>`) signs
    /// `body`; always true without a secret. Compared in constant time.
    pub fn verify(&self, signature: Option<&str>, body: &[u8]) -> bool {
        let Some(secret) = &self.secret else {
            return true;
        };
        let Some(hex_sig) = signature.and_then(|s| s.trim().strip_prefix("sha256=")) else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }
}

/// `sha256=<hex>` of `body` under `secret`, as a sender computes it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: Option<&str>) -> WebhookConfig {
        serde_json::from_value(serde_json::json!({ "secret": secret })).unwrap()
    }

    #[test]
    fn github_style_signatures() {
        // The example from GitHub's documentation of webhook signatures.
        let c = config(Some("It's a Secret to Everybody"));
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(c.verify(Some(sig), b"Hello, World!"));
        assert_eq!(sign("It's a Secret to Everybody", b"Hello, World!"), sig);
        assert!(!c.verify(Some(sig), b"Hello, World?"));
        assert!(!c.verify(None, b"Hello, World!"));
        assert!(!c.verify(Some("sha1=abc"), b"Hello, World!"));
        assert!(!c.verify(Some("sha256=zz"), b"Hello, World!"));
        assert!(config(None).verify(None, b"anything"));
    }

    #[test]
    fn validation() {
        assert_eq!(config(Some("")).validate().unwrap_err().field(), "secret");
        let mut c = config(None);
        c.signature_header = "bad header".into();
        assert_eq!(c.validate().unwrap_err().field(), "signature_header");
    }
}
