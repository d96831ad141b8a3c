//! `[shared]` (the tier replicas share on Redis) and `[state]` (what a lone gateway keeps
//! on disk across restarts). Both are optional: with neither, a process is on its own
//! and starts cold, as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::duration;

/// `[shared]`: replicas act as one gateway through one Redis (or Valkey).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `redis://`, `rediss://` (TLS) or `unix://` (a socket). It may hold a password:
    /// printed redacted, never logged.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub redis_url: Option<String>,
    /// Or the variable holding that URL (the way to keep a password out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// Prefix of every key and channel, so several gateways (teams) share one Redis.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Longest any one Redis command may take; past it the request goes on without Redis
    /// and Redis is skipped for a few seconds.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// While Redis is unreachable each replica spends `upstream.rate_limit / max_replicas`
    /// on its own, so the replicas together stay under the account's quota.
    #[serde(default = "default_max_replicas")]
    pub max_replicas: u32,
}

fn default_namespace() -> String {
    "exagate".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_max_replicas() -> u32 {
    3
}

/// `[state]`: where the gateway keeps what must outlive the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// A directory the gateway may write to; unset, nothing is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// How often the cache is written there while serving (and always on draining).
    #[serde(with = "duration")]
    pub snapshot_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: None,
            snapshot_interval: Duration::from_secs(300),
        }
    }
}

/// Where the Redis URL comes from, resolved at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// `shared.redis_url`.
    File,
    /// `shared.redis_url_env`, by name.
    Env(String),
}

impl SharedConfig {
    /// The Redis URL, read from the file or its variable, and where it came from. The
    /// error names the variable, never the value.
    pub fn url(&self) -> Result<(String, UrlSource), String> {
        match (&self.redis_url, &self.redis_url_env) {
            (Some(url), None) => Ok((url.clone(), UrlSource::File)),
            (None, Some(var)) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => {
                    Ok((url.trim().to_string(), UrlSource::Env(var.clone())))
                }
                _ => Err(format!(
                    "shared.redis_url_env names ${var}, which is unset or empty"
                )),
            },
            _ => Err("set exactly one of shared.redis_url and shared.redis_url_env".into()),
        }
    }

    /// Checks what the types cannot; `Err` is `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (&self.redis_url, &self.redis_url_env) {
            (Some(_), Some(_)) | (None, None) => {
                return Err((
                    "shared.redis_url",
                    "set exactly one of shared.redis_url and shared.redis_url_env".into(),
                ))
            }
            (Some(url), None) => check_url(url).map_err(|m| ("shared.redis_url", m))?,
            (None, Some(var)) if var.trim().is_empty() => {
                return Err(("shared.redis_url_env", "must name a variable".into()))
            }
            (None, Some(_)) => {}
        }
        let ns = &self.namespace;
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if ns.is_empty() || ns.len() > 64 || !ns.chars().all(allowed) {
            return Err((
                "shared.namespace",
                "must be 1 to 64 of A-Z a-z 0-9 - _ . (it prefixes every Redis key)".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(10) {
            return Err((
                "shared.timeout",
                "must be greater than 0 and at most 10s: requests wait this long for Redis".into(),
            ));
        }
        if self.max_replicas == 0 {
            return Err(("shared.max_replicas", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl StateConfig {
    /// Checks what the types cannot; `Err` is `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.snapshot_interval < Duration::from_secs(1) {
            return Err(("state.snapshot_interval", "must be at least 1s".into()));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err((
                "state.dir",
                "must not be empty (leave it out to keep nothing)".into(),
            ));
        }
        Ok(())
    }
}

/// A Redis URL the client will take: its scheme, and nothing of it echoed back (it may
/// hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "rediss" | "unix" | "redis+unix") => {}
        _ => {
            return Err(
                "must start with redis://, rediss:// or unix:// (the URL is not shown: it may hold a password)"
                    .into(),
            )
        }
    }
    redis::Client::open(url).map(|_| ()).map_err(|_| {
        "is not a Redis URL the client can use (the URL is not shown: it may hold a password)"
            .into()
    })
}

/// A URL with its password (and user name) replaced, for `exagate check` and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{tail}", &authority[at + 1..]),
        None => {
            // A query can carry a password too (`?password=`): drop the query.
            let tail = tail.split('?').next().unwrap_or("");
            format!("{scheme}://{authority}{tail}")
        }
    }
}

fn redacted<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, shown) in [
            ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
            ("rediss://user:s3cret@cache:6380", "rediss://***@cache:6380"),
            (
                "redis://cache:6379/0?password=s3cret",
                "redis://cache:6379/0",
            ),
            ("redis://a@b:c@cache/1", "redis://***@cache/1"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ] {
            assert_eq!(redact_url(url), shown);
            assert!(!redact_url(url).contains("s3cret"));
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in ["http://:pw@cache", "cache:6379", "redis://[::1"] {
            let e = check_url(url).expect_err(url);
            assert!(!e.contains("pw") && !e.contains("cache"), "{e}");
        }
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
    }
}
