//! The upstream client: one pooled hyper-util client over rustls, the key injected into
//! every request, deadlines applied, and every failure mapped to a [`GatewayError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::Scope;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::stall::{Progress, Sending, Stalling, Upload};
use crate::body::Body;
use crate::config::{http_origin, Origin, UpstreamConfig};
use crate::error::{BoxError, ErrorKind, GatewayError};
use crate::guard::cooldown::parse_retry_after;
use crate::guard::{Lane, Slot, Token, UpstreamGuard};
use crate::metrics::Metrics;
use crate::secret::ApiKey;
use tally::{ReadTally, Tallied};

mod tally;

/// The header carrying the key upstream.
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// An upstream answer read to the end.
#[derive(Debug)]
pub struct Fetched {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers, unfiltered.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Time from sending to the last byte.
    pub elapsed: Duration,
}

/// The gateway's TLS client config: rustls with ring, the public roots plus the
/// certificates of `ca_file`. For the upstream, and for what else the gateway calls
/// (webhook subscribers, the account's settings).
pub fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, BoxError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots(ca_file)?)
    .with_no_client_auth())
}

/// The public roots, plus the certificates of `ca_file` (`upstream.ca_file`: a private CA
/// in front of the API, or the tests' simulator).
fn roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, BoxError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(
                format!("upstream.ca_file {}: no certificate in it", path.display()).into(),
            );
        }
    }
    Ok(roots)
}

/// The pooled client for the Extract API.
pub struct UpstreamClient {
    /// hyper-util's pooled client; HTTP/1.1 or HTTP/2 as ALPN decides.
    client: Client<Tallied<HttpsConnector<HttpConnector>>, Body>,
    /// Scheme, host and path prefix of the API.
    origin: Origin,
    /// The team's key, injected into every request.
    key: ApiKey,
    /// `upstream.timeout`: the bound on each wait (see [`send`](Self::send)).
    timeout: Duration,
    /// Largest body read into memory.
    max_body: u64,
    /// Quota, 429 cooldown and concurrency slots; shared across reloads.
    guard: Arc<UpstreamGuard>,
    /// Where upstream calls are counted and timed.
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    /// Builds the client: TLS roots (the public ones plus `ca_file`), connect timeout,
    /// pool idle timeout (with the timer hyper-util needs for it to apply at all).
    pub fn new(
        config: &UpstreamConfig,
        key: ApiKey,
        guard: Arc<UpstreamGuard>,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, BoxError> {
        let origin = http_origin(&config.url)?;
        let tls = client_tls(config.ca_file.as_deref())?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = Tallied(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(https);
        Ok(UpstreamClient {
            client,
            origin,
            key,
            timeout: config.timeout,
            max_body: config.max_body,
            guard,
            metrics,
        })
    }

    /// Largest body read into memory (`upstream.max_body`).
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The absolute upstream URI for a gateway path and query.
    fn uri(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        Uri::builder()
            .scheme(self.origin.scheme.clone())
            .authority(self.origin.authority.clone())
            .path_and_query(format!("{}{}", self.origin.prefix, path_and_query))
            .build()
            .map_err(|_| GatewayError::new(ErrorKind::BadRequest, "the request path is not valid"))
    }

    /// Sends a request upstream with the key and waits for the response head; the body
    /// is left to stream. `share` is the caller's own token, when its client has a share.
    ///
    /// A request without a body gets `upstream.timeout` in all (a slot, then the answer);
    /// one with a body gets `upstream.timeout` for each stall while it is sent and then
    /// for the answer, however long the upload itself takes.
    pub async fn send(
        &self,
        route: &'static str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Body,
        share: Option<Token>,
    ) -> Result<(Response<Incoming>, Slot), Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.call(
            Lane::Stream,
            route,
            method,
            path_and_query,
            headers,
            body,
            share,
            deadline,
        )
        .await
    }

    /// One upstream call on `lane`, returning its slot with the answer so the caller
    /// keeps it until the body is read (or streamed) to its end.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        lane: Lane,
        route: &'static str,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Body,
        share: Option<Token>,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Slot), Failure> {
        // At most half the deadline goes to waiting for a slot: a call that got its slot
        // with no time left would only turn a clear 503 into a pointless 504.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut admission = self
            .guard
            .admit(lane, share, left / 2)
            .await
            .map_err(Failure::refused)?;
        let uri = self.uri(path_and_query).map_err(Failure::refused)?;
        headers.insert(API_KEY, self.key.header_value().clone());
        // A GET or HEAD that failed before any byte of an answer came back (a pooled
        // connection the far end had just closed) is sent once more, paid for like the
        // first; anything else is never resent: a POST has no idempotency key.
        let resendable =
            matches!(body, Body::Empty) && (method == Method::GET || method == Method::HEAD);
        let again = resendable.then(|| (method.clone(), uri.clone(), headers.clone()));
        let (body, progress) = match body {
            Body::Empty => (Body::Empty, None),
            body => {
                let (upload, progress) = Upload::new(body);
                (Body::stream(upload), Some(progress))
            }
        };
        let mut request = build(method, uri, headers, body);
        let mut resent = false;
        loop {
            let capture = capture_connection(&mut request);
            let started = Instant::now();
            let outcome = self.exchange(request, progress.as_deref(), deadline).await;
            let elapsed = started.elapsed().as_secs_f64();
            let e = match outcome {
                Ok(response) => {
                    let status = response.status().as_u16().to_string();
                    self.metrics.upstream_call(route, status, elapsed);
                    self.after_answer(&response);
                    return Ok((response, admission.into_slot()));
                }
                Err(Stop::Late(e)) => {
                    admission.sent();
                    // Given up on: end the connection rather than leave its task holding
                    // the socket (and any upload) until the upstream lets go.
                    if let Connection::Http1(tally) = connection_of(&capture) {
                        tally.abort();
                    }
                    self.metrics.upstream_call(route, "timeout".into(), elapsed);
                    return Err(Failure::sent(e));
                }
                Err(Stop::Failed(e)) => e,
            };
            self.metrics.upstream_call(route, "error".into(), elapsed);
            if e.is_connect() {
                // Nothing reached the upstream: the tokens go back with the admission.
                return Err(Failure::refused(connect_error(&e)));
            }
            let resend = match (&again, resent) {
                (Some(parts), false)
                    if nothing_came_back(&e, &capture)
                        && tokio::time::Instant::now() < deadline =>
                {
                    if let Err(wait) = admission.pay_again().await {
                        // Resendable, but the quota has no token for it: say that (with
                        // when to come back), not that the upstream is unreachable.
                        admission.sent();
                        return Err(Failure::sent(crate::guard::rate_limited(
                            ErrorKind::QuotaExhausted,
                            "the upstream closed the connection without an answer, and the quota (upstream.rate_limit) has no token to send the request again",
                            wait,
                        )));
                    }
                    Some(parts.clone())
                }
                _ => None,
            };
            let Some((method, uri, headers)) = resend else {
                admission.sent();
                return Err(Failure::sent(connect_error(&e)));
            };
            tracing::debug!(error = %error_chain(&e), "no answer came back: sending the request once more");
            request = build(method, uri, headers, Body::Empty);
            resent = true;
        }
    }

    /// One request on the wire, bounded as [`send`](Self::send) says.
    async fn exchange(
        &self,
        request: Request<Body>,
        progress: Option<&Progress>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, Stop> {
        let answer = self.client.request(request);
        let Some(progress) = progress else {
            return match tokio::time::timeout_at(deadline, answer).await {
                Ok(result) => result.map_err(Stop::Failed),
                Err(_) => Err(Stop::Late(GatewayError::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream did not answer in time",
                ))),
            };
        };
        tokio::pin!(answer);
        loop {
            tokio::select! {
                result = &mut answer => return result.map_err(Stop::Failed),
                () = tokio::time::sleep_until(progress.deadline(self.timeout)) => {
                    // The body may have moved while this slept: only a wait that really
                    // ran out ends the call.
                    if progress.deadline(self.timeout) <= tokio::time::Instant::now() {
                        return Err(Stop::Late(progress.expired()));
                    }
                }
            }
        }
    }

    /// What an answer's status tells the 429 gate.
    fn after_answer(&self, response: &Response<Incoming>) {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = parse_retry_after(response.headers().get(header::RETRY_AFTER));
            tracing::warn!(
                ?retry_after,
                "upstream answered 429: pausing upstream calls"
            );
            self.guard.on_too_many(retry_after);
        } else {
            self.guard.cooldown.on_success();
        }
    }

    /// Ends a streamed upstream body that stops arriving for `upstream.timeout`.
    pub fn stalling(&self, body: Incoming) -> Body {
        Body::stream(Stalling::new(
            body,
            self.timeout,
            self.metrics.upstream_body_stalls.clone(),
        ))
    }

    /// A forwarded answer's body for the client: cut when the upstream stalls
    /// ([`stalling`](Self::stalling)) or when the client reads nothing for
    /// `send_timeout`, and holding `slot` to its end.
    pub fn streamed(&self, body: Incoming, slot: Slot, send_timeout: Duration) -> Body {
        Body::stream(Sending::new(
            self.stalling(body),
            Some(slot),
            send_timeout,
            self.metrics.send_timeouts.clone(),
        ))
    }

    /// `upstream.timeout` from now: the deadline of a lookup's fetch.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// GETs a JSON resource and reads it whole (bounded by `upstream.max_body`), asking for
    /// an uncompressed body so it can be parsed and rewritten. `deadline` (by default
    /// `upstream.timeout` from now: [`deadline`](Self::deadline)) covers the wait for a
    /// slot, the answer and its body.
    pub async fn get_buffered(
        &self,
        route: &'static str,
        path_and_query: &str,
        scope: Scope,
        share: Option<Token>,
        deadline: tokio::time::Instant,
    ) -> Result<Fetched, GatewayError> {
        let started = Instant::now();
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if let Some((name, value)) = super::route::scope_header(scope) {
            headers.insert(name, value);
        }
        let (response, _slot) = self
            .call(
                Lane::Lookup,
                route,
                Method::GET,
                path_and_query,
                headers,
                Body::Empty,
                share,
                deadline,
            )
            .await?;
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let collected = tokio::time::timeout_at(deadline, Limited::new(body, limit).collect())
            .await
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::UpstreamTimeout,
                    "the upstream body did not arrive in time",
                )
            })?;
        let body = collected
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    tracing::debug!(error = %error_chain(e.as_ref()), "upstream body failed");
                    GatewayError::new(
                        ErrorKind::UpstreamInvalid,
                        "the upstream connection broke before the whole body arrived",
                    )
                }
            })?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        })
    }
}

/// Why a call gave no response head.
enum Stop {
    /// The client's error (connection failed, broke, or was refused by hyper).
    Failed(hyper_util::client::legacy::Error),
    /// A wait ran out (the answer, or a stalled upload).
    Late(GatewayError),
}

/// A call that gave no answer, and whether it reached the upstream (for the access log
/// and the quota: a refused call cost nothing).
#[derive(Debug)]
pub struct Failure {
    /// What to answer.
    pub error: GatewayError,
    /// Whether a request was sent upstream.
    pub sent: bool,
}

impl Failure {
    fn refused(error: GatewayError) -> Failure {
        Failure { error, sent: false }
    }

    fn sent(error: GatewayError) -> Failure {
        Failure { error, sent: true }
    }
}

impl From<Failure> for GatewayError {
    fn from(f: Failure) -> GatewayError {
        f.error
    }
}

/// Whether a failed request may be sent again: nothing of an answer came back on its
/// connection (HTTP/1), or the upstream refused the stream unprocessed (HTTP/2).
fn nothing_came_back(e: &hyper_util::client::legacy::Error, capture: &CaptureConnection) -> bool {
    match connection_of(capture) {
        Connection::Http1(tally) => tally.silent_since_write(),
        Connection::Http2 => refused_stream(e),
        Connection::Unknown => false,
    }
}

/// What a request went out on.
enum Connection {
    /// An HTTP/1 connection, with its tally (and off switch).
    Http1(ReadTally),
    /// An HTTP/2 connection: it carries other requests too, so it is never aborted for
    /// one of them, and its tally says nothing about one stream.
    Http2,
    /// None yet (the request never got a connection).
    Unknown,
}

fn connection_of(capture: &CaptureConnection) -> Connection {
    let metadata = capture.connection_metadata();
    let Some(connected) = metadata.as_ref() else {
        return Connection::Unknown;
    };
    if connected.is_negotiated_h2() {
        return Connection::Http2;
    }
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    extras
        .get::<ReadTally>()
        .cloned()
        .map_or(Connection::Unknown, Connection::Http1)
}

/// An HTTP/2 `REFUSED_STREAM`: the server promises it did not process the request.
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

fn build(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

fn too_large() -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamTooLarge,
        "the upstream answer is larger than upstream.max_body",
    )
}

/// Maps a client error. The message is generic: the client needs to know the upstream
/// failed, not our network details; the detail goes to the log.
fn connect_error(e: &hyper_util::client::legacy::Error) -> GatewayError {
    // The client's own upload outgrew `server.max_body` while streaming: its fault.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return GatewayError::new(
                ErrorKind::PayloadTooLarge,
                "the request body is larger than server.max_body",
            );
        }
        source = s.source();
    }
    tracing::warn!(error = %error_chain(e), "upstream request failed");
    if e.is_connect() {
        GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            "cannot connect to the upstream",
        )
    } else {
        GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            "the upstream connection failed before an answer",
        )
    }
}

/// An error and its sources on one line (hyper's top-level messages say little).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
