//! The harness's own HTTP/1.1 client and load loops, on hyper's connection-level client:
//! one keep-alive connection per task, no pool, no retries, so what is timed is one
//! request on an open connection.
//!
//! - [`closed_loop`]: each connection sends its next request when the previous answer is
//!   in (wrk's model). Used to fill the cache for the memory scenario, and for throughput
//!   when wrk is not installed.
//! - [`open_loop`]: requests are sent on a fixed schedule whatever the server does, so a
//!   slow answer cannot hide the requests that should have been sent meanwhile
//!   (coordinated omission). This is what wrk2 does; wrk2 is not in Debian.
//! - [`sequential`]: one request at a time, timed one by one (miss overhead).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
    host: HeaderValue,
    extra: HeaderMap,
}

/// An answer read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Conn {
    /// Connects to `addr`; every request carries `extra` (e.g. the simulator's key).
    pub async fn open(addr: SocketAddr, extra: HeaderMap) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; either is fine here.
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
            extra,
        })
    }

    /// `GET path`, body read to the end.
    pub async fn get(&mut self, path: &str) -> Result<Reply, BoxError> {
        let mut request = Request::get(path).body(Empty::new())?;
        let headers = request.headers_mut();
        // hyper's connection-level client adds no Host; nginx refuses HTTP/1.1 without.
        headers.insert(http::header::HOST, self.host.clone());
        for (name, value) in &self.extra {
            headers.insert(name, value.clone());
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// What a load loop saw.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Answers with status 200.
    pub ok: u64,
    /// Other statuses, connection errors.
    pub errors: u64,
    /// Body bytes of the 200 answers.
    pub body_bytes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Per-request latency in microseconds (unsorted).
    pub latencies_us: Vec<u32>,
    /// `x-cache: hit` answers.
    pub hits: u64,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.body_bytes += other.body_bytes;
        self.hits += other.hits;
        self.latencies_us.extend(other.latencies_us);
    }

    fn record(&mut self, reply: Result<Reply, BoxError>, latency: Duration) {
        match reply {
            Ok(r) if r.status == StatusCode::OK => {
                self.ok += 1;
                self.body_bytes += r.body.len() as u64;
                if r.header("x-cache") == "hit" {
                    self.hits += 1;
                }
            }
            _ => self.errors += 1,
        }
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Requests per second (all answers).
    pub fn rps(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        quantile(&mut self.latencies_us, q)
    }
}

/// The `q` quantile (nearest rank) of `values`, sorting them in place.
pub fn quantile(values: &mut [u32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    f64::from(values[rank - 1])
}

/// When a closed loop stops.
#[derive(Clone, Copy)]
pub enum Stop {
    /// After this long, cycling through the paths.
    After(Duration),
    /// When every path has been asked once.
    EachOnce,
}

/// `conns` connections, each sending its next request when the previous answer is in.
pub async fn closed_loop(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    conns: usize,
    stop: Stop,
) -> Result<LoadResult, BoxError> {
    closed_loop_with(addr, paths, conns, stop, HeaderMap::new()).await
}

/// [`closed_loop`], every request carrying `headers`.
pub async fn closed_loop_with(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    conns: usize,
    stop: Stop,
    headers: HeaderMap,
) -> Result<LoadResult, BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut conn = Conn::open(addr, headers.clone()).await?;
        let paths = Arc::clone(&paths);
        let next = Arc::clone(&next);
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let path = match stop {
                    Stop::EachOnce if i >= paths.len() => break,
                    Stop::EachOnce => &paths[i],
                    Stop::After(d) if started.elapsed() >= d => break,
                    Stop::After(_) => &paths[i % paths.len()],
                };
                let t0 = Instant::now();
                let reply = conn.get(path).await;
                let failed = reply.is_err();
                result.record(reply, t0.elapsed());
                if failed {
                    // The connection is likely gone; a fresh one keeps the load going.
                    match Conn::open(addr, headers.clone()).await {
                        Ok(c) => conn = c,
                        Err(_) => break,
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        total.merge(task.await?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// `conns` connections sending `rate` requests per second between them, for `duration`,
/// on a fixed schedule (staggered across connections).
///
/// A request's latency is counted from the moment it was due when its connection was
/// still busy with the previous answer at that moment (the server made it wait), and
/// from the moment it was sent otherwise. The second case is what keeps the tokio
/// timer's 1 ms granularity out of the figures: a timer that wakes late delays the
/// send, not the server, and is the same for every server measured.
pub async fn open_loop(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    conns: usize,
    rate: f64,
    duration: Duration,
) -> Result<LoadResult, BoxError> {
    let period = Duration::from_secs_f64(conns as f64 / rate.max(1.0));
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(addr, HeaderMap::new()).await?);
    }
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = t0 + duration;
    // The rate is counted over the schedule, not over the connection set-up before it.
    let started = t0.into_std();
    let mut tasks = Vec::with_capacity(conns);
    for (c, mut conn) in opened.into_iter().enumerate() {
        let paths = Arc::clone(&paths);
        let offset = period.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut k: u32 = 0;
            let mut i = c * 7919;
            loop {
                let due = t0 + offset + period * k;
                if due >= end {
                    break;
                }
                k += 1;
                let now = tokio::time::Instant::now();
                let start = if now > due + Duration::from_millis(1) {
                    // Behind schedule: the previous answer came in after this one was
                    // due. The wait is the server's doing.
                    due.into_std()
                } else {
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                };
                i = (i + 1) % paths.len();
                let reply = conn.get(&paths[i]).await;
                let failed = reply.is_err();
                result.record(reply, start.elapsed());
                if failed {
                    match Conn::open(addr, HeaderMap::new()).await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => break,
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        total.merge(task.await?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One request at a time on one connection: each path's latency in microseconds, in
/// order, and the answers' `x-cache` values.
pub async fn sequential(
    conn: &mut Conn,
    paths: &[String],
) -> Result<(Vec<u32>, Vec<String>), BoxError> {
    let mut latencies = Vec::with_capacity(paths.len());
    let mut cache = Vec::with_capacity(paths.len());
    for path in paths {
        let t0 = Instant::now();
        let reply = conn.get(path).await?;
        let took = t0.elapsed();
        if reply.status != StatusCode::OK {
            return Err(format!("{path}: status {}", reply.status).into());
        }
        latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        cache.push(reply.header("x-cache").to_string());
    }
    Ok((latencies, cache))
}
