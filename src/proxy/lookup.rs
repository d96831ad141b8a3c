//! The cached reads: a job, and a window of its chunks.
//!
//! Phases: look in the cache; on a miss join (or lead) the key's flight; the leader's
//! fetch runs on its own task with its own deadline, decides from the answer how long it
//! stays true, stores it, and publishes it to every waiter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use time::OffsetDateTime;
use uuid::Uuid;

use super::exchange::Exchange;
use super::stall::{Sending, Slices};
use super::upstream::Fetched;
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::cache::envelope::now_ms;
use crate::cache::flight::Waiter;
use crate::cache::{Answer, CacheKey, Decision, Envelope, JobKey, JobState, Join, NoCacheReason};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::{FetchResult, Gateway, Live};
use crate::guard::Token;
use crate::shared::tier::Found;

/// What a job lookup asks beyond the job: a long-poll's wait, a validator.
#[derive(Debug, Default)]
pub struct Ask {
    /// `?wait=`: hold the request while the job is in progress, up to this long.
    pub wait: Option<Duration>,
    /// `If-None-Match`: answer `304` when the job's `ETag` is one of these.
    pub if_none_match: Option<http::HeaderValue>,
}

/// `GET`/`HEAD /v2/extract/{id}`.
pub async fn job(
    gw: &Arc<Gateway>,
    key: JobKey,
    head: bool,
    ask: Ask,
    ex: &mut Exchange,
) -> Response<Body> {
    match ask {
        Ask {
            wait: None,
            if_none_match: None,
        } => read(gw, CacheKey::Job(key), head, ex).await,
        Ask {
            wait: None,
            if_none_match: Some(tags),
        } => {
            let now = Instant::now();
            match answer_for(gw, CacheKey::Job(key), ex, now).await {
                Ok((answer, cache)) => {
                    conditional(gw, &answer, head, cache, now, ex.gzip, Some(&tags))
                }
                Err(e) => failed(e, ex),
            }
        }
        Ask {
            wait: Some(wait),
            if_none_match,
        } => {
            Box::pin(super::longpoll::hold(
                gw,
                key,
                head,
                wait,
                if_none_match,
                ex,
            ))
            .await
        }
    }
}

/// The answer for `key` if the front table holds it (no waiting, see
/// [`CacheStore::get_now`](crate::cache::CacheStore::get_now)): a whole hit, `If-None-Match`
/// and all. `None`: look it up the async way ([`job`], [`read`]).
pub fn answer_now(
    gw: &Gateway,
    key: &CacheKey,
    head: bool,
    if_none_match: Option<&http::HeaderValue>,
    ex: &mut Exchange,
) -> Option<Response<Body>> {
    // One clock read serves the freshness check and the hit's `Age`.
    let now = Instant::now();
    let answer = gw.cache.get_now(key, now, !ex.gzip)?;
    ex.cache = XCache::Hit;
    Some(conditional(
        gw,
        &answer,
        head,
        XCache::Hit,
        now,
        ex.gzip,
        if_none_match,
    ))
}

/// `GET`/`HEAD` of a job or a chunk window: from the cache, else fetched.
pub async fn read(
    gw: &Arc<Gateway>,
    key: CacheKey,
    head: bool,
    ex: &mut Exchange,
) -> Response<Body> {
    // One clock read serves the lookup's freshness check and the hit's `Age`.
    let now = Instant::now();
    match answer_for(gw, key, ex, now).await {
        Ok((answer, cache)) => respond(gw, &answer, head, cache, now, ex.gzip),
        Err(e) => failed(e, ex),
    }
}

/// An error answer, noted in the exchange.
fn failed(e: GatewayError, ex: &mut Exchange) -> Response<Body> {
    ex.error = Some(e.kind.code());
    e.to_response(XCache::Miss.as_str())
}

/// The answer for `key` and how it was found: from the cache, else from a fetch (this
/// request's, or one it joined), noted in the exchange.
pub(super) async fn answer_for(
    gw: &Arc<Gateway>,
    key: CacheKey,
    ex: &mut Exchange,
    now: Instant,
) -> Result<(Arc<Answer>, XCache), GatewayError> {
    if let Some(answer) = gw.cache.get(&key, now, !ex.gzip).await {
        ex.cache = XCache::Hit;
        return Ok((answer, XCache::Hit));
    }
    ex.cache = XCache::Miss;
    // Boxed: a miss waits on the upstream anyway, and its state inline would make every
    // hit's future as large as a miss's.
    let answer = Box::pin(fetch_shared(gw, key, ex)).await?;
    if answer.restored {
        // From the shared tier: no upstream call was made for it.
        ex.cache = XCache::Hit;
        return Ok((answer, XCache::Hit));
    }
    ex.upstream_status = Some(answer.status);
    if !ex.coalesced {
        ex.upstream_time = Some(Duration::from_micros(u64::from(answer.upstream_micros)));
    }
    Ok((answer, XCache::Miss))
}

/// The answer, or `304 Not Modified` when the request's `If-None-Match` names its `ETag`.
pub(super) fn conditional(
    gw: &Gateway,
    answer: &Answer,
    head: bool,
    cache: XCache,
    now: Instant,
    gzip: bool,
    if_none_match: Option<&http::HeaderValue>,
) -> Response<Body> {
    match if_none_match {
        Some(tags) if answer.matches(tags) => answer.not_modified(cache, now, gzip),
        _ => respond(gw, answer, head, cache, now, gzip),
    }
}

/// Joins the key's flight, starting the fetch if none is under way, and waits for it.
async fn fetch_shared(gw: &Arc<Gateway>, key: CacheKey, ex: &mut Exchange) -> FetchResult {
    // A client (or address) with a share of its own pays for the fetch it leads, and only
    // for that:
    // its token is taken before it joins, so that a refusal is decided for this request
    // alone and never published to the others waiting on the same flight.
    let share = match super::share::take(gw, ex).await {
        Err(refused) => return follow_or_refuse(gw, &key, ex, refused).await,
        Ok(share) => share,
    };
    // The flight belongs to the epoch read here: a purge or job action from now on makes
    // later requests start a fetch of their own, and this one store nothing.
    let epoch = gw.cache.epoch(key.job().job);
    let waiter = match gw.flights.join(&key, epoch) {
        Join::Follower(waiter) => {
            // Followers cost the upstream nothing: the token goes back.
            drop(share);
            ex.coalesced = true;
            waiter
        }
        Join::Leader(leader) => {
            let waiter = leader.waiter();
            let gw = Arc::clone(gw);
            // Its own task: the requester hanging up must not cancel the fetch that
            // other requests are waiting on.
            tokio::spawn(async move {
                let result = fetch(&gw, &key, leader.epoch(), share).await;
                leader.complete(result);
            });
            waiter
        }
    };
    wait(gw, waiter).await
}

/// A request whose client's share is spent: it may still take an answer that costs
/// nothing (a fetch under way, or one that has just stored its answer), else it gets
/// its own refusal.
async fn follow_or_refuse(
    gw: &Gateway,
    key: &CacheKey,
    ex: &mut Exchange,
    refused: GatewayError,
) -> FetchResult {
    if let Some(waiter) = gw.flights.follow(key, gw.cache.epoch(key.job().job)) {
        ex.coalesced = true;
        return wait(gw, waiter).await;
    }
    match gw.cache.get(key, Instant::now(), !ex.gzip).await {
        Some(answer) => {
            // Another request's call stored it a moment ago.
            ex.coalesced = true;
            Ok(answer)
        }
        None => Err(refused),
    }
}

async fn wait(gw: &Gateway, waiter: Waiter<FetchResult>) -> FetchResult {
    // The fetch ends by its own deadline (`upstream.timeout`, slot wait included) and
    // reports how; the small margin only lets that report, rather than this fallback,
    // reach the waiter.
    let patience = gw.peek().config.upstream.timeout + Duration::from_millis(100);
    match tokio::time::timeout(patience, waiter.wait()).await {
        Ok(Some(result)) => result,
        Ok(None) => Err(GatewayError::new(
            ErrorKind::Internal,
            "the upstream fetch was abandoned",
        )),
        Err(_) => Err(timeout()),
    }
}

/// Answers above this are sent in slices under `server.send_timeout` (a few job bodies
/// are this large; chunk windows can be much larger).
const PACED_ABOVE: usize = 256 * 1024;

/// The slice a large answer is handed to hyper in.
const PACE: usize = 64 * 1024;

/// A large answer, sent in slices and ended if the client reads nothing of it for
/// `server.send_timeout` (a client that opens HTTP/2 streams with a window of 0 could
/// otherwise pin any number of large bodies, evicted entries included, beyond
/// `cache.max_size`). Small answers, nearly all hits, go as they are. `gzip`: the client
/// takes the gzip form.
pub(super) fn respond(
    gw: &Gateway,
    answer: &Answer,
    head: bool,
    cache: XCache,
    now: Instant,
    gzip: bool,
) -> Response<Body> {
    let response = answer.respond(head, cache, now, gzip);
    // Decided on the length first (the identity length, at least what is sent): the hit
    // path of a small answer does no more.
    if head || answer.len() <= PACED_ABOVE {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = match body {
        Body::Full(Some(bytes)) => {
            let send_timeout = gw.peek().config.server.send_timeout;
            Body::stream(Sending::new(
                Body::stream(Slices::new(bytes, PACE)),
                None,
                send_timeout,
                gw.metrics.send_timeouts.clone(),
            ))
        }
        body => body,
    };
    Response::from_parts(parts, body)
}

fn timeout() -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        "the upstream did not answer within upstream.timeout",
    )
}

/// One fill: the shared tier first (with `[shared]`), then one upstream fetch (bounded by
/// `upstream.timeout` from here, any wait for another replica's fetch included), then
/// the storing decision, here and in the shared tier.
async fn fetch(gw: &Gateway, key: &CacheKey, epoch: u64, share: Option<Token>) -> FetchResult {
    // The fill began with its flight, in `epoch`: an invalidation since wins over what it
    // fetches. A flight that finished between our cache miss and our joining has already
    // stored its answer: use it rather than spend another upstream call. Its waiters may
    // take either form: the identity body is rebuilt if need be.
    if let Some(answer) = gw.cache.get(key, Instant::now(), true).await {
        return Ok(answer);
    }
    let live = gw.live();
    let deadline = live.upstream.deadline();
    let mut lock = None;
    if let Some(shared) = gw.shared.as_ref().filter(|s| s.usable()) {
        match shared.find_or_lock(key, deadline).await {
            Found::Hit(envelope) => {
                let parent_left = match key {
                    CacheKey::Chunks(job, _) => completed_job_left(gw, job).await,
                    CacheKey::Job(_) => None,
                };
                match restored(&live, key, &envelope, parent_left) {
                    Some(answer) => {
                        if let CacheKey::Job(job) = key {
                            gw.record_scope(&live, *job);
                        }
                        return Ok(keep(gw, key, Arc::new(answer), epoch).await);
                    }
                    None => {
                        tracing::warn!(job = %key.job(), "the shared tier held an unusable answer: fetching it")
                    }
                }
            }
            Found::Fetch(held) => lock = Some(held),
            Found::TimedOut => return Err(timeout()),
            Found::Unavailable => {}
        }
    }
    let result = fetch_upstream(gw, &live, key, share, deadline).await;
    let (result, original) = match result {
        Ok((answer, original, seen)) => {
            let answer = keep(gw, key, answer, epoch).await;
            if let (CacheKey::Job(job), Some(seen)) = (key, seen) {
                learned(gw, &live, *job, seen);
            }
            (Ok(answer), Some(original))
        }
        Err(e) => (Err(e), None),
    };
    if let (Some(shared), Some(lock)) = (&gw.shared, lock) {
        // Only what this replica would store goes to Redis, with the upstream's own body
        // (each replica rewrites links to its own public URL); anything else lets the
        // lock go for the next replica to try.
        let envelope = match (&result, original) {
            (Ok(answer), Some(original)) => shared_envelope(answer, original),
            _ => None,
        };
        shared.store(key, envelope, lock);
    }
    result
}

/// What the upstream's answer of a job said about it.
struct Seen {
    state: JobState,
    created_at: Option<OffsetDateTime>,
}

/// The upstream answered `job` (200): it exists in that scope (a webhook for it may
/// prime it there), its long-polls look again, and a terminal state is an event.
fn learned(gw: &Gateway, live: &Live, job: JobKey, seen: Seen) {
    gw.record_scope(live, job);
    gw.watchers.changed(job.job);
    if let Some(event) =
        crate::webhooks::Event::of(job.job, seen.state, job.scope, seen.created_at, "lookup")
    {
        gw.emit(live, &event);
    }
}

/// What became of a job body handed to the cache by a webhook delivery or a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primed {
    /// Stored (or decided not to store by the state rules, as an upstream answer would
    /// be): the next lookup sees it.
    Stored,
    /// The cache already held exactly this.
    Duplicate,
    /// The cache (here or in the shared tier) holds a finished state and this says in
    /// progress: kept what it had.
    Stale,
    /// Not to be stored by the state rules (no `createdAt`, past its retention): what was
    /// cached for the job in that scope is dropped, so the next lookup asks the upstream
    /// rather than show an older state.
    NotStored,
}

/// Hands a job body that did not come from a lookup (a webhook delivery, a create's
/// answer) to the cache of `key`'s scope, by the same rules as an upstream answer, and
/// to the shared tier and the other replicas with `[shared]`; its long-polls look again.
pub async fn prime(
    gw: &Gateway,
    live: &Live,
    key: JobKey,
    body: bytes::Bytes,
) -> Result<Primed, GatewayError> {
    let cache_key = CacheKey::Job(key);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let fetched = Fetched {
        status: StatusCode::OK,
        headers,
        body: body.clone(),
        elapsed: Duration::ZERO,
    };
    let (answer, _) = job_answer(live, &gw.metrics, key.job, fetched)?;
    let finished = |s: Option<JobState>| {
        matches!(
            s,
            Some(JobState::Completed | JobState::Failed | JobState::Cleaned)
        )
    };
    // What is cached now, here, or else in the shared tier (another replica's answer).
    let current = match gw.cache.get(&cache_key, Instant::now(), false).await {
        Some(local) => {
            // The tags are digests of the bodies sent: equal tags, equal bodies.
            if local.status == StatusCode::OK && local.etag.is_some() && local.etag == answer.etag {
                return Ok(Primed::Duplicate);
            }
            Some(local.job_state)
        }
        None => match gw.shared.as_ref().filter(|s| s.usable()) {
            Some(shared) => shared.peek(&cache_key).await.map(|e| e.job_state),
            None => None,
        },
    };
    if current.is_some_and(finished) && !finished(answer.job_state) {
        return Ok(Primed::Stale);
    }
    if answer.expires_at.is_none() {
        gw.purge_job(key, false).await;
        return Ok(Primed::NotStored);
    }
    // Turns away every fill of the job that began before (it would store an older
    // state over this one) and takes the old answer's place.
    let answer = Arc::new(answer);
    gw.cache
        .replace(cache_key.clone(), Arc::clone(&answer))
        .await;
    if let Some(shared) = &gw.shared {
        if shared.usable() {
            if let Some(envelope) = shared_envelope(&answer, body) {
                shared.put(&cache_key, &envelope, now_ms()).await;
            }
            shared.announce(key).await;
        } else {
            // Redis is away: the other replicas (and Redis itself) hold the older state.
            // The job's invalidation is kept and sent when Redis is back, so they drop it
            // then and ask again.
            shared.invalidate_job(key).await;
        }
    }
    gw.watchers.changed(key.job);
    Ok(Primed::Stored)
}

/// Stores `answer` if it is to be stored and no invalidation overtook its fill; an
/// answer that was to be stored but was not is handed on as unstored (`no-store`).
async fn keep(gw: &Gateway, key: &CacheKey, answer: Arc<Answer>, epoch: u64) -> Arc<Answer> {
    if answer.expires_at.is_none() {
        return answer;
    }
    match gw
        .cache
        .insert(key.clone(), Arc::clone(&answer), epoch)
        .await
    {
        // As stored: with its gzip form, for the waiters that take it.
        Some(stored) => stored,
        None => Arc::new(answer.unstored()),
    }
}

/// The upstream's answer for `key`, its body as the upstream sent it, and for a job
/// found (200) what it said of itself.
async fn fetch_upstream(
    gw: &Gateway,
    live: &Live,
    key: &CacheKey,
    share: Option<Token>,
    deadline: tokio::time::Instant,
) -> Result<(Arc<Answer>, bytes::Bytes, Option<Seen>), GatewayError> {
    let job = key.job();
    let path = match key {
        CacheKey::Job(k) => format!("/v2/extract/{}", k.job),
        CacheKey::Chunks(k, q) if q.is_empty() => format!("/v2/extract/{}/chunks", k.job),
        CacheKey::Chunks(k, q) => format!("/v2/extract/{}/chunks?{q}", k.job),
    };
    let route = match key {
        CacheKey::Job(_) => "job",
        CacheKey::Chunks(..) => "chunks",
    };
    let fetched = live
        .upstream
        .get_buffered(route, &path, job.scope, share, deadline)
        .await?;
    let original = fetched.body.clone();
    let (answer, seen) = match key {
        CacheKey::Job(k) => job_answer(live, &gw.metrics, k.job, fetched)?,
        CacheKey::Chunks(k, _) => (chunks_answer(gw, k, fetched).await?, None),
    };
    Ok((Arc::new(answer), original, seen))
}

/// A stored answer as the shared tier keeps it: dated, with the upstream's body.
fn shared_envelope(answer: &Answer, original: bytes::Bytes) -> Option<Envelope> {
    let mut envelope = answer.envelope(Instant::now(), now_ms())?;
    envelope.body = original;
    Some(envelope)
}

/// An answer read from the shared tier, made this replica's: a job's links rewritten to
/// its own public URL (and checked to be the job asked for), a chunks body checked to be
/// JSON, and kept here no longer than this replica's own longest lifetime. `None` if it
/// is not what this replica would have stored (Redis is input like any other).
fn restored(
    live: &Live,
    key: &CacheKey,
    envelope: &Envelope,
    parent_left: Option<Duration>,
) -> Option<Answer> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // What this replica's own rules would keep it for now: the answer's life here is at
    // most that, whatever the envelope says.
    let (body, allowed) = match (key, envelope.status) {
        (CacheKey::Job(k), StatusCode::OK) => {
            let (body, facts) = live.rewriter.rewrite_job(&envelope.body).ok()?;
            if !is_job(&facts, k.job) || Some(facts.state) != envelope.job_state {
                return None;
            }
            let now = OffsetDateTime::now_utc();
            let decision = live.policy.for_job(facts.state, facts.created_at, now);
            let links = crate::cache::links::earliest_expiry(&envelope.body);
            match live.policy.for_links(decision, links, now) {
                Decision::Store(ttl) => (body, ttl),
                Decision::Skip(_) => return None,
            }
        }
        (CacheKey::Chunks(..), StatusCode::OK) => {
            // Chunks live while their job is known completed, and no longer than it.
            let parent = parent_left?;
            serde_json::from_slice::<serde::de::IgnoredAny>(&envelope.body).ok()?;
            (envelope.body.clone(), parent)
        }
        (_, StatusCode::NOT_FOUND) => match live.policy.for_not_found() {
            Decision::Store(ttl) => (envelope.body.clone(), ttl),
            Decision::Skip(_) => return None,
        },
        _ => return None,
    };
    let now = now_ms();
    let longest = ms(live.config.cache.longest_ttl());
    let mut envelope = envelope.clone();
    envelope.expires_at = envelope
        .expires_at
        .min(now.saturating_add(longest))
        .min(now.saturating_add(ms(allowed)));
    envelope.fetched_at = envelope
        .fetched_at
        .clamp(envelope.expires_at.saturating_sub(longest), now)
        .min(envelope.expires_at);
    Answer::restored(&envelope, body, now)
}

/// How long `job` stays true as a completed job, if this replica or (another replica's
/// entry in) the shared tier holds it so: what a chunks answer of it may live for.
async fn completed_job_left(gw: &Gateway, job: &JobKey) -> Option<Duration> {
    let parent = CacheKey::Job(*job);
    if let Some(local) = gw.cache.get(&parent, Instant::now(), false).await {
        if local.job_state == Some(JobState::Completed) {
            return local
                .expires_at
                .map(|at| at.saturating_duration_since(Instant::now()));
        }
    }
    let shared = gw.shared.as_ref()?;
    let envelope = shared.peek(&parent).await?;
    (envelope.job_state == Some(JobState::Completed))
        .then(|| envelope.left(now_ms()))
        .flatten()
}

/// Whether a job body's `id` is the job asked for.
fn is_job(facts: &crate::proxy::rewrite::JobFacts, asked: Uuid) -> bool {
    facts
        .id
        .as_deref()
        .and_then(|id| Uuid::try_parse(id).ok())
        .is_some_and(|id| id == asked)
}

/// Builds the answer for a job lookup: a 200 is validated and rewritten, a 404 kept
/// briefly, anything else passed on unstored.
fn job_answer(
    live: &Live,
    metrics: &crate::metrics::Metrics,
    asked: Uuid,
    fetched: Fetched,
) -> Result<(Answer, Option<Seen>), GatewayError> {
    let mut seen = None;
    let (body, state, decision) = match fetched.status {
        StatusCode::OK => {
            let (body, facts) = live.rewriter.rewrite_job(&fetched.body).map_err(|e| {
                tracing::warn!(job = %asked, error = %e, "upstream sent an unusable job");
                GatewayError::new(
                    ErrorKind::UpstreamInvalid,
                    "the upstream answered with a body that is not a JSON job",
                )
            })?;
            if !is_job(&facts, asked) {
                tracing::warn!(job = %asked, "upstream answered with another job's id");
                return Err(GatewayError::new(
                    ErrorKind::UpstreamInvalid,
                    "the upstream answered with a job whose id is not the one asked for",
                ));
            }
            let now = OffsetDateTime::now_utc();
            let decision = live.policy.for_job(facts.state, facts.created_at, now);
            // Never past the earliest expiry of a signed link in it (less the margin).
            let links = crate::cache::links::earliest_expiry(&fetched.body);
            let bounded = live.policy.for_links(decision, links, now);
            if matches!((decision, bounded), (Decision::Store(a), Decision::Store(b)) if b < a) {
                metrics.link_shortened.inc();
                tracing::debug!(job = %asked, ?links, "entry kept only until its signed links die (less cache.link_margin)");
            }
            let decision = bounded;
            seen = Some(Seen {
                state: facts.state,
                created_at: facts.created_at,
            });
            (Some(body), Some(facts.state), decision)
        }
        StatusCode::NOT_FOUND => (None, None, live.policy.for_not_found()),
        _ => (None, None, Decision::Skip(NoCacheReason::Status)),
    };
    let lifetime = lifetime(metrics, fetched.status, decision);
    Ok((answer(fetched, body, state, lifetime), seen))
}

/// Builds the answer for a chunks window: stored only while the job itself is cached as
/// completed, and only until the job's own entry expires.
async fn chunks_answer(
    gw: &Gateway,
    job: &JobKey,
    fetched: Fetched,
) -> Result<Answer, GatewayError> {
    let mut lifetime = None;
    if fetched.status == StatusCode::OK {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&fetched.body).is_err() {
            return Err(GatewayError::new(
                ErrorKind::UpstreamInvalid,
                "the upstream answered chunks with a body that is not JSON",
            ));
        }
        lifetime = completed_job_left(gw, job).await;
        if lifetime.is_none() {
            not_stored(&gw.metrics, fetched.status, NoCacheReason::JobNotCompleted);
        }
    }
    Ok(answer(fetched, None, None, lifetime))
}

/// How long a decision says the answer stays true; `None` for not stored.
fn lifetime(
    metrics: &crate::metrics::Metrics,
    status: StatusCode,
    decision: Decision,
) -> Option<Duration> {
    match decision {
        Decision::Store(ttl) => Some(ttl),
        Decision::Skip(reason) => {
            not_stored(metrics, status, reason);
            None
        }
    }
}

fn not_stored(metrics: &crate::metrics::Metrics, status: StatusCode, reason: NoCacheReason) {
    metrics
        .not_stored
        .get_or_create(&crate::metrics::CauseLabels {
            cause: reason.as_str(),
        })
        .inc();
    tracing::debug!(
        status = status.as_u16(),
        reason = reason.as_str(),
        "answer not stored"
    );
}

/// Assembles an answer from the upstream's, with `body` replacing the upstream body when
/// it was rewritten.
fn answer(
    fetched: Fetched,
    body: Option<bytes::Bytes>,
    job_state: Option<JobState>,
    lifetime: Option<Duration>,
) -> Answer {
    Answer::new(
        fetched.status,
        &fetched.headers,
        body.unwrap_or(fetched.body),
        job_state,
        lifetime,
        fetched.elapsed,
    )
}
