//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, optional TLS,
//! connection limits, and graceful shutdown.
//!
//! Timeouts and the shutdown signal reach connections through one [`Supervisor`] per
//! listener (see `supervise`). On shutdown or idleness a connection is asked for a
//! graceful shutdown (finish the request in flight, then close; GOAWAY on h2), so
//! neither draining nor idling ever cuts a response short; a client too slow to send a
//! request head is cut at once. The connection semaphore doubles as the count of open
//! connections, which is how shutdown knows when they are all done.

mod frames;
mod supervise;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::config::ServerConfig;
use crate::gateway::Gateway;
use crate::metrics::CauseLabels;
use crate::proxy::handler;
use crate::tls::TlsTerminator;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use frames::{H2Heads, Seen};
use supervise::{Conn, Supervisor, Timeouts, Verdict};

/// Most concurrent HTTP/2 streams on one client connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Connection-level settings, fixed for the listener's life.
#[derive(Clone)]
pub struct ServerLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Time to send a request head.
    pub header_read_timeout: Duration,
    /// No bytes either way for this long closes a connection.
    pub idle_timeout: Duration,
    /// A client that reads nothing for this long is cut.
    pub send_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_timeout: Duration,
}

impl ServerLimits {
    /// The limits from `[server]`.
    pub fn from_config(config: &ServerConfig) -> ServerLimits {
        ServerLimits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            send_timeout: config.send_timeout,
            max_header_bytes: usize::try_from(config.max_header_bytes).unwrap_or(usize::MAX),
            shutdown_timeout: config.shutdown_timeout,
        }
    }
}

/// What answers requests on a listener: the gateway's handler, or the admin routes.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails (every error is an answer).
    fn call(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;

    /// Where connections the server closes are counted, by reason (none: not counted).
    fn connections_closed(&self) -> Option<Family<CauseLabels, Counter>> {
        None
    }
}

/// The public listener's handler.
impl Handler for Gateway {
    fn call(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        handler::handle_from(self, request, Some(peer.ip()))
    }

    fn connections_closed(&self) -> Option<Family<CauseLabels, Counter>> {
        Some(self.metrics.connections_closed.clone())
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting and
/// gives in-flight requests up to `limits.shutdown_timeout` to finish.
pub async fn serve<H: Handler>(
    handler: Arc<H>,
    listener: TcpListener,
    tls: Option<Arc<TlsTerminator>>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1: without one hyper arms no header-read timer per request; the
    // supervisor enforces that timeout instead.
    builder
        .http1()
        // hyper's floor is 8 KiB; the head must fit in this buffer.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        // h2's keep-alive pings need it; h2 has no per-request head timer.
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // As nginx's http2_max_concurrent_streams: one connection cannot hold more
        // requests (and upstream calls) than this at once.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let supervisor = Supervisor::new(Timeouts {
        head: limits.header_read_timeout,
        idle: limits.idle_timeout,
        send: limits.send_timeout,
    });
    tokio::spawn(Arc::clone(&supervisor).run());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first: at the limit, new connections wait in the kernel's queue.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of
                    // spinning, the way mini-redis does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let builder = Arc::clone(&builder);
        let tls = tls.clone();
        let supervisor = Arc::clone(&supervisor);
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => run_connection(&builder, &supervisor, stream, peer, handler).await,
                Some(tls) => {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(handshake_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            run_connection(&builder, &supervisor, stream, peer, handler).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    supervisor.stop();
    tracing::info!("no longer accepting; finishing in-flight requests");
    // Every connection holds a slot: when all are back, every connection has closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_timeout,
            "in-flight requests outlived server.shutdown_timeout"
        );
    }
}

/// Serves one connection until it ends, doing what the supervisor decides: a graceful
/// shutdown when idle or stopping, an immediate close for a too-slow request head.
async fn run_connection<I, H: Handler>(
    builder: &auto::Builder<TokioExecutor>,
    supervisor: &Arc<Supervisor>,
    io: I,
    peer: std::net::SocketAddr,
    handler: Arc<H>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let registration = supervisor.register();
    let conn = Arc::clone(&registration.conn);
    let closed = handler.connections_closed();
    let service = service_fn(move |request| {
        // Counted from here until the answer is sent (a streamed body to its end), or
        // the request is abandoned: a connection asked to finish is not closed hard
        // while a response is still on its way.
        let in_flight = conn.request();
        let response = Arc::clone(&handler).call(request, peer);
        async move {
            let response = response.await;
            let (parts, body) = response.into_parts();
            let body = match body {
                Body::Stream(inner) => Body::stream(Holding {
                    inner: Body::Stream(inner),
                    _in_flight: in_flight,
                }),
                done => done,
            };
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    });
    let io = Watched {
        inner: io,
        conn: Arc::clone(&registration.conn),
        frames: Some(H2Heads::default()),
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut finishing = false;
    let result = std::future::poll_fn(|cx| {
        match registration.conn.verdict(cx.waker()) {
            Verdict::Serve => {}
            Verdict::Finish => {
                if !finishing {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            Verdict::Abort => {
                tracing::debug!(
                    reason = registration.conn.reason().map(|r| r.as_str()),
                    "connection closed hard"
                );
                return Poll::Ready(Ok(()));
            }
        }
        connection.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    if let (Some(closed), Some(reason)) = (closed, registration.conn.reason()) {
        closed
            .get_or_create(&CauseLabels {
                cause: reason.as_str(),
            })
            .inc();
    }
}

/// A streamed response body that keeps its request counted as in flight until it ends.
struct Holding {
    inner: Body,
    _in_flight: supervise::InFlight,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An IO that tells its connection's counters when bytes move, and follows an HTTP/2
/// client's frames far enough to time its heads.
struct Watched<T> {
    inner: T,
    conn: Arc<Conn>,
    /// Fed every read until the bytes show the connection is not HTTP/2.
    frames: Option<H2Heads>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(read) = buf.filled().get(before..) {
            this.conn.on_read(read);
            if let (Some(frames), false) = (this.frames.as_mut(), read.is_empty()) {
                match frames.feed(read) {
                    Seen::NotH2 => this.frames = None,
                    Seen::H2 if frames.is_h2() => {
                        this.conn.on_h2(frames.head_pending(), frames.head_number());
                    }
                    Seen::H2 => {}
                }
            }
        }
        poll
    }
}

impl<T> Watched<T> {
    /// Tells the counters what a write did: took bytes, or found the socket full.
    fn wrote(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.conn.on_write();
                self.conn.on_write_blocked(false);
            }
            Poll::Pending => self.conn.on_write_blocked(true),
            Poll::Ready(_) => {}
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
