//! Shared test harness: the simulated Extract API and a gateway in front of it, both
//! in-process on ephemeral loopback ports, and a real hyper client to call them.
#![allow(dead_code)] // each test file uses its own subset

pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use exagate::secret::{ApiKey, KeySource};
use exagate::sim::{SimOptions, Simulator};
use exagate::{Config, RunningGateway};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

/// The key the simulator requires and the gateway injects. Distinctive, so a leak
/// check can search output for it.
pub const KEY: &str = "exa-test-key-7f3c9d2e41b8a6";

/// An answer read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `x-cache` header.
    pub fn cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The gateway's error code, for its own JSON errors.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_string()
    }
}

/// A simulator, a gateway in front of it, and a client.
pub struct Harness {
    pub sim: Simulator,
    pub gateway: RunningGateway,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub config: Config,
}

/// The config the harness uses: short timeouts so failure tests stay fast.
pub fn test_config() -> Config {
    let mut config = Config::defaults();
    config.upstream.timeout = Duration::from_secs(2);
    config.upstream.connect_timeout = Duration::from_millis(500);
    config.server.shutdown_timeout = Duration::from_secs(5);
    config.server.drain_delay = Duration::ZERO;
    // Tests bind their own admin listener when they need one.
    config.admin.listen = None;
    config
}

/// A simulator with the test key and a fast schedule.
pub async fn start_sim(tls: bool) -> Simulator {
    Simulator::start(SimOptions {
        api_key: KEY.to_string(),
        tls,
        pending_for: Duration::from_millis(300),
        processing_for: Duration::from_millis(300),
        download_size: 3 * 1024 * 1024,
        ..SimOptions::default()
    })
    .await
    .expect("simulator starts")
}

/// Starts a gateway in front of `sim` with `config` (its listen address and public URL
/// are set to the ephemeral port bound here).
pub async fn start_gateway(sim: &Simulator, config: Config) -> RunningGateway {
    start_gateway_at(&sim.url(), config).await
}

/// Starts a gateway in front of the upstream at `upstream` (a [`RawUpstream`], say).
pub async fn start_gateway_at(upstream: &str, mut config: Config) -> RunningGateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    config.server.listen = addr;
    config.server.public_url = format!("http://{addr}");
    config.upstream.url = upstream.to_string();
    config.validate().expect("valid test config");
    let key = ApiKey::from_secret(KEY, KeySource::Env("TEST".into())).expect("key");
    let admin = match config.admin.listen {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin")),
        None => None,
    };
    exagate::start(exagate::Launch {
        admin,
        ..exagate::Launch::in_memory(config, key, listener)
    })
    .expect("gateway starts")
}

impl Harness {
    /// Simulator + gateway with the test config.
    pub async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    /// Simulator + gateway, with the test config adjusted by `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let sim = start_sim(false).await;
        let mut config = test_config();
        adjust(&mut config);
        let gateway = start_gateway(&sim, config.clone()).await;
        Harness {
            sim,
            gateway,
            client: client(),
            config,
        }
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        self.gateway.url()
    }

    /// GET a gateway path.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    /// GET a gateway path (owned, for many concurrent requests).
    pub async fn get_owned(&self, path: String) -> Reply {
        self.get(&path).await
    }

    /// GET a gateway path in a base.
    pub async fn get_in(&self, base: uuid::Uuid, path: &str) -> Reply {
        let base = base.to_string();
        self.send(
            Method::GET,
            path,
            &[("x-exabase-base-id", &base)],
            Bytes::new(),
        )
        .await
    }

    /// Any request to the gateway.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        send(
            &self.client,
            method,
            &format!("{}{path}", self.url()),
            headers,
            body,
        )
        .await
    }
}

impl Harness {
    /// GET an admin path (the admin listener must be on).
    pub async fn admin_get(&self, path: &str) -> Reply {
        let url = format!(
            "{}{path}",
            self.gateway.admin_url().expect("admin listener on")
        );
        send(&self.client, Method::GET, &url, &[], Bytes::new()).await
    }

    /// Any request to the admin listener.
    pub async fn admin_send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!(
            "{}{path}",
            self.gateway.admin_url().expect("admin listener on")
        );
        send(&self.client, method, &url, headers, Bytes::new()).await
    }

    /// The value of one metric series from `/metrics`, e.g.
    /// `exagate_requests_total{route="job",status="200",cache="hit",client=""}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_of(&self.gateway, series).await
    }
}

/// The value of one metric series on `gw`'s admin listener (which must be on).
pub async fn metric_of(gw: &RunningGateway, series: &str) -> f64 {
    let url = format!("{}/metrics", gw.admin_url().expect("admin listener on"));
    let reply = send(&client(), Method::GET, &url, &[], Bytes::new()).await;
    metric_value(&String::from_utf8_lossy(&reply.body), series)
}

/// Finds `series` in a Prometheus text exposition; 0 when absent (a counter not yet
/// touched).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with `client` and reads the answer whole.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("the gateway answers within 20 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A fresh directory under the system's temp dir, removed with everything in it when the
/// returned value is dropped (pass or fail: a panic unwinds through the drop). Keep it
/// bound for as long as anything (a gateway, a child process) uses files in it.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exagate-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A loopback port free at the time of asking (for configs written before binding);
/// see [`exagate::sim::free_port`] for why not `bind(0)`.
pub fn free_port() -> u16 {
    exagate::sim::free_port().expect("free port")
}

/// Waits (up to 5 s) until something accepts on `port`; panics otherwise.
pub async fn wait_listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port} after 5 s");
}

/// An HTTP/2 (cleartext) connection to `addr` whose stream windows are 0: the client
/// never takes a byte of any body. Returns the request sender and the connection's
/// task, which ends when the server closes the connection.
pub async fn h2_shut_windows(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    (sender, tokio::spawn(connection))
}

/// The path of a job.
pub fn job_path(id: uuid::Uuid) -> String {
    format!("/v2/extract/{id}")
}

/// A spawned process, killed (and reaped) when dropped, so a failing test leaves no
/// process behind. Derefs to the `Child`.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hand-written upstream on a loopback port, for misbehaviour the simulator does not
/// play (a head cut off mid-line, a body that stops): each accepted connection is handed
/// to `serve` with its number (0, 1, ...). Stops when dropped.
pub struct RawUpstream {
    pub addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(serve: F) -> RawUpstream
    where
        F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        RawUpstream::start_on(0, serve).await
    }

    /// As [`start`](Self::start), on a given loopback port (0: any free one).
    pub async fn start_on<F, Fut>(port: u16, serve: F) -> RawUpstream
    where
        F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(n, stream));
            }
        });
        RawUpstream {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that reads each request head, never answers, and reports on the returned
/// channel each time the gateway closes such a connection.
pub async fn silent_upstream() -> (RawUpstream, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let upstream = RawUpstream::start(move |_, mut stream| {
        let closed = closed_tx.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let _ = read_head(&mut stream).await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            let _ = closed.send(());
        }
    })
    .await;
    (upstream, closed_rx)
}

/// Answers the request whose `head` was read from `stream` with the completed job its
/// path names (a nil id if it names none), then closes the connection.
pub async fn answer_job(stream: &mut tokio::net::TcpStream, head: &str) {
    answer_job_created(stream, head, None).await;
}

/// [`answer_job`], with the job's `createdAt` at `created` when given (a job created a
/// moment ago is stored; the default date is long past retention).
pub async fn answer_job_created(
    stream: &mut tokio::net::TcpStream,
    head: &str,
    created: Option<time::OffsetDateTime>,
) {
    use tokio::io::AsyncWriteExt;
    let id = head
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.rsplit('/').next())
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
        .unwrap_or_default();
    let mut body = completed_job_json(id, "http://upstream.invalid");
    if let Some(created) = created {
        let date = created
            .format(&time::format_description::well_known::Rfc3339)
            .expect("date");
        body = body.replace("2026-01-01T00:00:00Z", &date);
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `GET path` on a running gateway, read whole.
pub async fn get_from(gw: &RunningGateway, path: &str) -> Reply {
    send(
        &client(),
        Method::GET,
        &format!("{}{path}", gw.url()),
        &[],
        Bytes::new(),
    )
    .await
}

/// Reads one request head (to the blank line) from `stream`; `None` at end of stream.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The JSON of a completed job `id` whose links point at `origin`, as the API sends it.
pub fn completed_job_json(id: uuid::Uuid, origin: &str) -> String {
    format!(
        r#"{{"id":"{id}","state":"completed","createdAt":"2026-01-01T00:00:00Z","links":{{"self":"{origin}/v2/extract/{id}","download":"{origin}/v2/extract/{id}/download","chunks":"{origin}/v2/extract/{id}/chunks"}}}}"#
    )
}

/// Runs the `exagate` binary with `args`, then `--config config`, with `env` added (and
/// `RUST_LOG` removed, so the config's level rules): whether it succeeded, and all it
/// printed (stdout, then stderr).
pub fn run_exagate(
    args: &[&str],
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_exagate"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("run exagate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
