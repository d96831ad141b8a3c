//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`):
//! HMAC-SHA256 of `id.timestamp.body`, base64, prefixed `v1,`.
//!
//! A few lines over `ring`'s HMAC (already linked for TLS) rather than the
//! `standardwebhooks` crate, whose 1.0 release has no clock to inject and signs only
//! UTF-8 bodies; that crate is the test oracle instead.

use base64::Engine as _;

/// A subscriber's signing key, from its `whsec_...` secret.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.write_str("SigningKey(..)")
    }
}

/// Shortest key accepted, in bytes (the spec asks for 24 to 64 random bytes).
pub const MIN_KEY: usize = 24;

impl SigningKey {
    /// Reads `whsec_` + base64 (the prefix is optional, as in the reference libraries).
    /// The error never quotes the secret.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let text = secret.trim();
        let text = text.strip_prefix("whsec_").unwrap_or(text);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "is not whsec_ followed by base64".to_string())?;
        if bytes.len() < MIN_KEY || bytes.len() > 64 {
            return Err(format!(
                "decodes to {} bytes; a signing key is {MIN_KEY} to 64 random bytes",
                bytes.len()
            ));
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// The `webhook-signature` value for one attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }

    /// Whether one of the space-separated `v1,` signatures in `header` is this key's for
    /// the content (compared in constant time by `ring`).
    pub fn verify(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let mut message = Vec::with_capacity(id.len() + body.len() + 24);
        message.extend_from_slice(id.as_bytes());
        message.push(b'.');
        message.extend_from_slice(timestamp.to_string().as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        header.split(' ').any(|signature| {
            signature
                .strip_prefix("v1,")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .is_some_and(|tag| ring::hmac::verify(&self.0, &message, &tag).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the reference library (a dev-dependency): what it signs, we sign, and
    /// what we sign, it verifies.
    #[test]
    fn agrees_with_the_reference_library() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::parse(secret).expect("key");
        let reference = standardwebhooks::Webhook::new(secret).expect("reference key");
        let body = br#"{"type":"extract.job.completed"}"#;
        let id = "evt_0123456789abcdef";
        let now =
            u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).expect("after 1970");
        let ours = key.sign(id, now, body);
        let theirs = reference
            .sign(id, i64::try_from(now).expect("ts"), body)
            .expect("sign");
        assert_eq!(ours, theirs);
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().expect("id"));
        headers.insert("webhook-timestamp", now.to_string().parse().expect("ts"));
        headers.insert("webhook-signature", ours.parse().expect("sig"));
        reference
            .verify(body, &headers)
            .expect("the reference verifies ours");
        // Rotation: any one matching signature in the list is enough.
        assert!(key.verify(id, now, body, &format!("v1,bm90IGl0 {ours}")));
        assert!(!key.verify(id, now + 1, body, &ours));
        assert!(!key.verify(id, now, b"{}", &ours));
    }

    #[test]
    fn short_or_garbled_secrets_are_refused_without_quoting_them() {
        let e = SigningKey::parse("whsec_c2hvcnQ=").expect_err("short");
        assert!(!e.contains("c2hvcnQ"));
        assert!(SigningKey::parse("whsec_!!!not base64!!!").is_err());
    }
}
