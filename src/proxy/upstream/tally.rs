//! Knowing whether any byte of an answer came back on a failed request.
//!
//! A GET that failed may be sent again only if the upstream said nothing at all (a pooled
//! connection the far end had just closed); once part of an answer arrived, the upstream
//! has seen and acted on the request, and resending it would count twice. hyper reports
//! both cases as the same "connection closed before message completed", so each upstream
//! connection carries a tally of the bytes read since the gateway last wrote on it, read
//! back through the connection's metadata ([`capture_connection`]) when a request fails.
//! It counts above TLS: a close_notify or session ticket is not an answer.
//!
//! [`capture_connection`]: hyper_util::client::legacy::connect::capture_connection

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

/// Bytes read on one connection since the gateway last wrote on it.
#[derive(Clone, Debug, Default)]
pub struct ReadTally(Arc<AtomicU64>);

impl ReadTally {
    /// Whether nothing was read since the last write: for HTTP/1, since the request that
    /// failed was written (a connection carries one request at a time).
    pub fn silent_since_write(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// A connector whose connections keep a [`ReadTally`].
#[derive(Clone)]
pub struct Tallied<C>(pub C);

/// A connection that keeps its tally (a tokio stream over the inner connection).
pub struct Counted<S> {
    inner: TokioIo<S>,
    tally: ReadTally,
}

impl<C> Service<Uri> for Tallied<C>
where
    C: Service<Uri>,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = TokioIo<Counted<C::Response>>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let inner = connecting.await?;
            Ok(TokioIo::new(Counted {
                inner: TokioIo::new(inner),
                tally: ReadTally::default(),
            }))
        })
    }
}

impl<S: Connection + hyper::rt::Read + hyper::rt::Write + Unpin> Connection for Counted<S> {
    fn connected(&self) -> Connected {
        self.inner.inner().connected().extra(self.tally.clone())
    }
}

impl<S: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.tally.0.fetch_add(read as u64, Ordering::AcqRel);
        }
        poll
    }
}

impl<S: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            if n > 0 {
                this.tally.0.store(0, Ordering::Release);
            }
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            if n > 0 {
                this.tally.0.store(0, Ordering::Release);
            }
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
