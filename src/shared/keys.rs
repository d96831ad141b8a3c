//! The names of everything the gateway keeps in Redis.
//!
//! Every name starts `{namespace}:v1:{fingerprint}`: the namespace so several gateways
//! (teams) share one Redis, the format version so gateways of another format never read
//! these entries, and a fingerprint of (upstream URL, API key) so gateways with another
//! key (another account) never see them. Neither the key nor the Redis password is in
//! any name or value.
//!
//! Cached answers of one job live in one hash (`...:g{generation}:job:{scope}:{id}`),
//! one field per answer (`job`, `c:{window}` for chunks) and a `purged` field dating the
//! job's last purge, so a purge is one `DEL` and a fill that began before it is refused.
//! Emptying everything bumps the generation instead of scanning: names of an older
//! generation are never read again and expire by their TTL.

use crate::cache::{CacheKey, JobKey, Scope};

/// Key and channel names for one (namespace, upstream, key).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `namespace` for the account `fingerprint` names.
    pub fn new(namespace: &str, fingerprint: [u8; 16]) -> Keys {
        Keys {
            prefix: format!("{namespace}:v1:{}", hex::encode(fingerprint)),
        }
    }

    /// The hash holding a job's answers in `generation`.
    pub fn entry(&self, generation: u64, job: &JobKey) -> String {
        format!(
            "{}:g{generation}:job:{}:{}",
            self.prefix,
            scope(job.scope),
            job.job
        )
    }

    /// The field of `key`'s answer in its job's hash.
    pub fn field(key: &CacheKey) -> String {
        match key {
            CacheKey::Job(_) => "job".into(),
            CacheKey::Chunks(_, window) => format!("c:{window}"),
        }
    }

    /// The coalescing lock of one answer.
    pub fn lock(&self, generation: u64, key: &CacheKey) -> String {
        let job = key.job();
        format!(
            "{}:g{generation}:lock:{}:{}:{}",
            self.prefix,
            scope(job.scope),
            job.job,
            Keys::field(key)
        )
    }

    /// The generation counter (bumped by "empty everything").
    pub fn generation(&self) -> String {
        format!("{}:generation", self.prefix)
    }

    /// The account's quota (the GCRA's theoretical arrival time).
    pub fn quota(&self) -> String {
        format!("{}:quota", self.prefix)
    }

    /// The 429 gate (exists while closed).
    pub fn cooldown(&self) -> String {
        format!("{}:cooldown", self.prefix)
    }

    /// The scopes a job was seen in (a set of scope name parts), for webhook priming on
    /// whichever replica the delivery reaches.
    pub fn scopes(&self, job: uuid::Uuid) -> String {
        format!("{}:scopes:{job}", self.prefix)
    }

    /// One relay delivery (its JSON), for `webhooks` with `[shared]`.
    pub fn relay_delivery(&self, id: &str) -> String {
        format!("{}{id}", self.relay_delivery_prefix())
    }

    /// What every relay delivery's name starts with.
    pub fn relay_delivery_prefix(&self) -> String {
        format!("{}:relay:d:", self.prefix)
    }

    /// One subscriber's due deliveries: a sorted set of ids by due time (ms).
    pub fn relay_due(&self, subscriber: &str) -> String {
        format!("{}:relay:due:{subscriber}", self.prefix)
    }

    /// Every relay delivery by creation time (ms), for the admin routes.
    pub fn relay_all(&self) -> String {
        format!("{}:relay:all", self.prefix)
    }

    /// Exists while a subscriber is disabled (it answered 410).
    pub fn relay_disabled(&self, subscriber: &str) -> String {
        format!("{}:relay:off:{subscriber}", self.prefix)
    }

    /// The invalidation channel.
    pub fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

/// A scope as a name part; also how invalidation messages name it.
pub fn scope(scope: Scope) -> String {
    match scope {
        Scope::Workspace => "w".into(),
        Scope::Base(id) => format!("b.{id}"),
        Scope::Legacy(id) => format!("l.{id}"),
    }
}

/// The scope a name part names.
pub fn parse_scope(text: &str) -> Option<Scope> {
    if text == "w" {
        return Some(Scope::Workspace);
    }
    let (kind, id) = text.split_once('.')?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    match kind {
        "b" => Some(Scope::Base(id)),
        "l" => Some(Scope::Legacy(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn scopes_and_answers_get_names_of_their_own() {
        let keys = Keys::new("team", [7; 16]);
        let id = Uuid::new_v4();
        let base = Uuid::new_v4();
        let names: std::collections::HashSet<String> =
            [Scope::Workspace, Scope::Base(base), Scope::Legacy(base)]
                .into_iter()
                .map(|scope| keys.entry(0, &JobKey { scope, job: id }))
                .collect();
        assert_eq!(names.len(), 3);
        for s in [Scope::Workspace, Scope::Base(base), Scope::Legacy(base)] {
            assert_eq!(parse_scope(&scope(s)), Some(s));
        }
        assert_eq!(parse_scope("x.1"), None);
        let job = JobKey {
            scope: Scope::Workspace,
            job: id,
        };
        assert_ne!(
            keys.lock(0, &CacheKey::Job(job)),
            keys.lock(0, &CacheKey::Chunks(job, "start=1".into()))
        );
        assert!(keys.entry(3, &job).starts_with("team:v1:0707"));
    }
}
