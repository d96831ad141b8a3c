//! A finished upstream answer, ready to be sent as many times as it is asked for.
//!
//! Everything that can be done once is done before the answer is stored: links are
//! rewritten, headers filtered, the body is one `Bytes`. A hit then costs a header-map
//! clone and a reference-count increment, not a copy of the body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::key::CacheKey;
use super::policy::JobState;
use crate::body::Body;

/// The `x-cache` outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XCache {
    /// Answered from memory.
    Hit,
    /// Looked up, not found, fetched (or joined a fetch already under way).
    Miss,
    /// A route that is never cached.
    Bypass,
}

impl XCache {
    /// The header value and the label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            XCache::Hit => "hit",
            XCache::Miss => "miss",
            XCache::Bypass => "bypass",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Fixed cost charged per entry on top of its bytes: the `Answer` struct, its `Arc`, the
/// header map's table and moka's own bookkeeping (measured roughly; see the README).
pub const ENTRY_OVERHEAD: usize = 384;

/// One upstream answer, shared by every request it serves.
#[derive(Debug)]
pub struct Answer {
    /// The upstream's status, unchanged.
    pub status: StatusCode,
    /// End-to-end headers to send; `content-length` is derived from `body`.
    pub headers: HeaderMap,
    /// The body, rewritten where it is a job.
    pub body: Bytes,
    /// The job's state when this is a 200 job answer (chunks use it to know they may be
    /// cached).
    pub job_state: Option<JobState>,
    /// When the upstream answer arrived (for `Age`).
    pub fetched_at: Instant,
    /// When the entry stops being true; `None` when it was not stored.
    pub expires_at: Option<Instant>,
    /// How long the upstream took, for the access log of the request that fetched it.
    pub upstream_time: Duration,
}

impl Answer {
    /// What this entry costs the cache, in bytes: body, headers, key and a fixed overhead.
    pub fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        let total = self.body.len() + headers + key.heap_bytes() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The response for one request. `head` drops the body but keeps its length.
    pub fn respond(&self, head: bool, cache: XCache) -> Response<Body> {
        let body = if head {
            Body::Empty
        } else {
            Body::full(self.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        headers.insert("x-cache", cache.header());
        if cache == XCache::Hit {
            headers.insert(
                header::AGE,
                HeaderValue::from(self.fetched_at.elapsed().as_secs()),
            );
        }
        response
    }
}
