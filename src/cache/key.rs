//! Cache keys.
//!
//! The key holds the scope (base id or workspace) and the job id, never the API key: one
//! gateway holds one key, so the credential is the same for every entry, and a key in a
//! cache key would be one more place a secret can leak from (a debug dump of the cache).

use std::fmt;

use uuid::Uuid;

/// One job in one scope. Jobs of different scopes never see each other upstream, so
/// neither may they here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// `X-Exabase-Base-Id`, or `None` for the parent workspace.
    pub base: Option<Uuid>,
    /// The job id, parsed (so case cannot split one job into two entries).
    pub job: Uuid,
}

/// What a cache entry is: the job itself, or one window of its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// `GET /v2/extract/{id}`.
    Job(JobKey),
    /// `GET /v2/extract/{id}/chunks?{query}`; the query in its canonical form
    /// ([`chunk_window`](crate::proxy::route::chunk_window)).
    Chunks(JobKey, Box<str>),
}

impl CacheKey {
    /// The job this entry belongs to, for purging a job with all its chunks.
    pub fn job(&self) -> &JobKey {
        match self {
            CacheKey::Job(k) | CacheKey::Chunks(k, _) => k,
        }
    }

    /// Bytes this key holds beyond its inline size, for the weigher.
    pub fn heap_bytes(&self) -> usize {
        match self {
            CacheKey::Job(_) => 0,
            CacheKey::Chunks(_, q) => q.len(),
        }
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.base {
            Some(base) => write!(f, "{base}/{}", self.job),
            None => write!(f, "-/{}", self.job),
        }
    }
}
