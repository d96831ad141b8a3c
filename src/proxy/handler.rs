//! The request's entry point: route it, dispatch it, write its access-log line.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use super::access_log::{self, AccessRecord};
use super::exchange::Exchange;
use super::route::{self, Route};
use super::{lookup, passthrough};
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::cache::JobKey;
use crate::error::BoxError;
use crate::gateway::Gateway;
use crate::metrics::{CauseLabels, ClientLabel, RequestLabels};

/// Handles one request end to end. Never fails: every error is an answer.
///
/// Generic over the request body so benchmarks can drive the whole path in-process; the
/// server passes hyper's `Incoming`.
pub async fn handle<B>(gw: Arc<Gateway>, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    handle_from(gw, request, None).await
}

/// [`handle`] for a request from `address` (the server's peer).
pub async fn handle_from<B>(
    gw: Arc<Gateway>,
    request: Request<B>,
    address: Option<std::net::IpAddr>,
) -> Response<Body>
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
    let mut answering = Answering {
        gw: &gw,
        ex: Exchange {
            address,
            ..Exchange::default()
        },
        head,
        answered: false,
    };
    let response = dispatch(&gw, request, &mut answering.ex).await;
    answering.answered = true;
    let ex = std::mem::take(&mut answering.ex);
    let head = answering.head.take();
    record_metrics(&gw, &ex, response.status());
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

async fn dispatch<B>(gw: &Arc<Gateway>, request: Request<B>, ex: &mut Exchange) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let refuse = |e: crate::error::GatewayError, ex: &mut Exchange| {
        ex.error = Some(e.kind.code());
        e.to_response(XCache::Bypass.as_str())
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
        return Box::pin(crate::webhooks::receiver::receive(gw, request, ex)).await;
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
            lookup::job(gw, JobKey { scope, job }, head, ask, ex).await
        }
        // The account's settings hold the receiver's URL, secret and all: an app reads
        // the gateway's own account of them, never the upstream's.
        Route::Settings if managed && request.method() != Method::PUT => {
            ex.cache = XCache::Bypass;
            crate::webhooks::settings_answer(&gw.peek(), head)
        }
        Route::Settings if managed => refuse(
            crate::error::GatewayError::new(
                crate::error::ErrorKind::WebhooksManaged,
                "this gateway owns the account's webhook ([webhooks] is on): add a [[webhooks.subscribers]] entry to hear of jobs instead",
            ),
            ex,
        ),
        Route::Chunks(job) => match route::chunk_window(request.uri().query().unwrap_or("")) {
            Ok(window) => lookup::chunks(gw, JobKey { scope, job }, &window, head, ex).await,
            Err(e) => refuse(e, ex),
        },
        Route::Download(_)
        | Route::JobAction(_)
        | Route::Collection
        | Route::Upload
        // Boxed: its state (an upstream request and response in flight) is the largest
        // of any route, and inline it would size every request's future, hits included,
        // which hyper then moves around by value.
        | Route::Settings => Box::pin(passthrough::forward(gw, request, &route, scope, ex)).await,
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
