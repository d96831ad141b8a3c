//! The request's entry point: route it, dispatch it, write its access-log line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use super::access_log::{self, AccessRecord};
use super::exchange::Exchange;
use super::route::{self, Route};
use super::{lookup, passthrough};
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::cache::{CacheKey, JobKey, Scope};
use crate::error::BoxError;
use crate::gateway::Gateway;
use crate::metrics::{CauseLabels, ClientLabel, RequestLabels};

/// Handles one request end to end. Never fails: every error is an answer.
///
/// Generic over the request body so benchmarks can drive the whole path in-process; the
/// server passes hyper's `Incoming`.
pub fn handle<B>(gw: Arc<Gateway>, request: Request<B>) -> Handled
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    handle_from(gw, request, None)
}

/// [`handle`] for a request from `address` (the server's peer).
///
/// What can be answered at once (a hit in the front table, a refusal) is answered before
/// this returns: a hit builds, moves and polls no future of its own. Everything else
/// (misses, long-polls, pass-through, webhooks) is one boxed future, whose state (an
/// upstream call in flight) would otherwise size every request's, hits included.
pub fn handle_from<B>(
    gw: Arc<Gateway>,
    request: Request<B>,
    address: Option<std::net::IpAddr>,
) -> Handled
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    // With the access log off (log.level above info), skip even the clock and the path copy.
    let logging = tracing::enabled!(target: "exagate::access", tracing::Level::INFO);
    let head = logging.then(|| {
        let path = request.uri().path();
        // The receiver's path holds the webhook secret: never written anywhere, in any
        // spelling of it (a webhook URL registered with another case or a doubled slash
        // still carries the secret).
        let path = if crate::webhooks::names_receiver(path) {
            crate::webhooks::REDACTED_PATH.to_owned()
        } else {
            path.to_owned()
        };
        (Instant::now(), request.method().clone(), path)
    });
    let mut ex = Exchange {
        address,
        ..Exchange::default()
    };
    match prepare(&gw, request, &mut ex) {
        Step::Done(response) => Handled::Now(std::future::ready(finish(&gw, ex, head, response))),
        Step::Later(later) => Handled::Later(Box::pin(async move {
            let mut answering = Answering {
                gw: &gw,
                ex,
                head,
                answered: false,
            };
            let response = later.run(&gw, &mut answering.ex).await;
            answering.answered = true;
            let ex = std::mem::take(&mut answering.ex);
            let head = answering.head.take();
            finish(&gw, ex, head, response)
        })),
    }
}

/// What [`handle`] returns: the answer, or the future of it.
pub enum Handled {
    /// Answered at once.
    Now(std::future::Ready<Response<Body>>),
    /// To be answered.
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Handled {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.get_mut() {
            Handled::Now(ready) => Pin::new(ready).poll(cx),
            Handled::Later(later) => later.as_mut().poll(cx),
        }
    }
}

/// A request's metrics, and its access-log line (written when its body is sent).
fn finish(
    gw: &Gateway,
    ex: Exchange,
    head: Option<(Instant, Method, String)>,
    response: Response<Body>,
) -> Response<Body> {
    record_metrics(gw, &ex, response.status());
    let Some((started, method, path)) = head else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let record = AccessRecord {
        started,
        method,
        path,
        status: parts.status.as_u16(),
        exchange: ex,
    };
    Response::from_parts(parts, access_log::log_when_done(body, record))
}

/// nginx's status for a request whose client went away before it was answered.
const CLIENT_CLOSED: u16 = 499;

/// A request being answered. Dropped before it is (the client hung up: hyper drops the
/// request's future), it still gets its metric and its access-log line, as `499`, so
/// that abandoned requests, and what they cost upstream, are never invisible.
struct Answering<'a> {
    gw: &'a Gateway,
    ex: Exchange,
    head: Option<(Instant, Method, String)>,
    answered: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let status = StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST);
        record_metrics(self.gw, &self.ex, status);
        if let Some((started, method, path)) = self.head.take() {
            let record = AccessRecord {
                started,
                method,
                path,
                status: CLIENT_CLOSED,
                exchange: std::mem::take(&mut self.ex),
            };
            record.emit(0, false);
        }
    }
}

fn record_metrics(gw: &Gateway, ex: &Exchange, status: StatusCode) {
    let m = &gw.metrics;
    m.request(RequestLabels {
        route: ex.route,
        status: status.as_u16(),
        cache: ex.cache.as_str(),
        client: ClientLabel(ex.client.as_ref().map(|c| Arc::clone(&c.name))),
    });
    // A hit, or a request answered by another's fetch, would have cost a call without
    // the gateway. Not a request that was refused (a refusal shared by the requests that
    // joined a refused fetch saved nothing), and not one whose client left first.
    let answered = ex.error.is_none() && status.as_u16() != CLIENT_CLOSED;
    if ex.cache == XCache::Hit {
        m.call_saved(true);
    } else if ex.coalesced && answered {
        m.coalesced.inc();
        m.call_saved(false);
    }
    if let Some(code) = ex
        .error
        .filter(|code| crate::metrics::REFUSAL_CAUSES.contains(code))
    {
        m.refusals.get_or_create(&CauseLabels { cause: code }).inc();
    }
}

/// Where [`prepare`] leaves a request.
enum Step<B> {
    /// Answered.
    Done(Response<Body>),
    /// To be answered by waiting for something.
    Later(Later<B>),
}

/// A request that waits for something (the upstream, a fill, a state change, a body).
enum Later<B> {
    /// A webhook delivery.
    Receive(Request<B>),
    /// A lookup of a job the front table could not answer.
    Job {
        key: JobKey,
        head: bool,
        ask: lookup::Ask,
    },
    /// A chunk window the front table could not answer.
    Chunks { key: CacheKey, head: bool },
    /// A route that is never cached.
    Forward(Request<B>, Route, Scope),
}

impl<B> Later<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    async fn run(self, gw: &Arc<Gateway>, ex: &mut Exchange) -> Response<Body> {
        match self {
            Later::Receive(request) => crate::webhooks::receiver::receive(gw, request, ex).await,
            Later::Job { key, head, ask } => lookup::job(gw, key, head, ask, ex).await,
            Later::Chunks { key, head } => lookup::read(gw, key, head, ex).await,
            Later::Forward(request, route, scope) => {
                passthrough::forward(gw, request, &route, scope, ex).await
            }
        }
    }
}

/// Everything about a request that needs no waiting: the target's checks, the route,
/// the scope, the client and its rights, and a hit in the front table.
fn prepare<B>(gw: &Arc<Gateway>, request: Request<B>, ex: &mut Exchange) -> Step<B> {
    let refuse = |e: crate::error::GatewayError, ex: &mut Exchange| {
        ex.error = Some(e.kind.code());
        Step::Done(e.to_response(XCache::Bypass.as_str()))
    };
    if let Err(e) = route::check_target(request.uri()) {
        return refuse(e, ex);
    }
    if request
        .uri()
        .path()
        .starts_with(crate::webhooks::RECEIVER_PREFIX)
    {
        // Before the clients' check: the API calls with no client token.
        return Step::Later(Later::Receive(request));
    }
    let route = match route::route(request.method(), request.uri().path()) {
        Ok(route) => route,
        Err(e) => return refuse(e, ex),
    };
    ex.route = route.name();
    let scope = match route::parse_scope(request.headers()) {
        Ok(scope) => scope,
        Err(e) => return refuse(e, ex),
    };
    // Who is calling, and may they use this scope: decided before the cache is consulted,
    // so a hit is no way around a restriction.
    let live = gw.peek();
    match live.clients.identify(request.headers()) {
        Ok(Some(client)) => {
            let allowed = client.may_use(scope);
            ex.client = Some(client);
            if let Err(e) = allowed {
                return refuse(e, ex);
            }
        }
        Ok(None) => {}
        Err(e) => return refuse(e, ex),
    }
    let managed = live.webhooks.is_some();
    drop(live);
    let head = request.method() == Method::HEAD;
    if matches!(route, Route::Job(_) | Route::Chunks(_)) {
        ex.gzip = super::headers::accepts_gzip(request.headers());
    }
    match route {
        Route::Job(job) => {
            let ask = lookup::Ask {
                wait: match super::longpoll::wait_param(request.uri().query().unwrap_or("")) {
                    Ok(wait) => wait,
                    Err(e) => return refuse(e, ex),
                },
                if_none_match: if_none_match(request.headers()),
            };
            let key = JobKey { scope, job };
            // A long-poll waits even on a hit (for a change of state): never at once.
            if ask.wait.is_none() {
                let tags = ask.if_none_match.as_ref();
                if let Some(response) = lookup::answer_now(gw, &CacheKey::Job(key), head, tags, ex)
                {
                    return Step::Done(response);
                }
            }
            Step::Later(Later::Job { key, head, ask })
        }
        // The account's settings hold the receiver's URL, secret and all: an app reads
        // the gateway's own account of them, never the upstream's.
        Route::Settings if managed && request.method() != Method::PUT => {
            ex.cache = XCache::Bypass;
            Step::Done(crate::webhooks::settings_answer(&gw.peek(), head))
        }
        Route::Settings if managed => refuse(
            crate::error::GatewayError::new(
                crate::error::ErrorKind::WebhooksManaged,
                "this gateway owns the account's webhook ([webhooks] is on): add a [[webhooks.subscribers]] entry to hear of jobs instead",
            ),
            ex,
        ),
        Route::Chunks(job) => match route::chunk_window(request.uri().query().unwrap_or("")) {
            Ok(window) => {
                let key = CacheKey::Chunks(JobKey { scope, job }, window.into());
                match lookup::answer_now(gw, &key, head, None, ex) {
                    Some(response) => Step::Done(response),
                    None => Step::Later(Later::Chunks { key, head }),
                }
            }
            Err(e) => refuse(e, ex),
        },
        Route::Download(_)
        | Route::JobAction(_)
        | Route::Collection
        | Route::Upload
        | Route::Settings => Step::Later(Later::Forward(request, route, scope)),
    }
}

/// `If-None-Match`, its header lines combined into one list (RFC 9110 5.3).
fn if_none_match(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut lines = headers.get_all(http::header::IF_NONE_MATCH).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    http::HeaderValue::from_bytes(&joined).ok()
}
