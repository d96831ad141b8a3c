//! Watching every connection from one place: the header-read timeout, the idle timeout
//! and the shutdown signal, with no timer and no extra future per connection.
//!
//! hyper's own header-read timeout arms a timer (an allocation, a wheel insert and a
//! removal) for every request, and a per-connection `select!` over a stop signal and an
//! idle timer polls both each time the connection wakes. On the hit path those were a
//! tenth of the gateway's CPU. Here a connection only bumps plain counters as bytes move
//! and requests start and end; a single supervisor task reads them a few times per
//! timeout and wakes the rare connection that must close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

/// What the supervisor asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving.
    Serve,
    /// Finish the request in flight, then close (idle, or shutting down).
    Finish,
    /// Close now: the client is too slow to send a request head.
    Abort,
}

/// One connection's counters, shared by its task (which writes them) and the
/// supervisor (which reads them).
#[derive(Default)]
pub struct Conn {
    /// Reads that returned bytes. Only the connection's task writes the byte counters,
    /// so they are bumped with a plain load and store, not a locked read-modify-write.
    reads: AtomicU64,
    /// Writes that took bytes.
    writes: AtomicU64,
    /// `reads` as it was at the last write: more reads since mean a request is arriving.
    reads_at_write: AtomicU64,
    /// Requests between their head and their response (h2 streams run on other tasks,
    /// hence a real atomic here).
    in_flight: AtomicU32,
    /// The connection opened with the HTTP/2 preface: no request heads to time.
    h2: AtomicBool,
    /// A [`Verdict`] as a number, set by the supervisor.
    verdict: AtomicU8,
    /// The connection task's waker, kept from its first poll.
    waker: OnceLock<Waker>,
}

impl Conn {
    /// Counts a read of `bytes`, the first ones of which are `start`.
    pub fn on_read(&self, start: &[u8]) {
        if start.is_empty() {
            return;
        }
        let reads = self.reads.load(Ordering::Relaxed);
        // "PRI " starts the HTTP/2 preface and no HTTP/1 request.
        if reads == 0 && start.starts_with(b"PRI ") {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.reads.store(reads + 1, Ordering::Relaxed);
    }

    /// Counts a write that took bytes, the first of which is `first`.
    pub fn on_write(&self, first: Option<u8>) {
        let writes = self.writes.load(Ordering::Relaxed);
        // An HTTP/1 server's first bytes are a status line, "HTTP/1.1 ..."; an HTTP/2
        // server's are a SETTINGS frame. This catches an h2 connection whose preface
        // arrived in pieces too small for `on_read` to recognise.
        if writes == 0 && first.is_some_and(|b| b != b'H') {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.writes.store(writes + 1, Ordering::Relaxed);
        self.reads_at_write
            .store(self.reads.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// What the supervisor wants; remembers `waker` on the first call so the supervisor
    /// can wake the task.
    pub fn verdict(&self, waker: &Waker) -> Verdict {
        self.waker.get_or_init(|| waker.clone());
        match self.verdict.load(Ordering::Acquire) {
            0 => Verdict::Serve,
            1 => Verdict::Finish,
            _ => Verdict::Abort,
        }
    }

    fn decide(&self, verdict: Verdict) {
        let value = match verdict {
            Verdict::Serve => 0,
            Verdict::Finish => 1,
            Verdict::Abort => 2,
        };
        // Only ever escalates: a connection told to abort is not later told to finish.
        if self.verdict.fetch_max(value, Ordering::AcqRel) < value {
            if let Some(waker) = self.waker.get() {
                waker.wake_by_ref();
            }
        }
    }
}

/// A request in flight on a connection; dropping it (answered, or abandoned) ends it.
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the supervisor remembers of a connection between sweeps.
struct Tracked {
    conn: Arc<Conn>,
    /// Byte counters at the last sweep, and since when they have not moved.
    seen: (u64, u64),
    quiet_since: Instant,
    /// The write count when a request head was first seen pending, and when: a new
    /// head after a response is a new wait, with its own deadline.
    head_pending: Option<(u64, Instant)>,
}

/// Every connection of one listener, swept on a timer.
pub struct Supervisor {
    conns: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Supervisor {
    /// A supervisor enforcing these timeouts.
    pub fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            header_read_timeout,
            idle_timeout,
        })
    }

    /// How often to sweep: a quarter of the shorter timeout (so a connection is closed
    /// within a quarter past its deadline), between 10 ms and 1 s.
    pub fn tick(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Starts watching a new connection; it is forgotten when the registration drops.
    pub fn register(self: &Arc<Self>) -> Registration {
        let conn = Arc::new(Conn::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Tracked {
                conn: Arc::clone(&conn),
                seen: (0, 0),
                quiet_since: Instant::now(),
                head_pending: None,
            },
        );
        // Registered after a stop: finish at once (checked after the insert, so a stop
        // between the two is seen by one or the other).
        if self.stopping.load(Ordering::Acquire) {
            conn.decide(Verdict::Finish);
        }
        Registration {
            id,
            conn,
            supervisor: Arc::clone(self),
        }
    }

    /// Asks every connection to finish its request in flight and close, now and for any
    /// connection registered later.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for tracked in self.lock().values() {
            tracked.conn.decide(Verdict::Finish);
        }
    }

    /// Sweeps every tick until the supervisor is the last owner (the listener is gone
    /// and every connection has ended).
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while Arc::strong_count(&self) > 1 {
            ticker.tick().await;
            self.sweep(Instant::now());
        }
    }

    /// Judges every connection at `now`.
    pub fn sweep(&self, now: Instant) {
        for tracked in self.lock().values_mut() {
            let verdict = judge(tracked, now, self.header_read_timeout, self.idle_timeout);
            if verdict != Verdict::Serve {
                tracked.conn.decide(verdict);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rules: a request head must arrive within `header_read_timeout` of its first byte
/// (or of the connection opening); no bytes either way for `idle_timeout` ends the
/// connection once its request in flight is answered.
fn judge(tracked: &mut Tracked, now: Instant, header: Duration, idle: Duration) -> Verdict {
    let conn = &tracked.conn;
    let reads = conn.reads.load(Ordering::Relaxed);
    let writes = conn.writes.load(Ordering::Relaxed);
    if (reads, writes) != tracked.seen {
        tracked.seen = (reads, writes);
        tracked.quiet_since = now;
    }
    let waiting_for_head = !conn.h2.load(Ordering::Relaxed)
        && conn.in_flight.load(Ordering::Relaxed) == 0
        && ((reads == 0 && writes == 0) || reads > conn.reads_at_write.load(Ordering::Relaxed));
    if waiting_for_head {
        let since = match tracked.head_pending {
            Some((at_writes, since)) if at_writes == writes => since,
            _ => {
                // First seen now; it may have begun up to a tick ago, which only makes
                // the deadline later, never earlier.
                tracked.head_pending = Some((writes, now));
                now
            }
        };
        if now.duration_since(since) >= header {
            return Verdict::Abort;
        }
    } else {
        tracked.head_pending = None;
    }
    if now.duration_since(tracked.quiet_since) >= idle {
        return Verdict::Finish;
    }
    Verdict::Serve
}

/// A connection's place in its supervisor.
pub struct Registration {
    id: u64,
    /// The counters the connection keeps.
    pub conn: Arc<Conn>,
    supervisor: Arc<Supervisor>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.supervisor.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    fn tracked(now: Instant) -> Tracked {
        Tracked {
            conn: Arc::new(Conn::default()),
            seen: (0, 0),
            quiet_since: now,
            head_pending: None,
        }
    }

    fn after(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_head_pending_past_the_timeout_is_aborted() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HT");
        assert_eq!(judge(&mut t, after(t0, 1), HEAD, IDLE), Verdict::Serve);
        t.conn.on_read(b"TP/1.1\r\n");
        assert_eq!(judge(&mut t, after(t0, 10), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 11), HEAD, IDLE), Verdict::Abort);
    }

    #[test]
    fn each_head_after_a_response_gets_its_own_deadline() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HTTP/1.1\r\n");
        assert_eq!(judge(&mut t, after(t0, 1), HEAD, IDLE), Verdict::Serve);
        // Answered and the next head begun between two sweeps: never seen idle.
        t.conn.on_write(Some(b'H'));
        t.conn.on_read(b"GET /next");
        assert_eq!(judge(&mut t, after(t0, 9), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 18), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 19), HEAD, IDLE), Verdict::Abort);
    }

    #[test]
    fn a_request_in_flight_is_not_a_slow_head() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"POST /v2/extract HTTP/1.1\r\n\r\n");
        let request = t.conn.request();
        // A long upload: reads go on, nothing is written until the answer.
        for s in 1..30 {
            t.conn.on_read(b"body");
            assert_eq!(judge(&mut t, after(t0, s), HEAD, IDLE), Verdict::Serve);
        }
        drop(request);
        assert_eq!(judge(&mut t, after(t0, 31), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 42), HEAD, IDLE), Verdict::Abort);
    }

    #[test]
    fn a_quiet_connection_is_finished_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HTTP/1.1\r\n\r\n");
        t.conn.on_write(Some(b'H'));
        assert_eq!(judge(&mut t, after(t0, 1), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 60), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 61), HEAD, IDLE), Verdict::Finish);
    }

    #[test]
    fn h2_is_only_timed_for_idleness() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(judge(&mut t, after(t0, 1), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 30), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 62), HEAD, IDLE), Verdict::Finish);
    }

    #[test]
    fn h2_is_recognised_by_its_first_write_too() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        // The preface split so that no single read shows it whole.
        t.conn.on_read(b"PR");
        t.conn.on_read(b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // The server's SETTINGS frame: length, then type 4.
        t.conn.on_write(Some(0));
        t.conn.on_read(b"\0\0\0\x04\x01\0\0\0\0");
        assert_eq!(judge(&mut t, after(t0, 1), HEAD, IDLE), Verdict::Serve);
        assert_eq!(judge(&mut t, after(t0, 30), HEAD, IDLE), Verdict::Serve);
    }

    #[test]
    fn verdicts_only_escalate() {
        let conn = Conn::default();
        let waker = Waker::noop();
        conn.decide(Verdict::Abort);
        conn.decide(Verdict::Finish);
        assert_eq!(conn.verdict(waker), Verdict::Abort);
    }
}
