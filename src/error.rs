//! One error type for everything the gateway answers by itself.
//!
//! Following pingora, an error knows its *source* (the client, the upstream, or us) and a
//! stable machine-readable `code`; the kind alone decides the HTTP status, so a handler
//! cannot pair a client mistake with a 5xx by accident. Errors are `Clone` because one
//! upstream failure is handed to every request that was waiting on the same fetch.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// Who is at fault, which decides the status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request was wrong: 4xx.
    Client,
    /// The upstream failed or misbehaved: 502/504.
    Upstream,
    /// A bug or resource problem here: 500.
    Internal,
    /// The gateway's own protections (quota, cooldown, concurrency): 429 or 503, always
    /// with a time to come back.
    Guard,
}

/// What went wrong; each kind has one status and one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job id does not match the documented pattern.
    InvalidJobId,
    /// `X-Exabase-Base-Id` is not a UUID (or is repeated).
    InvalidBaseId,
    /// `X-Exabase-Workspace-Id` is not a UUID (or is repeated).
    InvalidWorkspaceId,
    /// Both scope headers at once: which scope is meant is not for the gateway to guess.
    ConflictingScope,
    /// A long-poll's `wait` is not a duration.
    InvalidWait,
    /// A delivery to the webhook receiver that is not a job.
    InvalidWebhook,
    /// `PUT /v2/extract-settings` while the gateway owns the account's webhook.
    WebhooksManaged,
    /// An operator's retry of a relay delivery that was delivered (without `replay`).
    AlreadyDelivered,
    /// Some other malformed request.
    BadRequest,
    /// The gateway does not serve this path.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// A request body over the configured limit.
    PayloadTooLarge,
    /// The client stopped sending its request body for longer than `upstream.timeout`.
    RequestTimeout,
    /// No client token, or an unknown one (when clients are configured).
    Unauthorized,
    /// The client may not use this base (or the workspace).
    Forbidden,
    /// The gateway's token bucket for the account's quota is empty.
    QuotaExhausted,
    /// The upstream said 429 and the shared cooldown is running.
    UpstreamRateLimited,
    /// Every upstream slot stayed busy past the request's deadline.
    UpstreamBusy,
    /// A delivery the gateway cannot place yet (the shared tier it needs is away): the
    /// sender should try again.
    TemporarilyUnavailable,
    /// No connection to the upstream, or it broke before an answer.
    UpstreamUnreachable,
    /// The upstream answered something unusable (bad JSON, wrong job, cut-off body).
    UpstreamInvalid,
    /// The upstream's body is larger than `upstream.max_body`.
    UpstreamTooLarge,
    /// The upstream did not answer within `upstream.timeout`.
    UpstreamTimeout,
    /// Something failed inside the gateway.
    Internal,
}

impl ErrorKind {
    /// Stable code for the JSON body, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidJobId => "invalid_job_id",
            ErrorKind::InvalidBaseId => "invalid_base_id",
            ErrorKind::InvalidWorkspaceId => "invalid_workspace_id",
            ErrorKind::ConflictingScope => "conflicting_scope_headers",
            ErrorKind::InvalidWait => "invalid_wait",
            ErrorKind::InvalidWebhook => "invalid_webhook",
            ErrorKind::WebhooksManaged => "webhooks_managed",
            ErrorKind::AlreadyDelivered => "already_delivered",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::QuotaExhausted => "quota_exhausted",
            ErrorKind::UpstreamRateLimited => "upstream_rate_limited",
            ErrorKind::UpstreamBusy => "upstream_busy",
            ErrorKind::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamInvalid => "upstream_invalid_response",
            ErrorKind::UpstreamTooLarge => "upstream_body_too_large",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// Who is at fault.
    pub fn source(self) -> ErrorSource {
        match self {
            ErrorKind::InvalidJobId
            | ErrorKind::InvalidBaseId
            | ErrorKind::InvalidWorkspaceId
            | ErrorKind::ConflictingScope
            | ErrorKind::InvalidWait
            | ErrorKind::InvalidWebhook
            | ErrorKind::WebhooksManaged
            | ErrorKind::AlreadyDelivered
            | ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden => ErrorSource::Client,
            ErrorKind::QuotaExhausted
            | ErrorKind::UpstreamRateLimited
            | ErrorKind::UpstreamBusy
            | ErrorKind::TemporarilyUnavailable => ErrorSource::Guard,
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamInvalid
            | ErrorKind::UpstreamTooLarge
            | ErrorKind::UpstreamTimeout => ErrorSource::Upstream,
            ErrorKind::Internal => ErrorSource::Internal,
        }
    }

    /// The HTTP status this kind is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidJobId
            | ErrorKind::InvalidBaseId
            | ErrorKind::InvalidWorkspaceId
            | ErrorKind::ConflictingScope
            | ErrorKind::InvalidWait
            | ErrorKind::InvalidWebhook
            | ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::WebhooksManaged | ErrorKind::AlreadyDelivered => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::QuotaExhausted | ErrorKind::UpstreamRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::UpstreamBusy | ErrorKind::TemporarilyUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamInvalid
            | ErrorKind::UpstreamTooLarge => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error the gateway answers itself, as `{"error":{"code":...,"message":...}}`.
///
/// The message is written for the app developer reading it; it must never carry the
/// API key (no constructor takes one, and upstream error text is never embedded).
#[derive(Debug, Clone)]
pub struct GatewayError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: Cow<'static, str>,
    /// For 405: the methods the route takes, sent as `Allow`.
    pub allow: Option<&'static str>,
    /// For 429/503: whole seconds until a retry can succeed, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// A 405 naming the methods the route does take.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        GatewayError {
            kind: ErrorKind::MethodNotAllowed,
            message: Cow::Owned(format!("this route takes {allow}")),
            allow: Some(allow),
            retry_after: None,
        }
    }

    /// The JSON body, escaped by serde so a message can hold any text.
    pub fn body(&self) -> Bytes {
        let value = serde_json::json!({
            "error": { "code": self.kind.code(), "message": self.message }
        });
        Bytes::from(value.to_string())
    }

    /// The full response, with `x-cache` as given.
    pub fn to_response(&self, cache: &'static str) -> Response<Body> {
        let body = self.body();
        let mut response = Response::new(Body::full(body));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-cache", HeaderValue::from_static(cache));
        // Never stored by the gateway, so by no cache after it either.
        headers.insert(header::CACHE_CONTROL, crate::proxy::headers::NO_STORE);
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for GatewayError {}

/// The boxed error used where allocation does not matter (startup, body plumbing).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_decides_status_class() {
        let kinds = [
            ErrorKind::InvalidJobId,
            ErrorKind::InvalidBaseId,
            ErrorKind::InvalidWorkspaceId,
            ErrorKind::ConflictingScope,
            ErrorKind::BadRequest,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::PayloadTooLarge,
            ErrorKind::RequestTimeout,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::QuotaExhausted,
            ErrorKind::UpstreamRateLimited,
            ErrorKind::UpstreamBusy,
            ErrorKind::UpstreamUnreachable,
            ErrorKind::UpstreamInvalid,
            ErrorKind::UpstreamTooLarge,
            ErrorKind::UpstreamTimeout,
            ErrorKind::Internal,
        ];
        for kind in kinds {
            let status = kind.status().as_u16();
            match kind.source() {
                ErrorSource::Client => assert!((400..500).contains(&status), "{kind:?}"),
                ErrorSource::Upstream => assert!(status == 502 || status == 504, "{kind:?}"),
                ErrorSource::Internal => assert_eq!(status, 500),
                ErrorSource::Guard => assert!(status == 429 || status == 503, "{kind:?}"),
            }
        }
    }

    #[test]
    fn body_is_json_with_code_and_message() {
        let e = GatewayError::new(ErrorKind::InvalidJobId, "quote \" inside");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "invalid_job_id");
        assert_eq!(v["error"]["message"], "quote \" inside");
    }
}
