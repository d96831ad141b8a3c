//! Which scopes each job has been seen in. A delivery carries no base id, so the gateway
//! primes only the scopes it saw the job in (a create through it, a lookup), never a
//! guessed one.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::cache::Scope;

/// Most scopes kept per job (a job lives in one; a few more are apps asking it in the
/// wrong scope, which the upstream answers 404 and which are never recorded).
const MAX_SCOPES: usize = 4;

/// Jobs remembered; an account's quota allows far fewer jobs a day.
const MAX_JOBS: u64 = 500_000;

/// How long a job is remembered after it was last seen: past its 24 h retention.
const REMEMBER: Duration = Duration::from_secs(25 * 3600);

/// The scopes of recently seen jobs.
pub struct Scopes {
    seen: moka::sync::Cache<Uuid, Arc<[Scope]>>,
}

impl Default for Scopes {
    fn default() -> Self {
        Scopes {
            seen: moka::sync::Cache::builder()
                .max_capacity(MAX_JOBS)
                .time_to_live(REMEMBER)
                .build(),
        }
    }
}

impl Scopes {
    /// Records that `job` exists in `scope` (the upstream answered it there).
    pub fn record(&self, job: Uuid, scope: Scope) {
        if self.seen.get(&job).is_some_and(|s| s.contains(&scope)) {
            return;
        }
        self.seen
            .entry(job)
            .and_upsert_with(|current| match current {
                Some(entry) => {
                    let mut scopes = entry.into_value().to_vec();
                    if !scopes.contains(&scope) {
                        if scopes.len() >= MAX_SCOPES {
                            scopes.remove(0);
                        }
                        scopes.push(scope);
                    }
                    Arc::from(scopes)
                }
                None => Arc::from(vec![scope]),
            });
    }

    /// The scopes `job` was seen in; empty for a job never seen.
    pub fn of(&self, job: Uuid) -> Vec<Scope> {
        self.seen.get(&job).map(|s| s.to_vec()).unwrap_or_default()
    }

    /// Every job and its scopes (for the state file).
    pub fn all(&self) -> Vec<(Uuid, Vec<Scope>)> {
        self.seen
            .iter()
            .map(|(job, scopes)| (*job, scopes.to_vec()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_accumulate_without_repeats() {
        let scopes = Scopes::default();
        let (job, base) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(scopes.of(job).is_empty());
        scopes.record(job, Scope::Base(base));
        scopes.record(job, Scope::Base(base));
        scopes.record(job, Scope::Workspace);
        assert_eq!(scopes.of(job), vec![Scope::Base(base), Scope::Workspace]);
    }
}
