//! A finished upstream answer, ready to be sent as many times as it is asked for.
//!
//! Everything that can be done once is done before the answer is stored: links are
//! rewritten, headers filtered, the body is one `Bytes` (and its gzip form, made once).
//! A hit then costs a header-map clone and a reference-count increment, not a copy of
//! the body.
//!
//! A stored answer is held in the cache by its gzip form alone where that saves memory
//! ([`packed`](super::packed)); its identity body is rebuilt once per entry for the
//! clients that take no gzip ([`copies`](super::copies), kept hot by the front table),
//! and clients that accept gzip are sent the stored bytes as they are.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::envelope::Envelope;
use super::key::CacheKey;
use super::policy::JobState;
use crate::body::Body;
use crate::proxy::headers;

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

/// Fixed cost charged per entry on top of its body forms (weighed by [`allocated`]): the
/// `Answer` struct and its `Arc`, its `ETag`, the key, moka's own bookkeeping (hash-table
/// slot, deque nodes, expiry timer) and the allocator's rounding of all of these. The
/// load harness's memory scenario, 100,000 jobs of 1-8 KB under mimalloc, measured 915 B
/// of RSS per entry beyond the body held compressed and 953 B uncompressed (a counting
/// allocator sees 502 B asked for: the rest is rounding and the allocator's pages), so
/// `cache.max_size` bounds real memory, not just bodies.
pub const ENTRY_OVERHEAD: usize = 928;

/// One upstream answer, shared by every request it serves.
#[derive(Debug)]
pub struct Answer {
    /// The upstream's status, unchanged.
    pub status: StatusCode,
    /// `Content-Type`, kept apart so a stored answer needs no header map of its own.
    pub content_type: ContentType,
    /// Other end-to-end headers: none for stored answers (see [`headers`]), everything
    /// for answers only shared among waiters (a 429 keeps its `Retry-After`). Boxed so a
    /// stored entry pays one pointer, not a whole map, for headers it does not have.
    ///
    /// [`headers`]: crate::proxy::headers::buffered_response
    pub headers: Option<Box<HeaderMap>>,
    /// The body, rewritten where it is a job, as clients that take no encoding get it;
    /// `None` in an entry the cache holds by its gzip form alone.
    identity: Option<Bytes>,
    /// The body gzip-compressed, for a stored answer where that saves memory.
    gzip: Option<Bytes>,
    /// The identity body's length.
    len: usize,
    /// The job's state when this is a 200 job answer (chunks use it to know they may be
    /// cached).
    pub job_state: Option<JobState>,
    /// When the upstream answer arrived (for `Age`).
    pub fetched_at: Instant,
    /// When the entry stops being true; `None` when it was not stored.
    pub expires_at: Option<Instant>,
    /// How long the upstream took, in microseconds, for the access log of the request
    /// that fetched it (32 bits: 70 minutes, far past any timeout; every entry carries it).
    pub upstream_micros: u32,
    /// Read from the shared tier or a snapshot rather than fetched by this process: it
    /// cost no upstream call, and is answered as a hit.
    pub restored: bool,
    /// A job's `ETag` (a digest of the body as sent), for `If-None-Match` and
    /// long-polls; `None` for other answers.
    pub etag: Option<HeaderValue>,
}

/// What an allocation of `len` bytes takes from the allocator: mimalloc rounds a request
/// up to its size class, four classes to each doubling above 64 bytes (so a body of
/// 2049 bytes takes 2560). Bodies of every length are cached, and weighing them by their
/// length alone undercounted the memory of a realistic mix by a tenth.
pub fn allocated(len: usize) -> usize {
    let words = len.div_ceil(8);
    if words <= 8 {
        return words * 8;
    }
    let below = words - 1;
    let step = 1usize << (below.ilog2() - 2);
    (below / step + 1) * step * 8
}

/// The strong `ETag` of a job body: 96 bits of its SHA-256, so every replica that sends
/// the same bytes names them alike.
fn etag_of(body: &[u8]) -> HeaderValue {
    let digest = crate::auth::sha256(body);
    let text = format!("\"{}\"", hex::encode(&digest[..12]));
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("\"\""))
}

/// An answer's `Content-Type`: JSON (nearly every answer) costs nothing to keep.
#[derive(Debug, Clone)]
pub enum ContentType {
    /// No content type.
    None,
    /// `application/json`.
    Json,
    /// Anything else, as the upstream sent it.
    Other(Box<HeaderValue>),
}

impl ContentType {
    fn from_header(value: Option<HeaderValue>, detach: bool) -> ContentType {
        match value {
            None => ContentType::None,
            Some(v) if v == "application/json" => ContentType::Json,
            // A stored value is copied out of the connection's read buffer.
            Some(v) if detach => {
                ContentType::Other(Box::new(HeaderValue::from_bytes(v.as_bytes()).unwrap_or(v)))
            }
            Some(v) => ContentType::Other(Box::new(v)),
        }
    }

    fn header(&self) -> Option<HeaderValue> {
        match self {
            ContentType::None => None,
            ContentType::Json => Some(HeaderValue::from_static("application/json")),
            ContentType::Other(v) => Some(HeaderValue::clone(v)),
        }
    }

    fn len(&self) -> usize {
        match self {
            ContentType::Other(v) => v.len(),
            _ => 0,
        }
    }
}

impl Answer {
    /// Assembles an answer. A stored one (`expires_at` set) is detached from the buffers
    /// hyper read it into: a 2 KB body or header value sliced out of a connection's
    /// read buffer would otherwise keep that whole buffer alive for as long as the entry
    /// lives.
    pub fn new(
        status: StatusCode,
        upstream_headers: &HeaderMap,
        body: Bytes,
        job_state: Option<JobState>,
        lifetime: Option<Duration>,
        upstream_time: Duration,
    ) -> Answer {
        // One clock read dates the answer and its expiry, so the `max-age` it is sent
        // with is its lifetime exactly, not a hair less.
        let fetched_at = Instant::now();
        let expires_at = lifetime.map(|ttl| fetched_at + ttl);
        let stored = expires_at.is_some();
        let mut headers = crate::proxy::headers::buffered_response(upstream_headers, stored);
        let content_type = ContentType::from_header(headers.remove(header::CONTENT_TYPE), stored);
        let body = if stored {
            Bytes::copy_from_slice(&body)
        } else {
            body
        };
        let etag = (status == StatusCode::OK && job_state.is_some()).then(|| etag_of(&body));
        Answer {
            etag,
            status,
            content_type,
            headers: (!headers.is_empty()).then(|| Box::new(headers)),
            gzip: None,
            len: body.len(),
            identity: Some(body),
            job_state,
            fetched_at,
            expires_at,
            upstream_micros: u32::try_from(upstream_time.as_micros()).unwrap_or(u32::MAX),
            restored: false,
        }
    }

    /// An answer read back from an envelope (the shared tier, a snapshot), with `body`
    /// (the envelope's, or that body rewritten for this gateway). It keeps its age and
    /// its expiry; `None` once expired at `now_ms`.
    pub fn restored(envelope: &Envelope, body: Bytes, now_ms: u64) -> Option<Answer> {
        let left = envelope.left(now_ms)?;
        let now = Instant::now();
        let fetched_at = now.checked_sub(envelope.age(now_ms)).unwrap_or(now);
        let content_type = envelope
            .content_type
            .clone()
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok());
        let etag = (envelope.status == StatusCode::OK && envelope.job_state.is_some())
            .then(|| etag_of(&body));
        Some(Answer {
            etag,
            status: envelope.status,
            content_type: ContentType::from_header(content_type, true),
            headers: None,
            gzip: None,
            len: body.len(),
            identity: Some(Bytes::copy_from_slice(&body)),
            job_state: envelope.job_state,
            fetched_at,
            expires_at: Some(now + left),
            upstream_micros: 0,
            restored: true,
        })
    }

    /// The same answer, as one that is not stored: what the requests of a fill that an
    /// invalidation overtook get, so no cache after the gateway keeps what it dropped.
    pub fn unstored(&self) -> Answer {
        Answer {
            expires_at: None,
            ..self.with_forms(self.identity.clone(), self.gzip.clone())
        }
    }

    /// This answer with the body held in the given forms (at least one of them).
    fn with_forms(&self, identity: Option<Bytes>, gzip: Option<Bytes>) -> Answer {
        Answer {
            status: self.status,
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            identity,
            gzip,
            len: self.len,
            job_state: self.job_state,
            fetched_at: self.fetched_at,
            expires_at: self.expires_at,
            upstream_micros: self.upstream_micros,
            restored: self.restored,
            etag: self.etag.clone(),
        }
    }

    /// This stored answer with a gzip form beside its identity body, if it has none yet
    /// and compressing saves memory ([`packed::pack`](super::packed::pack)).
    pub fn compressed(&self) -> Option<Answer> {
        if self.expires_at.is_none() || self.gzip.is_some() {
            return None;
        }
        let gzip = super::packed::pack(self.identity.as_deref()?)?;
        Some(self.with_forms(self.identity.clone(), Some(gzip)))
    }

    /// What the cache holds of this answer: its gzip form alone, when it has one.
    /// `None` when the answer is to be held as it is.
    pub fn packed(&self) -> Option<Answer> {
        let gzip = self.gzip.clone()?;
        self.identity
            .is_some()
            .then(|| self.with_forms(None, Some(gzip)))
    }

    /// This answer with `identity` as its identity body (the gzip form kept): a copy
    /// whose body was decompressed elsewhere (see [`copies`](super::copies)).
    pub fn with_identity(&self, identity: Bytes) -> Answer {
        self.with_forms(Some(identity), self.gzip.clone())
    }

    /// The gzip form, when there is one.
    pub fn gzip(&self) -> Option<&Bytes> {
        self.gzip.as_ref()
    }

    /// Whether the identity body is held (not only the gzip form).
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The identity body's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The identity body: held, or rebuilt from the gzip form (`None` if that fails).
    pub fn identity(&self) -> Option<Bytes> {
        match &self.identity {
            Some(body) => Some(body.clone()),
            None => super::packed::unpack(self.gzip.as_deref()?, self.len),
        }
    }

    /// Bytes this answer holds for its body, in all its forms, as the allocator hands
    /// them out (see [`allocated`]).
    pub fn held_bytes(&self) -> usize {
        let form = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| allocated(b.len()));
        form(&self.identity) + form(&self.gzip)
    }

    /// Whether an `If-None-Match` value names this answer (`*`, or one of its tags,
    /// weak or strong: the comparison for `If-None-Match` is the weak one).
    pub fn matches(&self, if_none_match: &HeaderValue) -> bool {
        let Some(etag) = &self.etag else {
            return false;
        };
        let Ok(tags) = if_none_match.to_str() else {
            return false;
        };
        let ours = etag.as_bytes();
        tags.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
    }

    /// `304 Not Modified`: this answer's headers, no body.
    pub fn not_modified(&self, cache: XCache, now: Instant, gzip: bool) -> Response<Body> {
        let mut response = self.respond(true, cache, now, gzip);
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_TYPE);
        // Representation metadata is not sent with a 304 (RFC 9110 15.4.5): a client
        // cache revalidating its identity copy must not take it for a gzip body.
        headers.remove(header::CONTENT_ENCODING);
        response
    }

    /// This stored answer as an envelope, dated against `now` and `now_ms` (the same
    /// moment on both clocks); `None` for an answer that is not stored or has expired.
    pub fn envelope(&self, now: Instant, now_ms: u64) -> Option<Envelope> {
        let expires_at = self.expires_at?;
        let left = expires_at.checked_duration_since(now)?;
        let age = now.saturating_duration_since(self.fetched_at);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Some(Envelope {
            status: self.status,
            content_type: self
                .content_type
                .header()
                .map(|v| Bytes::copy_from_slice(v.as_bytes())),
            job_state: self.job_state,
            fetched_at: now_ms.saturating_sub(ms(age)),
            expires_at: now_ms.saturating_add(ms(left)),
            body: self.identity()?,
        })
    }

    /// What this entry costs the cache, in bytes: the body in the forms held, headers,
    /// key and a fixed overhead.
    pub fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self.headers.as_deref().map_or(0, |h| {
            h.iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 32)
                .sum()
        });
        let content_type = self.content_type.len();
        let total = self.held_bytes() + headers + content_type + key.heap_bytes() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The response for one request at `now` (which dates a hit's `Age`). `head` drops
    /// the body but keeps its length. `gzip`: the client accepts gzip, and is sent the
    /// gzip form when there is one.
    ///
    /// An answer holding only its gzip form, for a client that does not take gzip, is
    /// rebuilt here; the cache hands out such answers already rebuilt, so this happens
    /// only if a caller did not ask it to, and a form that fails to decode is a `500`.
    pub fn respond(&self, head: bool, cache: XCache, now: Instant, gzip: bool) -> Response<Body> {
        let (sent, encoded) = match (&self.gzip, &self.identity) {
            (Some(packed), _) if gzip => (Some(packed.clone()), true),
            (_, Some(identity)) => (Some(identity.clone()), false),
            (Some(_), None) => (self.identity(), false),
            (None, None) => (None, false),
        };
        let Some(sent) = sent else {
            tracing::error!(
                status = self.status.as_u16(),
                "a stored answer's gzip form did not decode"
            );
            return crate::error::GatewayError::new(
                crate::error::ErrorKind::Internal,
                "a stored answer could not be read back",
            )
            .to_response(cache.as_str());
        };
        let length = sent.len();
        let body = if head { Body::Empty } else { Body::full(sent) };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        match &self.headers {
            Some(extra) => headers.clone_from(extra),
            // Room for exactly what follows: the map's table is sized in powers of two
            // from this, and a hit's six headers fit the table for six, half the one for
            // seven (a header map's entry is about a hundred bytes).
            None => headers.reserve(
                usize::from(!matches!(self.content_type, ContentType::None))
                    + usize::from(head)
                    + 1
                    + usize::from(encoded)
                    + usize::from(self.etag.is_some())
                    + match self.expires_at {
                        Some(_) => 3,
                        None => 1,
                    },
            ),
        }
        if let Some(content_type) = self.content_type.header() {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        // A full body's length is written by hyper itself; a HEAD answer states the
        // length the GET would have.
        if head {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        headers.insert(X_CACHE, cache.header());
        if encoded {
            headers.insert(header::CONTENT_ENCODING, GZIP);
        }
        if let Some(etag) = &self.etag {
            // The gzip form is another representation of the same job: its tag is the
            // weak one (as nginx makes it), which If-None-Match still matches.
            let etag = match encoded {
                true => weak(etag),
                false => etag.clone(),
            };
            headers.insert(header::ETAG, etag);
        }
        match self.expires_at {
            Some(expires_at) => {
                // `max-age` is the entry's whole lifetime and `Age` what has gone of it,
                // both in whole seconds, so that what a downstream cache computes as left
                // (`max-age - Age`) is the entry's own time left, rounded down: never
                // beyond its expiry. `Age` is thus the true age rounded up or down.
                let lifetime = expires_at
                    .saturating_duration_since(self.fetched_at)
                    .as_secs();
                let left = expires_at.saturating_duration_since(now).as_secs();
                let age_secs = lifetime.saturating_sub(left);
                headers.insert(header::CACHE_CONTROL, headers::private_max_age(lifetime));
                // With a gzip form, what is sent also depends on Accept-Encoding.
                let vary = match self.gzip.is_some() {
                    true => headers::VARY_SCOPE_ENCODING,
                    false => headers::VARY_SCOPE,
                };
                headers.insert(header::VARY, vary);
                if cache == XCache::Hit || age_secs > 0 {
                    headers.insert(header::AGE, headers::age(age_secs));
                }
            }
            None => {
                headers.insert(header::CACHE_CONTROL, headers::NO_STORE);
            }
        }
        response
    }
}

/// The `x-cache` header name.
const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// `Content-Encoding` of the gzip form.
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// The weak form of a strong `ETag`.
fn weak(etag: &HeaderValue) -> HeaderValue {
    let mut text = Vec::with_capacity(etag.len() + 2);
    text.extend_from_slice(b"W/");
    text.extend_from_slice(etag.as_bytes());
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| etag.clone())
}

/// What the cache's unit tests build answers from.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::Answer;

    /// A stored answer of `len` bytes of text, as moka holds it: by its gzip form alone.
    pub(crate) fn packed(len: usize) -> Arc<Answer> {
        let text: Vec<u8> = (0..len).map(|i| b"lorem ipsum "[i % 12]).collect();
        let full = Answer::new(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from(text),
            None,
            Some(Duration::from_secs(10)),
            Duration::ZERO,
        )
        .compressed()
        .expect("text compresses");
        Arc::new(full.packed().expect("a gzip form"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_round_to_mimallocs_size_classes() {
        for (len, class) in [
            (0, 0),
            (1, 8),
            (64, 64),
            (65, 80),
            (1000, 1024),
            (1025, 1280),
            (1500, 1536),
            (2048, 2048),
            (2049, 2560),
            (3000, 3072),
            (4097, 5120),
            (8192, 8192),
        ] {
            assert_eq!(allocated(len), class, "{len}");
        }
    }
}
