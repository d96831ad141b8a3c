//! Accepting connections and serving them with hyper (HTTP/1.1 and h2, with
//! or without TLS), including the connection-level faults.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{handlers, Inner};

/// How long connections may finish a response in flight after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);
/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lets a request handler act on its connection.
#[derive(Default)]
pub(super) struct ConnCtl {
    /// Close with RST (zero linger) rather than FIN.
    rst: AtomicBool,
    /// Wakes the connection task to drop the connection at once.
    abort: tokio::sync::Notify,
}

impl ConnCtl {
    /// Resets the connection: it is dropped right away, and the socket sends
    /// RST instead of FIN.
    pub(super) fn reset(&self) {
        self.rst.store(true, Ordering::SeqCst);
        // notify_one keeps a permit if the task is not waiting yet.
        self.abort.notify_one();
    }
}

/// The accepted socket, which hyper (or TLS) owns; its `Drop` turns a normal
/// close into a reset when [`ConnCtl::reset`] was called. hyper gives a
/// service no access to the socket, so this is where that can happen.
struct SimIo {
    tcp: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for SimIo {
    fn drop(&mut self) {
        if self.ctl.rst.load(Ordering::SeqCst) {
            // Zero linger: close() discards unsent data and sends RST.
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Accepts connections until shutdown, then waits for every connection task.
pub(super) async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = inner.shutdown_requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    conns.spawn(serve(inner.clone(), tcp, tls.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under load: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
        // Reap finished connections so the set does not grow under load.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Serves one accepted connection.
async fn serve(inner: Arc<Inner>, tcp: TcpStream, tls: Option<TlsAcceptor>) {
    // Small JSON responses must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let ctl = Arc::new(ConnCtl::default());
    let io = SimIo {
        tcp,
        ctl: ctl.clone(),
    };
    match tls {
        None => drive(inner, ctl, TokioIo::new(io)).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)) => r,
                () = inner.shutdown_requested() => return,
            };
            match handshake {
                Ok(Ok(stream)) => drive(inner, ctl, TokioIo::new(stream)).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "simulator TLS handshake failed"),
                Err(_) => tracing::debug!("simulator TLS handshake timed out"),
            }
        }
    }
}

/// Runs hyper on `io` until the client leaves, a reset fault drops the
/// connection, or shutdown (with a short grace period).
async fn drive<I>(inner: Arc<Inner>, ctl: Arc<ConnCtl>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc_inner = inner.clone();
    let svc_ctl = ctl.clone();
    let service = service_fn(move |req| handlers::handle(svc_inner.clone(), svc_ctl.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::trace!(error = %e, "simulator connection ended with an error");
            }
            return;
        }
        // Dropping `conn` drops the socket, which SimIo turns into an RST.
        () = ctl.abort.notified() => return,
        () = inner.shutdown_requested() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}
