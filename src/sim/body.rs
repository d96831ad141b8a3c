//! Response bodies: whole buffers, the streamed download, and the truncated fault.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Size of each `/download` frame.
pub(super) const DOWNLOAD_FRAME: usize = 64 * 1024;

/// The one 64 KiB block every download is made of, shared by all requests so
/// that a large download costs no allocation at all. It starts like a ZIP
/// local file header; the rest is a fixed byte pattern (byte `i` of the block
/// is `(i * 31 + 7) % 251` after the signature) so tests can check integrity.
pub(super) fn download_block() -> Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    BLOCK
        .get_or_init(|| {
            let mut v: Vec<u8> = (0..DOWNLOAD_FRAME)
                .map(|i| ((i * 31 + 7) % 251) as u8)
                .collect();
            v[..4].copy_from_slice(b"PK\x03\x04");
            Bytes::from(v)
        })
        .clone()
}

/// How long a truncated body waits after its first half before failing, so
/// that hyper flushes that half to the socket before it tears the connection
/// down.
const TRUNCATE_PAUSE: Duration = Duration::from_millis(50);

/// Every response body the simulator sends.
pub(super) enum SimBody {
    /// A complete buffer (`None` once sent).
    Full(Option<Bytes>),
    /// `remaining` bytes of the download, in [`DOWNLOAD_FRAME`] slices of
    /// [`download_block`].
    Download { remaining: usize },
    /// Announces `total` bytes, sends `first`, then fails after a pause.
    Truncated {
        total: u64,
        first: Option<Bytes>,
        pause: Pin<Box<Sleep>>,
        failed: bool,
    },
}

impl SimBody {
    /// A complete body.
    pub(super) fn full(b: impl Into<Bytes>) -> SimBody {
        SimBody::Full(Some(b.into()))
    }

    /// A body that announces `whole.len()` bytes but delivers only the first half.
    pub(super) fn truncated(whole: &Bytes) -> SimBody {
        SimBody::Truncated {
            total: whole.len() as u64,
            first: Some(whole.slice(..whole.len() / 2)),
            pause: Box::pin(tokio::time::sleep(TRUNCATE_PAUSE)),
            failed: false,
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Download { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(DOWNLOAD_FRAME);
                *remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(download_block().slice(..n)))))
            }
            SimBody::Truncated {
                first,
                pause,
                failed,
                ..
            } => {
                if let Some(b) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if *failed {
                    return Poll::Ready(None);
                }
                match pause.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        *failed = true;
                        // An error from the body makes hyper abandon the
                        // response and close the connection mid-body.
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "simulated truncated response",
                        ))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Download { remaining } => *remaining == 0,
            SimBody::Truncated { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            SimBody::Download { remaining } => SizeHint::with_exact(*remaining as u64),
            // The full length, so hyper announces it as Content-Length.
            SimBody::Truncated { total, .. } => SizeHint::with_exact(*total),
        }
    }
}
