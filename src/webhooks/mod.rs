//! Webhooks: the gateway owns the account's one webhook URL.
//!
//! - [`receiver`]: `POST /webhooks/exabase/{secret}` hears the API's deliveries, primes
//!   the cache from them (so every poller sees `completed` at once, with no upstream call)
//!   and turns them into events.
//! - [`scopes`]: which scopes each job was seen in; a delivery carries no base id, so
//!   only those are primed.
//! - [`relay`], [`outbox`], [`sign`]: events relayed to `[[webhooks.subscribers]]` as
//!   Standard Webhooks deliveries, durable, retried, scoped.

pub mod account;
pub mod admin;
pub mod event;
pub mod outbox;
pub mod receiver;
pub mod relay;
pub mod scopes;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::WebhooksConfig;
use crate::metrics::Metrics;

pub use event::Event;
pub use relay::{Relay, Subscriber};
pub use scopes::Scopes;

/// The receiver's path, before the secret.
pub const RECEIVER_PREFIX: &str = "/webhooks/exabase/";

/// Whether `path` may be a spelling of the receiver's (and hold its secret): once
/// percent-decoded, read in any case, with empty and `.` segments dropped and `..` ones
/// applied, it holds `webhooks/exabase/` or ends in `webhooks/exabase`. An outside
/// review found `/webhooks//exabase/{secret}`, `/webhooks/./exabase/…`,
/// `/webhooks/%65xabase/…` and `/webhooks/exabase%2f{secret}` written to the log whole.
pub fn names_receiver(path: &str) -> bool {
    // Every request the access log writes comes here: a path with neither a `w` nor a
    // percent-escape (every job path: ids are hex) cannot spell it.
    let bytes = path.as_bytes();
    if !bytes
        .iter()
        .any(|b| b.eq_ignore_ascii_case(&b'w') || *b == b'%')
    {
        return false;
    }
    let decoded = percent_decoded(bytes);
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    segments.windows(2).any(|pair| {
        pair[0].eq_ignore_ascii_case(b"webhooks") && pair[1].eq_ignore_ascii_case(b"exabase")
    })
}

/// `bytes` with every `%XX` escape decoded (a malformed one left as it is), again until
/// none is left, so a doubly encoded path reads the same.
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut current = bytes.to_vec();
    // Each pass shortens the text or leaves it unchanged: the loop ends.
    loop {
        let mut out = Vec::with_capacity(current.len());
        let mut at = 0;
        while at < current.len() {
            let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
            match (
                current[at],
                hex(current.get(at + 1)),
                hex(current.get(at + 2)),
            ) {
                (b'%', Some(high), Some(low)) => {
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                    at += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    at += 1;
                }
            }
        }
        if out.len() == current.len() {
            return out;
        }
        current = out;
    }
}

/// What the access log shows instead of the receiver's path.
pub const REDACTED_PATH: &str = "/webhooks/exabase/[redacted]";

/// `[webhooks]` as the current config has it (rebuilt on reload: a new secret, new
/// subscribers).
pub struct WebhooksLive {
    /// SHA-256 of the path secret: compared digest to digest, so neither the length
    /// nor the content of the secret shows in the timing of a refusal.
    secret_digest: [u8; 32],
    /// The subscribers.
    pub subscribers: Vec<Arc<Subscriber>>,
    /// Waits between relay attempts.
    pub retry_schedule: Vec<Duration>,
    /// Largest delivery accepted.
    pub max_body: u64,
    /// Where the API reaches the gateway.
    pub public_url: String,
    /// The receiver's full URL (holds the secret: never logged).
    receiver_url: String,
}

impl std::fmt::Debug for WebhooksLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksLive")
            .field("subscribers", &self.subscribers)
            .finish_non_exhaustive()
    }
}

impl WebhooksLive {
    /// Reads the secrets the config names. Errors name variables and files, never values.
    pub fn new(config: &WebhooksConfig) -> Result<WebhooksLive, String> {
        let secret = config.load_secret()?;
        let subscribers = config
            .subscribers
            .iter()
            .map(|s| Subscriber::new(s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebhooksLive {
            secret_digest: crate::auth::sha256(secret.as_bytes()),
            subscribers,
            retry_schedule: config.retry_schedule.clone(),
            max_body: config.max_body,
            public_url: config.public_url.clone(),
            receiver_url: receiver_url(&config.public_url, &secret),
        })
    }

    /// Whether `presented` is the path secret.
    pub fn is_secret(&self, presented: &str) -> bool {
        bool::from(crate::auth::sha256(presented.as_bytes()).ct_eq(&self.secret_digest))
    }

    /// The URL the account's webhook must point at (it holds the secret).
    pub fn receiver_url(&self) -> &str {
        &self.receiver_url
    }
}

/// `GET /v2/extract-settings` while `[webhooks]` is on, answered by the gateway: the
/// upstream's answer holds the receiver's secret, which no app may read (with it, one
/// could forge deliveries for any base). It says where the account's webhook should
/// point, secret redacted, and how apps hear of jobs instead.
pub fn settings_answer(
    live: &crate::gateway::Live,
    head: bool,
) -> http::Response<crate::body::Body> {
    let public = live
        .webhooks
        .as_ref()
        .map_or("", |h| h.public_url.as_str())
        .trim_end_matches('/');
    let body = serde_json::json!({
        "webhookUrl": format!("{public}{REDACTED_PATH}"),
        "managedBy": "exagate",
        "message": "this gateway owns the account's webhook: apps hear of jobs through [[webhooks.subscribers]], or long-poll GET /v2/extract/{id}?wait=30s",
    })
    .to_string();
    let length = body.len();
    let mut response = http::Response::new(if head {
        crate::body::Body::Empty
    } else {
        crate::body::Body::full(bytes::Bytes::from(body))
    });
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if head {
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert("x-cache", http::HeaderValue::from_static("bypass"));
    response
}

/// `public_url` + the receiver's path.
pub fn receiver_url(public_url: &str, secret: &str) -> String {
    format!(
        "{}{RECEIVER_PREFIX}{secret}",
        public_url.trim_end_matches('/')
    )
}

/// What outlives reloads: the scopes seen and the relay's queue.
pub struct Webhooks {
    /// Which scopes each job was seen in.
    pub scopes: Scopes,
    /// The relay and its outbox.
    pub relay: Arc<Relay>,
}

impl Webhooks {
    /// The runtime side; the outbox is journaled in `state_dir` when there is one.
    pub fn new(
        state_dir: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
        shared: Option<Arc<crate::shared::Shared>>,
        metrics: Arc<Metrics>,
    ) -> Result<Webhooks, crate::BoxError> {
        Ok(Webhooks {
            scopes: Scopes::open(state_dir),
            relay: Arc::new(Relay::new(state_dir, ca_file, shared, metrics)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receivers_path_is_known_in_any_spelling() {
        for path in [
            "/webhooks/exabase/s3cr3t",
            "/WebHooks/Exabase/s3cr3t",
            "//webhooks/exabase/s3cr3t",
            "/webhooks//exabase/s3cr3t",
            "/webhooks/./exabase/s3cr3t",
            "/webhooks/x/../exabase/s3cr3t",
            "/webhooks/%65xabase/s3cr3t",
            "/webhooks/exabase%2fs3cr3t",
            "/webhooks/exabase%252Fs3cr3t",
            "/%77ebhooks/exabase/s3cr3t",
            "/x/webhooks/exabase/",
            "/webhooks/exabase/",
            "/webhooks/exabase",
        ] {
            assert!(names_receiver(path), "{path}");
        }
        for path in [
            "/v2/extract/123e4567-e89b-12d3-a456-426614174000",
            "/x/wwebhooks/exabase/",
            "/webhooks/exabas/x",
            "/webhooks/../exabase/x",
            "/w",
            "/%",
            "/%zz%2",
            "",
        ] {
            assert!(!names_receiver(path), "{path}");
        }
    }
}
