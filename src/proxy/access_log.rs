//! The access log: one structured line per request, written when the response is done.
//!
//! For answers already in memory that is at once; for streamed ones (downloads,
//! pass-through) the line waits for the last byte, so `bytes` and `duration_us` are the
//! real ones and a client that hangs up mid-download shows as `complete=false`. The
//! line holds the path (never the query), the client's configured name (never its
//! token), and nothing else a secret could hide in.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Frame, SizeHint};

use super::exchange::Exchange;
use crate::body::Body;
use crate::error::BoxError;

/// Everything the line says except the byte count.
pub struct AccessRecord {
    /// When the request arrived.
    pub started: Instant,
    /// Request method.
    pub method: Method,
    /// Request path, without the query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// What happened along the way.
    pub exchange: Exchange,
}

impl AccessRecord {
    /// Writes the line.
    pub fn emit(&self, bytes: u64, complete: bool) {
        let ex = &self.exchange;
        tracing::info!(
            target: "exagate::access",
            client = ex.client.as_ref().map(|c| tracing::field::display(&c.name)),
            method = %self.method,
            path = %self.path,
            status = self.status,
            cache = %ex.cache.as_str(),
            route = %ex.route,
            upstream_status = ex.upstream_status.map(|s| s.as_u16()),
            // Whole microseconds: integers format several times faster than floats,
            // and this runs once per request.
            upstream_us = ex.upstream_time.map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            coalesced = ex.coalesced,
            error = ex.error.map(tracing::field::display),
            bytes,
            complete,
            duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
}

/// Logs `record` now for a body in memory, or when a streamed body ends.
pub fn log_when_done(body: Body, record: AccessRecord) -> Body {
    match body {
        Body::Empty => {
            record.emit(0, true);
            Body::Empty
        }
        Body::Full(bytes) => {
            record.emit(bytes.as_ref().map_or(0, |b| b.len() as u64), true);
            Body::Full(bytes)
        }
        Body::Stream(inner) => Body::stream(Logged {
            inner: Body::Stream(inner),
            bytes: 0,
            record: Some(record),
        }),
    }
}

/// A streamed body that counts its bytes and writes the line at its end (or drop).
struct Logged {
    inner: Body,
    bytes: u64,
    record: Option<AccessRecord>,
}

impl Logged {
    fn finish(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes, complete);
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper stops polling once a body of known length has sent its last byte, so
        // "complete" is whether the body says it has ended, not whether `None` was seen;
        // otherwise the client went away mid-body.
        let complete = http_body::Body::is_end_stream(&self.inner);
        self.finish(complete);
    }
}
