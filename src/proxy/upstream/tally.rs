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
//! The same handle ends a connection the gateway has given up on (an answer that never
//! came, an upload that stalled): dropping hyper's response future does not stop the
//! connection's task, which would go on holding the upstream socket, and the client's
//! upload with it, until the far end let go.
//!
//! [`capture_connection`]: hyper_util::client::legacy::connect::capture_connection

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

/// One upstream connection's tally, and its off switch.
#[derive(Clone, Debug, Default)]
pub struct ReadTally(Arc<Watch>);

#[derive(Debug, Default)]
struct Watch {
    /// Bytes read since the gateway last began a write.
    read: AtomicU64,
    /// Set by [`ReadTally::abort`]: every read and write fails from then on.
    aborted: AtomicBool,
    /// The connection task, when it waits to read or to write.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl ReadTally {
    /// Whether nothing was read since the last write: for HTTP/1, since the request that
    /// failed was written (a connection carries one request at a time).
    pub fn silent_since_write(&self) -> bool {
        self.0.read.load(Ordering::Acquire) == 0
    }

    /// Ends the connection: its task wakes to an error and drops the socket.
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.reader.wake();
        self.0.writer.wake();
    }

    /// Fails an operation once aborted; else registers the task to be woken by `abort`.
    fn check(&self, waker: &AtomicWaker, cx: &Context<'_>) -> io::Result<()> {
        waker.register(cx.waker());
        if self.0.aborted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the gateway gave up on this upstream connection",
            ));
        }
        Ok(())
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
        if let Err(e) = this.tally.check(&this.tally.0.reader, cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.tally.0.read.fetch_add(read as u64, Ordering::AcqRel);
        }
        poll
    }
}

impl<S> Counted<S> {
    /// A write begins: what was read before it was the answer to an earlier request.
    /// (Reset when the write is attempted, not when it succeeds: a request whose write
    /// fails on a connection the far end closed got no answer either.)
    fn writing(&mut self, cx: &Context<'_>) -> io::Result<()> {
        self.tally.0.read.store(0, Ordering::Release);
        self.tally.check(&self.tally.0.writer, cx)
    }
}

impl<S: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.writing(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.writing(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.tally.check(&this.tally.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
