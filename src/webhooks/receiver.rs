//! `POST /webhooks/exabase/{secret}`: the API's deliveries.
//!
//! The API signs nothing, so the secret in the path is the proof. A wrong or missing
//! secret is answered exactly like a path the gateway does not serve. A good delivery is
//! checked to be a job, acknowledged at once (the API retries slow receivers) and
//! processed after: the cache is primed in every scope the job was seen in, and the
//! event goes to the relay.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Event, RECEIVER_PREFIX};
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::cache::{JobKey, JobState};
use crate::error::{BoxError, ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::proxy::exchange::Exchange;
use crate::proxy::lookup::{self, Primed};

/// Longest a delivery waits for its processing before it is acknowledged anyway.
const ACK_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Handles one request to the receiver's path.
pub async fn receive<B>(gw: &Arc<Gateway>, request: Request<B>, ex: &mut Exchange) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    ex.route = "webhook";
    ex.cache = XCache::Bypass;
    let refuse = |e: GatewayError, ex: &mut Exchange| {
        ex.error = Some(e.kind.code());
        e.to_response(XCache::Bypass.as_str())
    };
    let live = gw.live();
    let Some(hooks) = live.webhooks.as_ref() else {
        return refuse(crate::proxy::route::not_found(), ex);
    };
    let (job, facts, body) = match read_delivery(request, hooks, &live).await {
        Ok(delivery) => delivery,
        Err(e) => {
            gw.metrics.webhook_received("refused");
            return refuse(e, ex);
        }
    };
    drop(live);
    // Processed on a task of its own, and acknowledged when it is done (priming and
    // queueing for the relay take milliseconds: the queue is journaled, or in Redis,
    // before the API hears 2xx and forgets the delivery), or after `ACK_WITHIN` at the
    // latest, the rest going on after the answer: the API retries slow receivers.
    let gw = Arc::clone(gw);
    let (state, created_at) = (facts.state, facts.created_at);
    let processing = tokio::spawn(async move { process(&gw, job, state, created_at, body).await });
    if let Ok(Ok(Err(Later))) = tokio::time::timeout(ACK_WITHIN, processing).await {
        // Nothing was done with it: the API keeps it and sends it again.
        return refuse(
            GatewayError::new(
                ErrorKind::TemporarilyUnavailable,
                "the gateway cannot place this delivery now (its shared tier is away): send it again",
            )
            .with_retry_after(10),
            ex,
        );
    }
    let mut response = Response::new(Body::full(Bytes::from_static(br#"{"accepted":true}"#)));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The delivery in `request`, checked to be one: `POST` with the right secret (anything
/// else is answered like a path the gateway does not serve, whatever the secret: a `405`
/// would tell a guesser which secret is right without a delivery), within
/// `webhooks.max_body`, arriving steadily, and a JSON job whose id is written as the API
/// writes it (lower-case, hyphenated: the cached body is this one, and it must name the
/// job its route does).
async fn read_delivery<B>(
    request: Request<B>,
    hooks: &super::WebhooksLive,
    live: &crate::gateway::Live,
) -> Result<(Uuid, crate::proxy::rewrite::JobFacts, Bytes), GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let presented = request
        .uri()
        .path()
        .strip_prefix(RECEIVER_PREFIX)
        .unwrap_or("");
    if request.method() != Method::POST || !hooks.is_secret(presented) {
        return Err(crate::proxy::route::not_found());
    }
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            "the delivery is larger than webhooks.max_body",
        )
    };
    if crate::proxy::headers::declared_length(request.headers()).is_some_and(|n| n > hooks.max_body)
    {
        return Err(too_large());
    }
    let limit = usize::try_from(hooks.max_body).unwrap_or(usize::MAX);
    let stall = live.config.upstream.timeout;
    let read =
        tokio::time::timeout(stall, Limited::new(request.into_body(), limit).collect()).await;
    let body = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => {
            return Err(GatewayError::new(
                ErrorKind::BadRequest,
                "the delivery's body broke off",
            ))
        }
        Err(_) => {
            return Err(GatewayError::new(
                ErrorKind::RequestTimeout,
                "the delivery's body stopped arriving",
            ))
        }
    };
    let not_a_job = |why: &'static str| GatewayError::new(ErrorKind::InvalidWebhook, why);
    let (_, facts) = live.rewriter.rewrite_job(&body).map_err(|_| {
        not_a_job("the delivery is not a JSON job (an object with an id and a state)")
    })?;
    let canonical = |id: &str| {
        Uuid::try_parse(id)
            .ok()
            .filter(|job| job.hyphenated().to_string() == id)
    };
    let job = facts
        .id
        .as_deref()
        .and_then(canonical)
        .ok_or_else(|| not_a_job("the delivery's job has no id that is a UUID"))?;
    Ok((job, facts, body))
}

/// A delivery to be sent again later (nothing was done with it).
struct Later;

/// Primes every scope the job is known in and hands its event to the relay.
async fn process(
    gw: &Arc<Gateway>,
    job: Uuid,
    state: JobState,
    created_at: Option<OffsetDateTime>,
    body: Bytes,
) -> Result<(), Later> {
    let live = gw.live();
    let Ok(scopes) = gw.known_scopes(job).await else {
        tracing::warn!(%job, "webhook delivery refused for now: the shared tier, which knows the jobs other replicas saw, is away");
        gw.metrics.webhook_received("unscoped");
        return Err(Later);
    };
    if scopes.is_empty() {
        // Never guessed: a job this gateway never saw may be another scope's, and
        // priming it in the wrong one would show one base another's job.
        tracing::debug!(%job, "webhook for a job this gateway has not seen: acknowledged, nothing primed");
        gw.metrics.webhook_received("unknown_job");
        return Ok(());
    }
    let mut outcome = "duplicate";
    for scope in scopes {
        let key = JobKey { scope, job };
        match lookup::prime(gw, &live, key, body.clone()).await {
            Ok(Primed::Stored) => outcome = "primed",
            Ok(Primed::NotStored) if outcome != "primed" => outcome = "not_stored",
            Ok(Primed::Stale) if outcome == "duplicate" => outcome = "stale",
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%job, error = %e.message, "webhook delivery not primed");
            }
        }
        if let Some(event) = Event::of(job, state, scope, created_at, "webhook") {
            // Awaited, not spawned: the delivery is acknowledged once this is queued.
            gw.emit_now(&live, &event).await;
        }
    }
    tracing::info!(%job, state = state.as_str(), outcome, "webhook delivery");
    gw.metrics.webhook_received(outcome);
    Ok(())
}
