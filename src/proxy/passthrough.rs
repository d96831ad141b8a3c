//! Everything that is forwarded rather than cached: creates, lists, upload targets,
//! settings, job actions and downloads. Bodies stream both ways; nothing is retried
//! (a create has no idempotency key, so a retry could make two jobs).

use std::sync::Arc;
use std::time::Instant;

use crate::cache::Scope;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::headers;
use super::route::{self, Route};
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::{Gateway, Live};
use crate::proxy::rewrite::JobFacts;
use crate::proxy::upstream::Failure;

/// Forwards a request as it is (with the key) and streams the answer back.
pub async fn forward<B>(
    gw: &Arc<Gateway>,
    request: Request<B>,
    route: &Route,
    scope: Scope,
    ex: &mut Exchange,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::error::BoxError>,
{
    ex.cache = XCache::Bypass;
    let live = gw.live();
    let max_body = live.config.server.max_body;
    let refused = |e: GatewayError, ex: &mut Exchange| {
        ex.error = Some(e.kind.code());
        e.to_response(XCache::Bypass.as_str())
    };
    if let Err(e) = check_declared_length(request.headers(), max_body) {
        return refused(e, ex);
    }
    let (parts, body) = request.into_parts();
    let relays_body = !matches!(parts.method, Method::GET | Method::HEAD);
    let body = if relays_body {
        // Before any token or slot is taken: a client that trickles its body holds
        // nothing upstream while it does.
        let buffer = usize::try_from(live.config.server.upload_buffer).unwrap_or(usize::MAX);
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let stall = live.config.upstream.timeout;
        match buffer_upload(body, buffer, limit, stall).await {
            Ok(body) => body,
            Err(e) => return refused(e, ex),
        }
    } else {
        Body::Empty
    };
    // The client's own share pays for this call; the token goes back unless it is sent.
    let share = match super::share::take(gw, ex).await {
        Err(e) => return refused(e, ex),
        Ok(share) => share,
    };
    let mut out_headers = headers::forward_request(&parts.headers);
    if let Some((name, value)) = route::scope_header(scope) {
        out_headers.insert(name, value);
    }
    if relays_body {
        // A body read whole states its length, zero included: hyper sends none for an
        // empty body, and some servers refuse a POST without one (411).
        let whole = match &body {
            Body::Empty => Some(0),
            Body::Full(bytes) => Some(bytes.as_ref().map_or(0, bytes::Bytes::len)),
            Body::Stream(_) => None,
        };
        if let Some(len) = whole {
            out_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    if matches!(route, Route::Collection) {
        // Created and listed jobs carry links to rewrite, which a compressed body would
        // hide: ask for it plain, as the cached routes do.
        out_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    // The job id goes upstream in its canonical (lower-case) spelling on every route,
    // as the cached routes send it: the upstream's pattern is lower-case.
    let path_and_query = route::upstream_target(route, &parts.uri);
    let started = Instant::now();
    let call = {
        let (live, method) = (Arc::clone(&live), parts.method.clone());
        let name = route.name();
        async move {
            live.upstream
                .send(name, method, &path_and_query, out_headers, body, share)
                .await
        }
    };
    let result = match route {
        // The action may change the job (a reprocess revives a failed one): once it is
        // under way it runs to its end on a task of its own, and the job's entries are
        // dropped after it, even if the client hangs up meanwhile. Dropping them with
        // the client's request would leave the old job cached for up to a day.
        Route::JobAction(job) => {
            let (gw, job) = (Arc::clone(gw), *job);
            let action = tokio::spawn(async move {
                let result = call.await;
                if action_may_have_changed(&result) {
                    // Also turns away every fill of the job that began before now.
                    gw.purge_job(crate::cache::JobKey { scope, job }, true)
                        .await;
                }
                result
            });
            match action.await {
                Ok(result) => result,
                Err(_) => Err(Failure {
                    error: GatewayError::new(ErrorKind::Internal, "the job action failed"),
                    sent: true,
                }),
            }
        }
        _ => call.await,
    };
    let sent = match &result {
        Ok(_) => true,
        Err(failure) => failure.sent,
    };
    if sent {
        ex.upstream_time = Some(started.elapsed());
    }
    let (response, slot) = match result {
        Ok(answer) => answer,
        Err(failure) => return refused(failure.error, ex),
    };
    ex.upstream_status = Some(response.status());
    let rewrite = matches!(route, Route::Collection)
        && response.status().is_success()
        && is_json(response.headers())
        && !is_encoded(response.headers());
    if rewrite {
        // Read whole, then the slot goes.
        return rewrite_collection(gw, &live, &parts.method, scope, response, ex).await;
    }
    let (parts, body) = response.into_parts();
    let send_timeout = live.config.server.send_timeout;
    let mut response = Response::new(live.upstream.streamed(body, slot, send_timeout));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers::forward_response(&parts.headers);
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static(XCache::Bypass.as_str()));
    response
}

/// Whether a job action may have changed the job: it reached the upstream, and the
/// upstream did not turn it down (a 4xx changes nothing).
fn action_may_have_changed(
    result: &Result<(Response<Incoming>, crate::guard::Slot), Failure>,
) -> bool {
    match result {
        Ok((response, _)) => !response.status().is_client_error(),
        Err(failure) => failure.sent,
    }
}

/// Whether a body comes with a `Content-Encoding` other than identity (which the
/// gateway cannot rewrite; it asked for none, but an upstream may send one anyway).
fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A created job (`POST`) or a list of jobs (`GET`) carries links too: rewrite them so an
/// app that follows them from there also comes back through the gateway. These bodies
/// are small JSON, read whole within `upstream.max_body`.
async fn rewrite_collection(
    gw: &Gateway,
    live: &Live,
    method: &Method,
    scope: Scope,
    response: Response<Incoming>,
    ex: &mut Exchange,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let limit = usize::try_from(live.upstream.max_body()).unwrap_or(usize::MAX);
    let body = live.upstream.stalling(body);
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let e = GatewayError::new(
                ErrorKind::UpstreamInvalid,
                "the upstream answer broke off or exceeded upstream.max_body",
            );
            ex.error = Some(e.kind.code());
            return e.to_response(XCache::Bypass.as_str());
        }
    };
    let rewritten = if method == Method::POST {
        let rewritten = live.rewriter.rewrite_job(&bytes);
        if let Ok((_, facts)) = &rewritten {
            created(gw, live, scope, facts, &bytes).await;
        }
        rewritten.map(|(b, _)| b)
    } else {
        live.rewriter.rewrite_list(&bytes)
    };
    // A body we cannot read as JSON is passed on untouched: the app gets what the
    // upstream said, which is all a pass-through route promises.
    let body = rewritten.unwrap_or(bytes);
    let mut headers = headers::forward_response(&parts.headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ETAG);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert("x-cache", HeaderValue::from_static(XCache::Bypass.as_str()));
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    response
}

/// A job created through the gateway: its scope is known from now on (a webhook for it
/// primes it there), and while webhooks are on the create's answer is its first lookup,
/// so the app's first poll costs nothing.
async fn created(gw: &Gateway, live: &Live, scope: Scope, facts: &JobFacts, body: &bytes::Bytes) {
    if live.webhooks.is_none() {
        return;
    }
    let Some(job) = facts
        .id
        .as_deref()
        .and_then(|id| uuid::Uuid::try_parse(id).ok())
    else {
        return;
    };
    let key = crate::cache::JobKey { scope, job };
    gw.record_scope(live, key);
    if let Err(e) = super::lookup::prime(gw, live, key, body.clone()).await {
        tracing::debug!(%job, error = %e.message, "created job not primed");
    }
}

/// `413` for a declared request body over `server.max_body`, before any upstream call.
fn check_declared_length(headers: &http::HeaderMap, limit: u64) -> Result<(), GatewayError> {
    match headers::declared_length(headers) {
        Some(n) if n > limit => Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            "the request body is larger than server.max_body",
        )),
        _ => Ok(()),
    }
}

/// Reads up to `buffer` bytes of an upload before the call is admitted upstream (as
/// nginx's `proxy_request_buffering`). A body that ends within the buffer goes on whole,
/// with its length; a longer one goes on as what was read followed by the rest,
/// streamed (and timed by its stalls like any upload). A body over `max_body`, declared
/// or not, is a `413`; one that stops arriving for `stall` is a `408`.
async fn buffer_upload<B>(
    body: B,
    buffer: usize,
    max_body: usize,
    stall: std::time::Duration,
) -> Result<Body, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::error::BoxError>,
{
    let mut body = Box::pin(Limited::new(body, max_body));
    let mut read = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    "the request body stopped arriving for longer than upstream.timeout (before any upstream call)",
                ))
            }
            Ok(None) => return Ok(Body::full(read.freeze())),
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    "the request body is larger than server.max_body",
                ))
            }
            Ok(Some(Err(_))) => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    "the request body broke off",
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
            if read.len() > buffer {
                return Ok(Body::stream(Prefixed {
                    prefix: Some(read.freeze()),
                    rest: body,
                }));
            }
        }
    }
}

/// An upload's buffered start, then the rest of it.
struct Prefixed<B> {
    prefix: Option<bytes::Bytes>,
    rest: std::pin::Pin<Box<B>>,
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(prefix))));
        }
        self.rest.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}
