//! How long an answer stays true, decided from the answer itself.
//!
//! A decision is a value ([`Decision`]) with a reason, so the same value can feed the log
//! line, metrics and tests, as pingora does with its `NoCacheReason`.

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::CacheConfig;

/// A job's `state` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Queued, or `null` (the examples show `null` for a job just created).
    Pending,
    /// Being worked on.
    Processing,
    /// Done; immutable until the retention deletes its files.
    Completed,
    /// Failed; a reprocess can make it pending again.
    Failed,
    /// Files deleted after retention; never changes again.
    Cleaned,
    /// A value this gateway does not know: treated like an in-progress state.
    Unknown,
}

impl JobState {
    /// Reads the `state` field's value (`None` for JSON `null` or a missing field).
    pub fn parse(state: Option<&str>) -> JobState {
        match state {
            None | Some("pending") => JobState::Pending,
            Some("processing") => JobState::Processing,
            Some("completed") => JobState::Completed,
            Some("failed") => JobState::Failed,
            Some("cleaned") => JobState::Cleaned,
            Some(_) => JobState::Unknown,
        }
    }

    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cleaned => "cleaned",
            JobState::Unknown => "unknown",
        }
    }
}

/// Why an answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCacheReason {
    /// The status is never cached (401, 403, 429, 5xx, ...).
    Status,
    /// The TTL for this state is configured to 0.
    Disabled,
    /// A completed job already past `createdAt + retention`: it is `cleaned` upstream.
    PastRetention,
    /// A completed job without a readable `createdAt`: its end of life is unknown.
    NoCreatedAt,
    /// A chunks answer for a job not known to be completed.
    JobNotCompleted,
    /// A signed link in the job dies within `cache.link_margin`.
    LinksExpiring,
}

impl NoCacheReason {
    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NoCacheReason::Status => "status",
            NoCacheReason::Disabled => "disabled",
            NoCacheReason::PastRetention => "past_retention",
            NoCacheReason::NoCreatedAt => "no_created_at",
            NoCacheReason::JobNotCompleted => "job_not_completed",
            NoCacheReason::LinksExpiring => "links_expiring",
        }
    }
}

/// Store an answer for this long, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep it for `ttl` from now.
    Store(Duration),
    /// Do not keep it.
    Skip(NoCacheReason),
}

/// The per-state expiry rules, from `[cache]`.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Cap for completed jobs.
    completed_ttl: Duration,
    /// Upstream's retention after `createdAt`.
    retention: Duration,
    /// For `cleaned` jobs.
    cleaned_ttl: Duration,
    /// For `failed` jobs.
    failed_ttl: Duration,
    /// For pending/processing/unknown jobs.
    in_progress_ttl: Duration,
    /// For 404s.
    not_found_ttl: Duration,
    /// How long before a signed link's expiry a job's entry ends.
    link_margin: Duration,
}

impl CachePolicy {
    /// The rules from the `[cache]` section.
    pub fn new(config: &CacheConfig) -> CachePolicy {
        CachePolicy {
            completed_ttl: config.completed_ttl,
            retention: config.retention,
            cleaned_ttl: config.cleaned_ttl,
            failed_ttl: config.failed_ttl,
            in_progress_ttl: config.in_progress_ttl,
            not_found_ttl: config.not_found_ttl,
            link_margin: config.link_margin,
        }
    }

    /// How long a 200 job answer in `state`, created at `created_at`, stays true at `now`.
    pub fn for_job(
        &self,
        state: JobState,
        created_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Decision {
        let ttl = match state {
            JobState::Completed => {
                let Some(created_at) = created_at else {
                    return Decision::Skip(NoCacheReason::NoCreatedAt);
                };
                // The job turns `cleaned` at createdAt + retention: never serve the
                // completed body past that moment. `createdAt` is the upstream's word:
                // a date at the end of the range has no representable end of life, and
                // such a job is kept for `completed_ttl` (never a panic).
                let cleaned_at = time::Duration::try_from(self.retention)
                    .ok()
                    .and_then(|retention| created_at.checked_add(retention));
                match cleaned_at {
                    None => self.completed_ttl,
                    Some(cleaned_at) => {
                        let left = cleaned_at - now;
                        if left <= time::Duration::ZERO {
                            return Decision::Skip(NoCacheReason::PastRetention);
                        }
                        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
                        left.min(self.completed_ttl)
                    }
                }
            }
            JobState::Cleaned => self.cleaned_ttl,
            JobState::Failed => self.failed_ttl,
            JobState::Pending | JobState::Processing | JobState::Unknown => self.in_progress_ttl,
        };
        Self::store_for(ttl)
    }

    /// `decision` for a job whose earliest signed link dies at `links`: kept no longer
    /// than `cache.link_margin` before it, and not at all if that moment is past. Links
    /// of unknown formats (`None`) change nothing.
    pub fn for_links(
        &self,
        decision: Decision,
        links: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Decision {
        let (Decision::Store(ttl), Some(dies)) = (decision, links) else {
            return decision;
        };
        let margin = time::Duration::try_from(self.link_margin).unwrap_or(time::Duration::MAX);
        let left = dies
            .checked_sub(margin)
            .map_or(time::Duration::ZERO, |until| until - now);
        if left <= time::Duration::ZERO {
            return Decision::Skip(NoCacheReason::LinksExpiring);
        }
        Decision::Store(ttl.min(Duration::try_from(left).unwrap_or(Duration::ZERO)))
    }

    /// How long a 404 stays true: briefly, since a job can appear moments after its
    /// creation was acknowledged.
    pub fn for_not_found(&self) -> Decision {
        Self::store_for(self.not_found_ttl)
    }

    fn store_for(ttl: Duration) -> Decision {
        if ttl.is_zero() {
            Decision::Skip(NoCacheReason::Disabled)
        } else {
            Decision::Store(ttl)
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn signed_links_bound_the_entry_less_the_margin() {
        let config = crate::config::CacheConfig {
            link_margin: Duration::from_secs(60),
            ..crate::config::CacheConfig::default()
        };
        let policy = CachePolicy::new(&config);
        let now = OffsetDateTime::now_utc();
        let day = Decision::Store(Duration::from_secs(86_400));
        let soon = now + time::Duration::seconds(600);
        assert_eq!(
            policy.for_links(day, Some(soon), now),
            Decision::Store(Duration::from_secs(540))
        );
        let within = now + time::Duration::seconds(30);
        assert_eq!(
            policy.for_links(day, Some(within), now),
            Decision::Skip(NoCacheReason::LinksExpiring)
        );
        assert_eq!(policy.for_links(day, None, now), day);
        let short = Decision::Store(Duration::from_secs(1));
        assert_eq!(policy.for_links(short, Some(soon), now), short);
        let skip = Decision::Skip(NoCacheReason::Status);
        assert_eq!(policy.for_links(skip, Some(within), now), skip);
    }

    use super::*;
    use time::macros::datetime;

    fn policy() -> CachePolicy {
        CachePolicy::new(&CacheConfig::default())
    }

    const NOW: OffsetDateTime = datetime!(2026-11-29 12:00 UTC);

    #[test]
    fn completed_is_kept_until_retention_ends() {
        let created = NOW - time::Duration::hours(23);
        assert_eq!(
            policy().for_job(JobState::Completed, Some(created), NOW),
            Decision::Store(Duration::from_secs(3600))
        );
    }

    #[test]
    fn completed_is_capped_by_completed_ttl() {
        let config = CacheConfig {
            completed_ttl: Duration::from_secs(600),
            ..CacheConfig::default()
        };
        let created = NOW - time::Duration::minutes(1);
        assert_eq!(
            CachePolicy::new(&config).for_job(JobState::Completed, Some(created), NOW),
            Decision::Store(Duration::from_secs(600))
        );
    }

    #[test]
    fn completed_past_retention_is_not_stored() {
        let created = NOW - time::Duration::hours(25);
        assert_eq!(
            policy().for_job(JobState::Completed, Some(created), NOW),
            Decision::Skip(NoCacheReason::PastRetention)
        );
        let exactly = NOW - time::Duration::hours(24);
        assert_eq!(
            policy().for_job(JobState::Completed, Some(exactly), NOW),
            Decision::Skip(NoCacheReason::PastRetention)
        );
    }

    #[test]
    fn a_created_at_at_the_end_of_time_is_kept_for_completed_ttl() {
        let end = datetime!(9999-12-31 23:59:59 UTC);
        assert_eq!(
            policy().for_job(JobState::Completed, Some(end), NOW),
            Decision::Store(CacheConfig::default().completed_ttl)
        );
        let start = datetime!(-9999-01-01 00:00:00 UTC);
        assert_eq!(
            policy().for_job(JobState::Completed, Some(start), NOW),
            Decision::Skip(NoCacheReason::PastRetention)
        );
    }

    #[test]
    fn completed_without_created_at_is_not_stored() {
        assert_eq!(
            policy().for_job(JobState::Completed, None, NOW),
            Decision::Skip(NoCacheReason::NoCreatedAt)
        );
    }

    #[test]
    fn other_states_use_their_ttl() {
        let p = policy();
        let cases = [
            (JobState::Cleaned, Duration::from_secs(7 * 86400)),
            (JobState::Failed, Duration::from_secs(30)),
            (JobState::Pending, Duration::from_secs(1)),
            (JobState::Processing, Duration::from_secs(1)),
            (JobState::Unknown, Duration::from_secs(1)),
        ];
        for (state, ttl) in cases {
            assert_eq!(
                p.for_job(state, None, NOW),
                Decision::Store(ttl),
                "{state:?}"
            );
        }
        assert_eq!(p.for_not_found(), Decision::Store(Duration::from_secs(2)));
    }

    #[test]
    fn zero_ttl_turns_storing_off() {
        let config = CacheConfig {
            in_progress_ttl: Duration::ZERO,
            ..CacheConfig::default()
        };
        assert_eq!(
            CachePolicy::new(&config).for_job(JobState::Pending, None, NOW),
            Decision::Skip(NoCacheReason::Disabled)
        );
    }

    #[test]
    fn null_and_unknown_states_parse() {
        assert_eq!(JobState::parse(None), JobState::Pending);
        assert_eq!(JobState::parse(Some("archived")), JobState::Unknown);
        assert_eq!(JobState::parse(Some("completed")), JobState::Completed);
    }
}
