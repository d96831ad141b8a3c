//! Long-poll: `GET /v2/extract/{id}?wait=30s` holds the request while the job is in
//! progress and answers at the first change of its state, or at the end of the wait with
//! the current state; a finished job answers at once.
//!
//! Waiters never call the upstream themselves: each looks again when the job's
//! in-progress entry expires, and the first to find it gone leads the one refresh that
//! all the others join (the flights), so a thousand waiters on a job cost what one
//! poller costs. A webhook delivery, a refresh or another replica's invalidation wakes
//! them at once (see [`Watchers`](crate::cache::watch::Watchers)).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use super::exchange::Exchange;
use super::lookup::{answer_for, conditional};
use crate::body::Body;
use crate::cache::answer::XCache;
use crate::cache::{CacheKey, JobKey, JobState};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;

/// How often waiters look again when their answer was not stored (no expiry to wait
/// for): one refresh per job per tick, however many wait.
const UNSTORED_RETRY: Duration = Duration::from_secs(1);

/// The next tick of [`UNSTORED_RETRY`] after `now`, on a clock every waiter shares.
fn next_tick(now: Instant) -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    let period = UNSTORED_RETRY.as_nanos().max(1);
    let since = now.saturating_duration_since(start).as_nanos();
    let ticks = since / period + 1;
    let at = u64::try_from(ticks * period).unwrap_or(u64::MAX);
    start + Duration::from_nanos(at)
}

/// Past the entry's expiry, so the look finds it gone rather than racing it.
const PAST_EXPIRY: Duration = Duration::from_millis(5);

/// Holds a job lookup until its state changes, up to `wait` (capped at
/// `server.max_wait`, less a jitter of up to a sixteenth so waits begun together do not
/// end together).
pub async fn hold(
    gw: &Arc<Gateway>,
    key: JobKey,
    head: bool,
    wait: Duration,
    if_none_match: Option<HeaderValue>,
    ex: &mut Exchange,
) -> Response<Body> {
    let max_wait = gw.peek().config.server.max_wait;
    let wait = wait.min(max_wait);
    let wait = wait.saturating_sub(wait.mul_f64(crate::webhooks::relay::fraction() / 16.0));
    let deadline = Instant::now() + wait;
    let cache_key = CacheKey::Job(key);
    // Subscribed before the first look: a change between the two is not missed.
    let mut watch = gw.watchers.watch(key.job);
    let mut current = answer_for(gw, cache_key.clone(), ex, std::time::Instant::now()).await;
    let baseline = match &current {
        Ok((answer, _)) => answer.job_state,
        Err(_) => None,
    };
    let mut planned_at: Option<Instant> = None;
    while let Ok((answer, _)) = &current {
        let planned = planned_at;
        let in_progress = answer.status == StatusCode::OK
            && matches!(
                answer.job_state,
                Some(JobState::Pending | JobState::Processing | JobState::Unknown)
            );
        if !in_progress {
            break;
        }
        let changed = match &if_none_match {
            Some(tags) => !answer.matches(tags),
            None => answer.job_state != baseline,
        };
        let now = Instant::now();
        if changed || now >= deadline || gw.watchers.closing() {
            break;
        }
        let planned = match planned {
            Some(at) if at > now => at,
            _ => match answer.expires_at {
                Some(at) => Instant::from_std(at) + PAST_EXPIRY,
                // Not stored (in_progress_ttl = "0s"): on the next tick of a clock all
                // waiters share, so their looks coincide and join one fetch.
                None => next_tick(now),
            }
            .max(now + PAST_EXPIRY),
        }
        .min(deadline);
        let woken = tokio::select! {
            _ = watch.changed() => true,
            _ = tokio::time::sleep_until(planned) => false,
        };
        if woken {
            // A hint that the cache may hold news: read it only. Fetching here would let
            // each waiter's refresh wake the others into fetching again.
            if let Some(news) = gw
                .cache
                .get(&cache_key, std::time::Instant::now(), !ex.gzip)
                .await
            {
                ex.cache = XCache::Hit;
                current = Ok((news, XCache::Hit));
                planned_at = None;
                continue;
            }
            if answer.expires_at.is_none() {
                // Nothing was stored to begin with: the wake-up is another waiter's
                // refresh, which stored nothing either; wait for the tick.
                planned_at = Some(planned);
                continue;
            }
            // The entry was dropped (a purge, an action, another replica's news): look
            // again now, through the shared tier first.
            planned_at = None;
            current = answer_for(gw, cache_key.clone(), ex, std::time::Instant::now()).await;
            continue;
        }
        if planned >= deadline && answer.expires_at.is_none() {
            // The wait is over and nothing is stored to look at: the last look (a tick
            // old at most) is the answer, rather than one more fetch per waiter.
            break;
        }
        planned_at = None;
        current = answer_for(gw, cache_key.clone(), ex, std::time::Instant::now()).await;
    }
    drop(watch);
    match current {
        Ok((answer, cache)) => conditional(
            gw,
            &answer,
            head,
            cache,
            std::time::Instant::now(),
            ex.gzip,
            if_none_match.as_ref(),
        ),
        Err(e) => {
            ex.error = Some(e.kind.code());
            e.to_response(crate::cache::answer::XCache::Miss.as_str())
        }
    }
}

/// Reads `wait` from a job lookup's query: `30s`, `1m`, `500ms` or plain seconds
/// (`30`). `None` when absent; `400` when it is not a duration.
pub fn wait_param(query: &str) -> Result<Option<Duration>, GatewayError> {
    // Nearly every lookup has no query at all.
    if query.is_empty() {
        return Ok(None);
    }
    let Some(value) = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(name, _)| *name == "wait")
        .map(|(_, value)| value)
    else {
        return Ok(None);
    };
    let bad = || {
        GatewayError::new(
            ErrorKind::InvalidWait,
            "wait must be a duration such as 30s, 1m or 500ms, or whole seconds",
        )
    };
    let value = value.trim();
    if value.is_empty() || value.len() > 32 {
        return Err(bad());
    }
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Some(Duration::from_secs(secs.min(86_400))));
    }
    humantime::parse_duration(value)
        .map(Some)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_reads_durations_and_seconds_and_refuses_the_rest() {
        assert_eq!(wait_param("").expect("none"), None);
        assert_eq!(wait_param("x=1").expect("none"), None);
        assert_eq!(
            wait_param("wait=30s").expect("30s"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait_param("a=b&wait=15").expect("15"),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            wait_param("wait=500ms").expect("ms"),
            Some(Duration::from_millis(500))
        );
        for bad in ["wait=", "wait=soon", "wait=-1s", "wait"] {
            assert_eq!(
                wait_param(bad).expect_err(bad).kind,
                ErrorKind::InvalidWait,
                "{bad}"
            );
        }
    }
}
