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
    /// Close now: the client is too slow to send a head, or did not finish the goodbye.
    Abort,
}

/// Why the supervisor closed a connection, for `exagate_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A head (HTTP/1 request head, HTTP/2 preface and SETTINGS, or header block) took
    /// longer than `server.header_read_timeout`.
    HeadTimeout,
    /// No bytes either way for `server.idle_timeout`: closed gracefully.
    Idle,
    /// Asked to finish (idle or shutdown), the connection stayed quiet with nothing in
    /// flight for the goodbye grace: closed hard.
    GoodbyeTimeout,
    /// The gateway is stopping.
    Shutdown,
    /// The client read nothing of a response for `server.send_timeout`.
    SendTimeout,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HeadTimeout => "head_timeout",
            Reason::Idle => "idle",
            Reason::GoodbyeTimeout => "goodbye_timeout",
            Reason::Shutdown => "shutdown",
            Reason::SendTimeout => "send_timeout",
        }
    }

    fn from_u8(value: u8) -> Option<Reason> {
        match value {
            1 => Some(Reason::HeadTimeout),
            2 => Some(Reason::Idle),
            3 => Some(Reason::GoodbyeTimeout),
            4 => Some(Reason::Shutdown),
            5 => Some(Reason::SendTimeout),
            _ => None,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Reason::HeadTimeout => 1,
            Reason::Idle => 2,
            Reason::GoodbyeTimeout => 3,
            Reason::Shutdown => 4,
            Reason::SendTimeout => 5,
        }
    }
}

/// Longest wait, once a connection was asked to finish, for a client that neither sends
/// nor reads and has nothing in flight, before the connection is closed hard (Envoy's
/// drain and nginx's lingering close do the same): an HTTP/2 client that never answers
/// the GOAWAY's PING must not hold its connection open for ever.
const GOODBYE_GRACE: Duration = Duration::from_secs(5);

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
    /// Requests between their head and the end of their response (h2 streams run on
    /// other tasks, hence a real atomic here).
    in_flight: AtomicU32,
    /// The connection opened with the whole HTTP/2 preface: its heads are told by
    /// `h2_head_pending` and `h2_head`, not by the HTTP/1 rule.
    h2: AtomicBool,
    /// An HTTP/2 head (the preface and SETTINGS, or a header block) is incomplete.
    h2_head_pending: AtomicBool,
    /// Which HTTP/2 head that is (a new header block is a new wait).
    h2_head: AtomicU64,
    /// The last write found the socket full: the client is not reading.
    write_blocked: AtomicBool,
    /// A [`Verdict`] as a number, set by the supervisor.
    verdict: AtomicU8,
    /// The [`Reason`] of the last verdict, as a number (0: none).
    reason: AtomicU8,
    /// The connection task's waker, kept from its first poll.
    waker: OnceLock<Waker>,
}

impl Conn {
    /// Counts a read that returned `bytes`.
    pub fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let reads = self.reads.load(Ordering::Relaxed);
        self.reads.store(reads + 1, Ordering::Relaxed);
    }

    /// What the connection's [`H2Heads`](super::frames::H2Heads) tells after a read of an
    /// HTTP/2 connection: whether a head is pending, and which.
    pub fn on_h2(&self, head_pending: bool, head: u64) {
        self.h2.store(true, Ordering::Relaxed);
        self.h2_head_pending.store(head_pending, Ordering::Relaxed);
        self.h2_head.store(head, Ordering::Relaxed);
    }

    /// A write found the socket full (`true`) or took bytes (`false`).
    pub fn on_write_blocked(&self, blocked: bool) {
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Relaxed);
        }
    }

    /// Counts a write that took bytes.
    pub fn on_write(&self) {
        let writes = self.writes.load(Ordering::Relaxed);
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

    /// Why the supervisor closed this connection, if it did.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_u8(self.reason.load(Ordering::Acquire))
    }

    fn finishing(&self) -> bool {
        self.verdict.load(Ordering::Acquire) >= 1
    }

    fn decide(&self, verdict: Verdict, reason: Reason) {
        let value = match verdict {
            Verdict::Serve => 0,
            Verdict::Finish => 1,
            Verdict::Abort => 2,
        };
        // Only ever escalates: a connection told to abort is not later told to finish.
        if self.verdict.fetch_max(value, Ordering::AcqRel) < value {
            self.reason.store(reason.as_u8(), Ordering::Release);
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
    /// When the connection was first seen asked to finish.
    finishing_since: Option<Instant>,
}

/// Every connection of one listener, swept on a timer.
pub struct Supervisor {
    conns: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    timeouts: Timeouts,
}

/// The rules a supervisor enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `server.header_read_timeout`.
    pub head: Duration,
    /// `server.idle_timeout`.
    pub idle: Duration,
    /// `server.send_timeout`.
    pub send: Duration,
}

impl Supervisor {
    /// A supervisor enforcing these timeouts.
    pub fn new(timeouts: Timeouts) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            timeouts,
        })
    }

    /// How often to sweep: a quarter of the shortest timeout (so a connection is closed
    /// within a quarter past its deadline), between 10 ms and 1 s.
    pub fn tick(&self) -> Duration {
        let t = &self.timeouts;
        (t.head.min(t.idle).min(t.send) / 4)
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
                finishing_since: None,
            },
        );
        // Registered after a stop: finish at once (checked after the insert, so a stop
        // between the two is seen by one or the other).
        if self.stopping.load(Ordering::Acquire) {
            conn.decide(Verdict::Finish, Reason::Shutdown);
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
            tracked.conn.decide(Verdict::Finish, Reason::Shutdown);
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
            if let Some((verdict, reason)) = judge(tracked, now, &self.timeouts) {
                tracked.conn.decide(verdict, reason);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rules: a head must arrive within `header_read_timeout` of its first byte (or of the
/// connection opening), whatever protocol it is in; a client that reads nothing (the
/// socket full, nothing moving) for `send_timeout` is cut; no bytes either way for
/// `idle_timeout` ends the connection once its requests in flight are answered; a
/// connection asked to finish that then stays quiet with nothing in flight for the
/// goodbye grace is closed hard. `None`: keep serving.
fn judge(tracked: &mut Tracked, now: Instant, timeouts: &Timeouts) -> Option<(Verdict, Reason)> {
    let Timeouts {
        head: header,
        idle,
        send,
    } = *timeouts;
    let conn = &tracked.conn;
    let reads = conn.reads.load(Ordering::Relaxed);
    let writes = conn.writes.load(Ordering::Relaxed);
    if (reads, writes) != tracked.seen {
        tracked.seen = (reads, writes);
        tracked.quiet_since = now;
    }
    let in_flight = conn.in_flight.load(Ordering::Relaxed);
    let (waiting_for_head, head) = if conn.h2.load(Ordering::Relaxed) {
        (
            conn.h2_head_pending.load(Ordering::Relaxed),
            conn.h2_head.load(Ordering::Relaxed),
        )
    } else {
        // HTTP/1 (or not yet known): a head is pending when nothing is in flight and
        // bytes arrived since the last response (or none moved at all yet).
        let pending = in_flight == 0
            && ((reads == 0 && writes == 0) || reads > conn.reads_at_write.load(Ordering::Relaxed));
        (pending, writes)
    };
    if waiting_for_head {
        let since = match tracked.head_pending {
            Some((at, since)) if at == head => since,
            _ => {
                // First seen now; it may have begun up to a tick ago, which only makes
                // the deadline later, never earlier.
                tracked.head_pending = Some((head, now));
                now
            }
        };
        if now.duration_since(since) >= header {
            return Some((Verdict::Abort, Reason::HeadTimeout));
        }
    } else {
        tracked.head_pending = None;
    }
    // A client that reads nothing: the socket full and not a byte moved for the send
    // timeout. Closed whatever is in flight, as nginx's send_timeout does.
    if conn.write_blocked.load(Ordering::Relaxed) && now.duration_since(tracked.quiet_since) >= send
    {
        return Some((Verdict::Abort, Reason::SendTimeout));
    }
    if conn.finishing() {
        // The grace counts from the request to finish (first seen here) or the last byte
        // since, whichever is later.
        let asked = *tracked.finishing_since.get_or_insert(now);
        let calm = now.duration_since(tracked.quiet_since.max(asked));
        if in_flight == 0 && calm >= GOODBYE_GRACE.min(idle) {
            return Some((Verdict::Abort, Reason::GoodbyeTimeout));
        }
        // Requests still in flight that move nothing either way for the send timeout
        // do not keep it open either: HTTP/2 streams whose window the client keeps shut
        // (hyper waits for the window, never ends them, and holds their bodies), which
        // an outside review saw hold 115 MB until the client went away.
        if in_flight > 0 && calm >= send {
            return Some((Verdict::Abort, Reason::SendTimeout));
        }
        return None;
    }
    if now.duration_since(tracked.quiet_since) >= idle {
        tracked.finishing_since = Some(now);
        return Some((Verdict::Finish, Reason::Idle));
    }
    None
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
    use super::super::frames::H2Heads;
    use super::*;

    const LIMITS: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(60),
    };
    const SERVE: Option<(Verdict, Reason)> = None;

    #[test]
    fn every_reason_has_a_series_from_the_start() {
        let reasons: Vec<Reason> = (0..=u8::MAX).filter_map(Reason::from_u8).collect();
        assert_eq!(reasons.len(), crate::metrics::CLOSE_CAUSES.len());
        for reason in reasons {
            assert!(
                crate::metrics::CLOSE_CAUSES.contains(&reason.as_str()),
                "{reason:?}"
            );
        }
    }
    const HEAD_TIMEOUT: Option<(Verdict, Reason)> = Some((Verdict::Abort, Reason::HeadTimeout));

    fn tracked(now: Instant) -> Tracked {
        Tracked {
            conn: Arc::new(Conn::default()),
            seen: (0, 0),
            quiet_since: now,
            head_pending: None,
            finishing_since: None,
        }
    }

    fn after(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    /// What the server's IO does with client bytes on an HTTP/2 connection.
    fn h2_read(t: &Tracked, heads: &mut H2Heads, bytes: &[u8]) {
        t.conn.on_read(bytes);
        heads.feed(bytes);
        if heads.is_h2() {
            t.conn.on_h2(heads.head_pending(), heads.head_number());
        }
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An empty SETTINGS frame.
    const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

    #[test]
    fn a_head_pending_past_the_timeout_is_aborted() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HT");
        assert_eq!(judge(&mut t, after(t0, 1), &LIMITS), SERVE);
        t.conn.on_read(b"TP/1.1\r\n");
        assert_eq!(judge(&mut t, after(t0, 10), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 11), &LIMITS), HEAD_TIMEOUT);
    }

    #[test]
    fn each_head_after_a_response_gets_its_own_deadline() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HTTP/1.1\r\n");
        assert_eq!(judge(&mut t, after(t0, 1), &LIMITS), SERVE);
        // Answered and the next head begun between two sweeps: never seen idle.
        t.conn.on_write();
        t.conn.on_read(b"GET /next");
        assert_eq!(judge(&mut t, after(t0, 9), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 18), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 19), &LIMITS), HEAD_TIMEOUT);
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
            assert_eq!(judge(&mut t, after(t0, s), &LIMITS), SERVE);
        }
        drop(request);
        assert_eq!(judge(&mut t, after(t0, 31), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 42), &LIMITS), HEAD_TIMEOUT);
    }

    #[test]
    fn a_quiet_connection_is_finished_after_the_idle_timeout_then_closed_hard() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn.on_read(b"GET / HTTP/1.1\r\n\r\n");
        t.conn.on_write();
        assert_eq!(judge(&mut t, after(t0, 1), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 60), &LIMITS), SERVE);
        let finish = judge(&mut t, after(t0, 61), &LIMITS);
        assert_eq!(finish, Some((Verdict::Finish, Reason::Idle)));
        t.conn.decide(Verdict::Finish, Reason::Idle);
        // The goodbye (GOAWAY, PING) goes out; the client never answers it.
        t.conn.on_write();
        assert_eq!(judge(&mut t, after(t0, 62), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 66), &LIMITS), SERVE);
        assert_eq!(
            judge(&mut t, after(t0, 67), &LIMITS),
            Some((Verdict::Abort, Reason::GoodbyeTimeout))
        );
    }

    #[test]
    fn a_response_in_flight_is_not_cut_by_the_goodbye_grace() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn
            .on_read(b"GET /v2/extract/x/download HTTP/1.1\r\n\r\n");
        let streaming = t.conn.request();
        t.conn.decide(Verdict::Finish, Reason::Shutdown);
        for s in 1..30 {
            assert_eq!(judge(&mut t, after(t0, s), &LIMITS), SERVE);
        }
        // Once it is done (and the connection long quiet), nothing holds it open.
        drop(streaming);
        assert_eq!(
            judge(&mut t, after(t0, 30), &LIMITS),
            Some((Verdict::Abort, Reason::GoodbyeTimeout))
        );
    }

    #[test]
    fn the_h2_preface_and_settings_are_a_head_however_they_are_sent() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        let mut heads = H2Heads::default();
        // "PRI " and then a byte a second: timed as a head from the first byte.
        h2_read(&t, &mut heads, &PREFACE[..4]);
        assert_eq!(judge(&mut t, t0, &LIMITS), SERVE);
        for (s, b) in (1..10).zip(&PREFACE[4..]) {
            h2_read(&t, &mut heads, &[*b]);
            assert_eq!(judge(&mut t, after(t0, s), &LIMITS), SERVE);
        }
        assert_eq!(judge(&mut t, after(t0, 10), &LIMITS), HEAD_TIMEOUT);
    }

    #[test]
    fn h2_with_its_settings_in_is_timed_for_idleness_only() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        let mut heads = H2Heads::default();
        h2_read(&t, &mut heads, PREFACE);
        h2_read(&t, &mut heads, SETTINGS);
        t.conn.on_write();
        assert_eq!(judge(&mut t, after(t0, 1), &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 30), &LIMITS), SERVE);
        assert_eq!(
            judge(&mut t, after(t0, 62), &LIMITS),
            Some((Verdict::Finish, Reason::Idle))
        );
    }

    #[test]
    fn an_h2_header_block_left_open_is_a_slow_head() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        let mut heads = H2Heads::default();
        h2_read(&t, &mut heads, PREFACE);
        h2_read(&t, &mut heads, SETTINGS);
        // HEADERS without END_HEADERS, then a CONTINUATION (without it) every 5 s.
        h2_read(&t, &mut heads, b"\0\0\x01\x01\0\0\0\0\x01a");
        assert_eq!(judge(&mut t, t0, &LIMITS), SERVE);
        for s in [5, 10] {
            h2_read(&t, &mut heads, b"\0\0\x01\x09\0\0\0\0\x01b");
            let verdict = judge(&mut t, after(t0, s), &LIMITS);
            assert_eq!(
                verdict,
                if s < 10 { SERVE } else { HEAD_TIMEOUT },
                "at {s} s"
            );
        }
    }

    #[test]
    fn a_client_that_reads_nothing_is_cut_at_the_send_timeout() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        t.conn
            .on_read(b"GET /v2/extract/x/download HTTP/1.1\r\n\r\n");
        let _streaming = t.conn.request();
        t.conn.on_write();
        t.conn.on_write_blocked(true);
        assert_eq!(judge(&mut t, t0, &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, 59), &LIMITS), SERVE);
        assert_eq!(
            judge(&mut t, after(t0, 60), &LIMITS),
            Some((Verdict::Abort, Reason::SendTimeout))
        );
        // One that reads, however slowly, is not.
        let mut slow = tracked(t0);
        let _streaming = slow.conn.request();
        for s in 1..120 {
            slow.conn.on_write_blocked(true);
            if s % 30 == 0 {
                slow.conn.on_write();
                slow.conn.on_write_blocked(false);
            }
            assert_eq!(judge(&mut slow, after(t0, s), &LIMITS), SERVE, "at {s} s");
        }
    }

    #[test]
    fn a_finishing_connection_whose_streams_move_nothing_is_cut_at_the_send_timeout() {
        let t0 = Instant::now();
        let mut t = tracked(t0);
        let mut heads = H2Heads::default();
        h2_read(&t, &mut heads, PREFACE);
        h2_read(&t, &mut heads, SETTINGS);
        // A stream answered but never read: its window stays shut, nothing moves.
        let _stalled = t.conn.request();
        t.conn.on_write();
        let idle = LIMITS.idle.as_secs();
        let send = LIMITS.send.as_secs();
        assert_eq!(judge(&mut t, t0, &LIMITS), SERVE);
        assert_eq!(judge(&mut t, after(t0, idle - 1), &LIMITS), SERVE);
        assert_eq!(
            judge(&mut t, after(t0, idle), &LIMITS),
            Some((Verdict::Finish, Reason::Idle))
        );
        t.conn.decide(Verdict::Finish, Reason::Idle);
        assert_eq!(judge(&mut t, after(t0, idle + send - 1), &LIMITS), SERVE);
        assert_eq!(
            judge(&mut t, after(t0, idle + send), &LIMITS),
            Some((Verdict::Abort, Reason::SendTimeout))
        );
        // One whose streams still move bytes is left to finish them.
        let mut moving = tracked(t0);
        let _streaming = moving.conn.request();
        moving.conn.decide(Verdict::Finish, Reason::Idle);
        assert_eq!(judge(&mut moving, t0, &LIMITS), SERVE);
        for s in 1..(3 * send) {
            if s % 10 == 0 {
                moving.conn.on_write();
            }
            assert_eq!(judge(&mut moving, after(t0, s), &LIMITS), SERVE, "at {s} s");
        }
    }

    #[test]
    fn verdicts_only_escalate() {
        let conn = Conn::default();
        let waker = Waker::noop();
        conn.decide(Verdict::Abort, Reason::HeadTimeout);
        conn.decide(Verdict::Finish, Reason::Idle);
        assert_eq!(conn.verdict(waker), Verdict::Abort);
        assert_eq!(conn.reason(), Some(Reason::HeadTimeout));
    }
}
