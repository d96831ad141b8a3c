//! Cache keys.
//!
//! The key holds the scope (workspace, base, or the legacy workspace header) and the job id, never the API key: one
//! gateway holds one key, so the credential is the same for every entry, and a key in a
//! cache key would be one more place a secret can leak from (a debug dump of the cache).

use std::fmt;

use uuid::Uuid;

/// Which scope a request runs in upstream, from its scope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// No scope header: the parent workspace.
    Workspace,
    /// `X-Exabase-Base-Id`: a base (a sandboxed container inside the workspace).
    Base(Uuid),
    /// `X-Exabase-Workspace-Id`, the API's earlier name for the scope header. Whether the
    /// API still honours it, and as what, is unknown, so it is a scope of its own: never
    /// the same entries as the base or the workspace of the same id.
    Legacy(Uuid),
}

/// One job in one scope. Jobs of different scopes never see each other upstream, so
/// neither may they here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// The scope it was asked in.
    pub scope: Scope,
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
        match self.scope {
            Scope::Base(base) => write!(f, "{base}/{}", self.job),
            Scope::Workspace => write!(f, "-/{}", self.job),
            Scope::Legacy(id) => write!(f, "workspace:{id}/{}", self.job),
        }
    }
}
