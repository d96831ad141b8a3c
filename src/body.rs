//! The response/request body type used throughout the gateway.
//!
//! Cache hits answer with a `Bytes` already in memory; boxing that into a trait object
//! would cost an allocation per hit on the hottest path, so the common cases are enum
//! variants and only streamed bodies (downloads, pass-through) pay for a box.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

use crate::error::BoxError;

/// A body that is either complete in memory or streamed.
pub enum Body {
    /// Nothing at all (HEAD, 204, redirects).
    Empty,
    /// One chunk already in memory; `None` once it has been sent.
    Full(Option<Bytes>),
    /// Anything streamed: upstream bodies passed through, client uploads.
    Stream(BoxBody<Bytes, BoxError>),
}

impl Body {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Body {
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    /// A streamed body from any `http_body::Body`.
    pub fn stream<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Body::Stream(body.map_err(Into::into).boxed())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(inner) => inner.size_hint(),
        }
    }
}
