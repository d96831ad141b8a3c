//! A simulated Exabase Extract API, for integration tests, benchmarks and demos.
//!
//! [`Simulator::start`] binds a loopback port and serves the `/v2/` routes that
//! exagate sits in front of (see `exabase-api.md`), with jobs that the test
//! itself creates ([`Simulator::add_job`], [`Simulator::add_progressing`], ...),
//! faults it can switch on ([`Fault`]) and counters of what reached it
//! ([`Simulator::calls`], [`Simulator::requests`]).
//!
//! It sends webhooks like the real API: when a job reaches `completed`, and on
//! `POST /v2/extract/{id}/webhook/trigger`, it POSTs the job's body to the
//! webhook URL of the job's scope (or the workspace's), retrying failures on
//! [`SimOptions::webhook_retry`]; [`Simulator::webhooks`] shows every attempt.
//! It only ever contacts loopback URLs: any other is refused unsent.
//!
//! It is deliberately small: everything lives in memory, nothing is persisted,
//! and it only ever listens on a loopback address.
#![warn(missing_docs)]

mod body;
mod faults;
mod handlers;
mod ports;
mod server;
mod store;
mod text;
pub use text::Rng;
mod tls;
mod webhooks;

pub use ports::free_port;
pub use webhooks::WebhookAttempt;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use faults::Fault;

use faults::FaultState;
use store::{JobState, Jobs, RenderCtx, Schedule};

/// How job bodies are padded: each to a length in `min..=max` bytes (log-uniform
/// between them, fixed by the job's id); `0..=0` is no padding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Padding {
    /// The shortest padded body.
    pub min: usize,
    /// The longest padded body.
    pub max: usize,
}

impl Padding {
    /// Every body padded to `bytes`.
    pub fn fixed(bytes: usize) -> Padding {
        Padding {
            min: bytes,
            max: bytes,
        }
    }
}

impl std::str::FromStr for Padding {
    type Err = String;

    /// `2048` (every body) or `1024-8192` (a spread).
    fn from_str(s: &str) -> Result<Padding, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("not a byte count: {t:?}"))
        };
        match s.split_once('-') {
            None => number(s).map(Padding::fixed),
            Some((min, max)) => {
                let (min, max) = (number(min)?, number(max)?);
                if min > max {
                    return Err(format!("{min} is more than {max}"));
                }
                Ok(Padding { min, max })
            }
        }
    }
}

/// How many [`RecordedRequest`]s are kept for [`Simulator::requests`].
///
/// Counters ([`Simulator::calls`], [`Simulator::calls_to`]) cover every request;
/// only the detailed log is bounded, so that a long load test does not grow
/// the simulator's memory without limit.
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// How many [`WebhookAttempt`]s are kept for [`Simulator::webhooks`], for the
/// same reason as [`MAX_RECORDED_REQUESTS`]; [`Simulator::webhooks_acked`]
/// counts them all.
pub const MAX_RECORDED_WEBHOOKS: usize = 10_000;

/// How the simulator is started.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The `X-Api-Key` every request must carry; a wrong or missing key gets
    /// `401 {"message":"Unauthorized"}`.
    pub api_key: String,
    /// Serve HTTPS with a self-signed certificate for `localhost` and
    /// `127.0.0.1` (see [`Simulator::ca_pem`]), advertising ALPN `h2` and `http/1.1`.
    pub tls: bool,
    /// How long a job created by `POST /v2/extract` (or
    /// [`Simulator::add_progressing`], or a reprocess) reads `pending`.
    pub pending_for: Duration,
    /// How long it then reads `processing` before it reads `completed`.
    pub processing_for: Duration,
    /// Size in bytes of every `/download` body.
    pub download_size: usize,
    /// Where to listen. Must be a loopback address; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Sign the CDN links in job bodies (S3 SigV4 style: `X-Amz-Date` + `X-Amz-Expires`)
    /// for this long from each render; `None` (the default): links whose expiry cannot
    /// be read, as the API's examples show them.
    pub link_lifetime: Option<Duration>,
    /// Send webhooks (on completion and on trigger). Off, the settings are
    /// still stored and the trigger still answers, but nothing is sent.
    pub send_webhooks: bool,
    /// How long a webhook receiver may take to answer before the attempt
    /// counts as failed.
    pub webhook_timeout: Duration,
    /// The pause before each retry of a failed webhook delivery: one retry per
    /// entry, then it gives up. Empty: no retries.
    pub webhook_retry: Vec<Duration>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            api_key: "sim-key".to_owned(),
            tls: false,
            pending_for: Duration::from_secs(2),
            processing_for: Duration::from_secs(3),
            download_size: 4 * 1024 * 1024,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            link_lifetime: None,
            send_webhooks: true,
            webhook_timeout: Duration::from_secs(5),
            // Backoff, doubling, as the real API retries.
            webhook_retry: [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
        }
    }
}

/// One request as it reached the simulator (faulted ones included).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: http::Method,
    /// Path and query string exactly as received, e.g. `/v2/extract?limit=5`.
    pub path_and_query: String,
    /// All request headers.
    pub headers: http::HeaderMap,
    /// Number of request body bytes received.
    pub body_len: usize,
}

/// Counters of what reached the simulator.
#[derive(Default)]
struct RequestLog {
    calls: usize,
    /// Requests per distinct path-and-query; `calls_to` sums the matching keys.
    /// Distinct keys are few (one per job id and window) even under load.
    by_path: HashMap<String, usize>,
    recent: VecDeque<RecordedRequest>,
}

/// State shared by the public handle, the accept loop and every connection.
struct Inner {
    api_key: String,
    origin: String,
    download_size: usize,
    jobs: Jobs,
    faults: Mutex<FaultState>,
    log: Mutex<RequestLog>,
    webhooks: webhooks::Webhooks,
    /// Flipped to `true` once by [`Simulator::shutdown`]; every task watches it.
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn record(&self, req: RecordedRequest) {
        let mut log = lock(&self.log);
        log.calls += 1;
        *log.by_path.entry(req.path_and_query.clone()).or_insert(0) += 1;
        if log.recent.len() >= MAX_RECORDED_REQUESTS {
            log.recent.pop_front();
        }
        log.recent.push_back(req);
    }

    /// Resolves once shutdown has been requested.
    async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        // An error means the sender is gone, which also means "stop".
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data stays consistent even if
/// a holder panicked (every critical section is a few plain assignments), and a
/// test helper must not cascade one panic into every later request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulated Exabase Extract API.
///
/// A cheap, cloneable handle. The server keeps running when the last handle is
/// dropped; call [`Simulator::shutdown`] to stop it.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    ca_pem: Option<Arc<str>>,
    /// The accept loop and, with webhooks on, the webhook sender; taken (and
    /// awaited) by [`Simulator::shutdown`].
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("url", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `opts.addr` and starts serving in a background task.
    ///
    /// Fails with `InvalidInput` if `opts.addr` is not a loopback address: the
    /// simulator accepts a fixed, well-known key and must never be reachable
    /// from another machine.
    pub async fn start(opts: SimOptions) -> io::Result<Simulator> {
        if !opts.addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the simulator only listens on loopback, not {}", opts.addr),
            ));
        }
        let listener = tokio::net::TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_pem) = if opts.tls {
            let setup = tls::self_signed(addr.ip())?;
            (Some(setup.acceptor), Some(Arc::<str>::from(setup.ca_pem)))
        } else {
            (None, None)
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let origin = format!("{scheme}://{addr}");
        let ctx = RenderCtx {
            origin: origin.clone(),
            workspace_id: store::new_uuid().to_string(),
            user_id: store::new_uuid().to_string(),
            link_lifetime: opts.link_lifetime,
        };
        let schedule = Schedule {
            pending_for: opts.pending_for,
            processing_for: opts.processing_for,
        };
        let (shutdown, _) = watch::channel(false);
        let (hooks, queue) = webhooks::Webhooks::new(opts.send_webhooks);
        let inner = Arc::new(Inner {
            api_key: opts.api_key,
            origin,
            download_size: opts.download_size,
            jobs: Jobs::new(ctx, schedule, opts.send_webhooks),
            faults: Mutex::new(FaultState::default()),
            log: Mutex::new(RequestLog::default()),
            webhooks: hooks,
            shutdown,
        });
        let mut tasks = vec![tokio::spawn(server::accept_loop(
            inner.clone(),
            listener,
            acceptor,
        ))];
        if let Some(queue) = queue {
            let policy = webhooks::Policy {
                timeout: opts.webhook_timeout,
                retry: opts.webhook_retry,
            };
            tasks.push(tokio::spawn(webhooks::run(inner.clone(), queue, policy)));
        }
        Ok(Simulator {
            inner,
            addr,
            ca_pem,
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its origin, `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without
    /// a trailing slash.
    pub fn url(&self) -> String {
        self.inner.origin.clone()
    }

    /// The PEM of its self-signed certificate (add it to a root store to trust
    /// the server), or `None` without TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.as_deref().map(str::to_owned)
    }

    /// Stops accepting, closes every connection (requests held by
    /// [`Fault::Silent`] included), stops sending webhooks (deliveries in
    /// flight and pending retries are dropped) and waits for that to finish.
    ///
    /// Open connections get a short grace period to finish a response in
    /// flight. Calling it again is harmless.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Adds a job with a fixed `state` (`None` is served as JSON `null`) and
    /// the given `createdAt`, in scope `base` (`None` is the workspace).
    pub fn add_job(
        &self,
        base: Option<Uuid>,
        state: Option<&str>,
        created_at: OffsetDateTime,
    ) -> Uuid {
        self.inner
            .jobs
            .add(base, JobState::Fixed(state.map(str::to_owned)), created_at)
    }

    /// Adds a `completed` job created a minute ago.
    pub fn add_completed(&self, base: Option<Uuid>) -> Uuid {
        let created = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        self.add_job(base, Some("completed"), created)
    }

    /// Adds a job created now that reads `pending`, then `processing`, then
    /// `completed`, on the schedule of [`SimOptions`]; reaching `completed`
    /// sends its webhook.
    pub fn add_progressing(&self, base: Option<Uuid>) -> Uuid {
        let state = JobState::Progressing {
            since: Instant::now(),
        };
        self.inner.jobs.add(base, state, OffsetDateTime::now_utc())
    }

    /// Adds `n` completed jobs (as [`Simulator::add_completed`]) and returns
    /// their ids, oldest first.
    pub fn seed_completed(&self, base: Option<Uuid>, n: usize) -> Vec<Uuid> {
        (0..n).map(|_| self.add_completed(base)).collect()
    }

    /// Makes `GET /v2/extract/{id}` in scope `base` answer exactly `body`
    /// (for odd bodies: a mismatched id, missing fields, invalid JSON...).
    ///
    /// The job's state for `/chunks`, `/download`, reprocess and list filters is
    /// read from the body's `"state"` when it is a JSON object; it appears in
    /// lists only if the body is valid JSON. [`Simulator::set_state`] and a
    /// reprocess replace the odd body with a normal one.
    pub fn add_job_with_body(&self, base: Option<Uuid>, id: Uuid, body: Bytes) {
        self.inner.jobs.add_raw(base, id, body);
    }

    /// Sets the fixed state of job `id` (`None` is served as JSON `null`),
    /// stopping its progression if it had one. Unknown ids are ignored.
    ///
    /// Setting `completed` on a job that did not read `completed` counts as
    /// its completion: its webhook is sent (within a tick of the sender, 50 ms).
    pub fn set_state(&self, id: Uuid, state: Option<&str>) {
        self.inner.jobs.set_state(id, state.map(str::to_owned));
    }

    /// Pads `extraction.common.caption` with prose so that the body of every job
    /// that has an extraction (`completed`, `cleaned`) is about `bytes` long; 0
    /// (the default) turns padding off. Bodies without an extraction are not
    /// padded.
    pub fn set_padding(&self, bytes: usize) {
        self.inner.jobs.set_padding(Padding::fixed(bytes));
    }

    /// Pads as [`set_padding`](Self::set_padding) does, each job to a length of
    /// its own in `padding` (log-uniform, fixed by the job's id).
    pub fn set_padding_spread(&self, padding: Padding) {
        self.inner.jobs.set_padding(padding);
    }

    /// `Some(url)`: `/download` answers `302 Location: url` instead of bytes.
    pub fn set_download_redirect(&self, to: Option<String>) {
        self.inner.jobs.set_redirect(to);
    }

    /// Applies `fault` to every request from now on, until changed.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.inner.faults).set(fault, None);
    }

    /// Applies `fault` to the next `count` requests only, then goes back to
    /// [`Fault::None`].
    pub fn set_fault_for(&self, fault: Fault, count: usize) {
        lock(&self.inner.faults).set(fault, Some(count));
    }

    /// Number of requests received since start or the last
    /// [`Simulator::reset_counters`], faulted and rejected ones included.
    pub fn calls(&self) -> usize {
        lock(&self.inner.log).calls
    }

    /// Number of those requests whose path-and-query starts with `path_prefix`
    /// (e.g. `/v2/extract/<id>` also counts its `/chunks` and `/download`).
    pub fn calls_to(&self, path_prefix: &str) -> usize {
        lock(&self.inner.log)
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// The requests received, oldest first (at most the last
    /// [`MAX_RECORDED_REQUESTS`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.log).recent.iter().cloned().collect()
    }

    /// Zeroes [`Simulator::calls`], [`Simulator::calls_to`] and clears
    /// [`Simulator::requests`] (not [`Simulator::webhooks`]).
    pub fn reset_counters(&self) {
        *lock(&self.inner.log) = RequestLog::default();
    }

    /// The webhook delivery attempts so far, in the order their outcomes were
    /// known (at most the last [`MAX_RECORDED_WEBHOOKS`]).
    pub fn webhooks(&self) -> Vec<WebhookAttempt> {
        self.inner.webhooks.attempts()
    }

    /// How many webhook attempts were answered 2xx (all of them, unlike the
    /// bounded [`Simulator::webhooks`]).
    pub fn webhooks_acked(&self) -> usize {
        self.inner.webhooks.acked()
    }
}

/// Runs a simulator for external load tools until Ctrl-C.
///
/// The scope the simulator serves for `X-Exabase-Workspace-Id: id`, the API's earlier
/// name for the scope header: a scope of its own, apart from the workspace and from the
/// base `id` (whether the real API still honours it is unknown; playing it as distinct
/// is what lets tests show the gateway never mixes it with either). Pass it where the
/// `add_*` methods take a base.
pub fn legacy_scope(id: Uuid) -> Uuid {
    // Any fixed bijection that never maps an id to itself.
    Uuid::from_u128(id.as_u128() ^ 0x5eed_0000_0000_0000_0000_0000_0000_5eed)
}

/// Starts it with `opts`, adds `jobs` completed jobs in the workspace scope,
/// prints its URL and then every job id to stdout, one per line, and shuts it
/// down on Ctrl-C.
pub async fn run_standalone(opts: SimOptions, jobs: usize) -> io::Result<()> {
    let sim = Simulator::start(opts).await?;
    let ids = sim.seed_completed(None, jobs);
    {
        // Not println!: it panics when stdout is a closed pipe (`| head`).
        let mut out = io::stdout().lock();
        writeln!(out, "{}", sim.url())?;
        for id in &ids {
            writeln!(out, "{id}")?;
        }
        out.flush()?;
    }
    let waited = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    waited
}
