//! Bodies timed by their progress, not their length.
//!
//! `upstream.timeout` bounds each wait, as nginx's `proxy_send_timeout` and
//! `proxy_read_timeout` do: a large upload or download may take as long as it keeps
//! moving, and one that stops moving for the timeout is ended. Two wrappers:
//!
//! - [`Upload`] records, for a request body on its way upstream, when it last moved and
//!   whether it is waiting on the client, so the sender can tell a client that stopped
//!   sending (`408`) from an upstream that stopped reading (`504`) and start the answer
//!   deadline only once the body is all sent;
//! - [`Stalling`] ends an upstream response body with an error once the upstream has sent
//!   nothing for the timeout while the client was waiting for more (the client sees a
//!   cut body; time the client itself takes to read does not count).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use crate::body::Body;
use crate::error::{BoxError, ErrorKind, GatewayError};
use crate::guard::Slot;

/// Where an upload stands.
const SENDING: u8 = 0;
const WAITING_ON_CLIENT: u8 = 1;
const DONE: u8 = 2;

/// An upload's progress, shared by its body and its sender.
pub struct Progress {
    /// When the upload started; `last` counts from here.
    origin: Instant,
    /// Microseconds from `origin` to the last frame (or the end).
    last: AtomicU64,
    /// `SENDING`, `WAITING_ON_CLIENT` or `DONE`.
    state: AtomicU8,
}

impl Progress {
    fn touch(&self, state: u8) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.store(micros, Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// When the current wait runs out: `timeout` after the last frame moved, or after
    /// the body ended (then it is the wait for the answer).
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.origin + Duration::from_micros(self.last.load(Ordering::Acquire)) + timeout
    }

    /// The error for a wait that ran out.
    pub fn expired(&self) -> GatewayError {
        match self.state.load(Ordering::Acquire) {
            DONE => GatewayError::new(
                ErrorKind::UpstreamTimeout,
                "the upstream did not answer within upstream.timeout of the request's end",
            ),
            WAITING_ON_CLIENT => GatewayError::new(
                ErrorKind::RequestTimeout,
                "the request body stopped arriving for longer than upstream.timeout",
            ),
            _ => GatewayError::new(
                ErrorKind::UpstreamTimeout,
                "the upstream stopped reading the request body for longer than upstream.timeout",
            ),
        }
    }
}

/// Wakes the sender's task when the client's data arrives, noting that the upload no
/// longer waits on the client.
struct ClientWaker {
    progress: Arc<Progress>,
    inner: std::task::Waker,
}

impl std::task::Wake for ClientWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.progress.state.compare_exchange(
            WAITING_ON_CLIENT,
            SENDING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.inner.wake_by_ref();
    }
}

/// A request body on its way upstream, recording its [`Progress`].
pub struct Upload {
    inner: Body,
    progress: Arc<Progress>,
    /// The waker handed to the client's body, kept while the sender's waker is the same
    /// (it is, poll after poll): one allocation per upload, not per poll.
    waker: Option<(std::task::Waker, std::task::Waker)>,
}

impl Upload {
    /// Wraps `inner`; the returned progress is the sender's view of it.
    pub fn new(inner: Body) -> (Upload, Arc<Progress>) {
        let state = if http_body::Body::is_end_stream(&inner) {
            DONE
        } else {
            SENDING
        };
        let progress = Arc::new(Progress {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            state: AtomicU8::new(state),
        });
        let upload = Upload {
            inner,
            progress: Arc::clone(&progress),
            waker: None,
        };
        (upload, progress)
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Waiting on the client lasts only until its data arrives: the waker it will wake
        // marks the upload as moving again, so that a body whose data is there but that
        // hyper does not take (the upstream stopped reading) is the upstream's stall.
        let this = &mut *self;
        if !matches!(&this.waker, Some((sender, _)) if sender.will_wake(cx.waker())) {
            this.waker = None;
        }
        let progress = &this.progress;
        let (_, ours) = this.waker.get_or_insert_with(|| {
            let ours = std::task::Waker::from(Arc::new(ClientWaker {
                progress: Arc::clone(progress),
                inner: cx.waker().clone(),
            }));
            (cx.waker().clone(), ours)
        });
        let poll = Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(ours));
        match &poll {
            Poll::Ready(Some(Ok(_))) => {
                // hyper stops polling a body of known length once it says it has ended.
                let state = if self.inner.is_end_stream() {
                    DONE
                } else {
                    SENDING
                };
                self.progress.touch(state);
            }
            Poll::Ready(None) => self.progress.touch(DONE),
            Poll::Ready(Some(Err(_))) => {}
            Poll::Pending => self
                .progress
                .state
                .store(WAITING_ON_CLIENT, Ordering::Release),
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

/// A response body from the upstream that ends with an error after `timeout` without a
/// byte while it was being waited for.
pub struct Stalling<B> {
    inner: B,
    timeout: Duration,
    /// Allocated at the first wait and reset for each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is running for the current wait.
    armed: bool,
    /// Counts the bodies ended this way.
    stalls: Counter,
    /// Set once the error was returned: the body is over.
    ended: bool,
}

impl<B> Stalling<B> {
    /// Wraps an upstream body; a stall increments `stalls`.
    pub fn new(inner: B, timeout: Duration, stalls: Counter) -> Stalling<B> {
        Stalling {
            inner,
            timeout,
            timer: None,
            armed: false,
            stalls,
            ended: false,
        }
    }
}

impl<B> http_body::Body for Stalling<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = Instant::now() + this.timeout;
                    match this.timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let Some(timer) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.ended = true;
                        this.stalls.inc();
                        tracing::warn!(
                            timeout = ?this.timeout,
                            "the upstream stopped sending a body: it was cut"
                        );
                        Poll::Ready(Some(Err("the upstream stopped sending the body".into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A forwarded response body on its way to the client. It holds its upstream slot
/// (`upstream.max_streams`) to its end, and when the client reads nothing for
/// `server.send_timeout` (hyper stops asking for more: the socket or the HTTP/2 stream
/// window is full) a watchdog ends it: the upstream body and the slot are dropped, which
/// ends the upstream call, and the client's stream is cut at its next read.
pub struct Sending {
    state: Arc<SendState>,
}

/// Where a forwarded body stands.
enum Held {
    /// On its way: the body, and the upstream slot it holds (if any) until it is dropped.
    Sending { body: Body, _slot: Option<Slot> },
    /// Sent whole.
    Done,
    /// Ended by the watchdog.
    Cut,
}

struct SendState {
    held: std::sync::Mutex<Held>,
    origin: Instant,
    /// Microseconds from `origin` to the last time hyper asked for more.
    asked: AtomicU64,
    /// The last poll found the upstream slower than the client (then it is the
    /// upstream's stall, `Stalling`'s business, not the client's).
    waiting_upstream: std::sync::atomic::AtomicBool,
}

impl SendState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sending {
    /// Wraps `body`, keeping `slot` until it ends, and starts its watchdog.
    pub fn new(body: Body, slot: Option<Slot>, send_timeout: Duration, ended: Counter) -> Sending {
        let state = Arc::new(SendState {
            held: std::sync::Mutex::new(Held::Sending { body, _slot: slot }),
            origin: Instant::now(),
            asked: AtomicU64::new(0),
            waiting_upstream: std::sync::atomic::AtomicBool::new(false),
        });
        let watched = Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                let Some(state) = watched.upgrade() else {
                    return;
                };
                let asked =
                    state.origin + Duration::from_micros(state.asked.load(Ordering::Acquire));
                let deadline = asked + send_timeout;
                let now = Instant::now();
                let waiting = state.waiting_upstream.load(Ordering::Acquire);
                if now >= deadline && !waiting {
                    let mut held = state.lock();
                    if matches!(*held, Held::Sending { .. }) {
                        // Dropping the upstream body and the slot ends the call.
                        *held = Held::Cut;
                        ended.inc();
                        tracing::info!(
                            ?send_timeout,
                            "the client read nothing for server.send_timeout: the response was ended"
                        );
                    }
                    return;
                }
                drop(state);
                let next = if waiting {
                    now + send_timeout
                } else {
                    deadline
                };
                tokio::time::sleep_until(next).await;
            }
        });
        Sending { state }
    }
}

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let state = &self.state;
        let micros = u64::try_from(state.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        state.asked.store(micros, Ordering::Release);
        let mut held = state.lock();
        let body = match &mut *held {
            Held::Sending { body, .. } => body,
            Held::Done => return Poll::Ready(None),
            Held::Cut => {
                return Poll::Ready(Some(Err(
                    "the client read nothing for server.send_timeout".into()
                )))
            }
        };
        let poll = Pin::new(body).poll_frame(cx);
        state
            .waiting_upstream
            .store(poll.is_pending(), Ordering::Release);
        if let Poll::Ready(None) = poll {
            // Sent whole: the slot goes back now, not when hyper drops the body.
            *held = Held::Done;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        match &*self.state.lock() {
            Held::Sending { body, .. } => body.is_end_stream(),
            Held::Done => true,
            Held::Cut => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*self.state.lock() {
            Held::Sending { body, .. } => body.size_hint(),
            Held::Done => SizeHint::with_exact(0),
            Held::Cut => SizeHint::default(),
        }
    }
}

/// A body already in memory, handed out in slices of at most `piece` bytes (zero-copy
/// views of one `Bytes`). A large answer given to hyper whole would sit in an HTTP/2
/// stream's send buffer, out of [`Sending`]'s reach, for as long as the client keeps its
/// window shut; in slices, hyper takes only what the window lets it send.
pub struct Slices {
    rest: Bytes,
    piece: usize,
}

impl Slices {
    /// `bytes` in slices of `piece` bytes.
    pub fn new(bytes: Bytes, piece: usize) -> Slices {
        Slices {
            rest: bytes,
            piece: piece.max(1),
        }
    }
}

impl http_body::Body for Slices {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.rest.len().min(self.piece);
        let slice = self.rest.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}
