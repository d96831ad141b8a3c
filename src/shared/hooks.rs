//! What webhooks keep in Redis: the scopes each job was seen in, so the replica a
//! delivery reaches primes the scopes any replica saw.

use super::{keys, Shared};
use crate::cache::Scope;

/// How long a job's scopes are kept after it was last seen (past its 24 h retention).
const SCOPES_TTL_SECS: u64 = 25 * 3600;

impl Shared {
    /// Records that `job` exists in `scope`, in the background.
    pub fn record_scope(self: &std::sync::Arc<Self>, job: uuid::Uuid, scope: Scope) {
        if !self.usable() {
            return;
        }
        let shared = std::sync::Arc::clone(self);
        super::spawn(async move {
            let key = shared.keys.scopes(job);
            let _ = shared
                .run::<(), _, _>("scopes", false, |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("SADD")
                        .arg(&key)
                        .arg(keys::scope(scope))
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(SCOPES_TTL_SECS)
                        .ignore()
                        .query_async(&mut c)
                        .await
                })
                .await;
        });
    }

    /// The scopes any replica saw `job` in; `Err` when Redis is away. A member that is
    /// not a scope name is skipped (Redis is input like any other).
    pub async fn scopes_of(&self, job: uuid::Uuid) -> Result<Vec<Scope>, super::Unavailable> {
        let key = self.keys.scopes(job);
        let members = self
            .run::<Vec<String>, _, _>("scopes", false, |mut c| async move {
                redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(members
            .iter()
            .take(8)
            .filter_map(|m| keys::parse_scope(m))
            .collect())
    }
}
