//! `[webhooks]`: the gateway owns the account's one webhook URL, hears completions there
//! and relays them to `[[webhooks.subscribers]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, size};

/// `[webhooks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The variable holding the receiver's path secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Or a file holding it (a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Where the API reaches the gateway: the receiver is `public_url` +
    /// `/webhooks/exabase/{secret}`.
    pub public_url: String,
    /// Replaces `cache.in_progress_ttl` while webhooks are on: a completion now arrives by
    /// push, so in-progress answers may be kept longer.
    #[serde(default = "default_in_progress_ttl", with = "duration")]
    pub in_progress_ttl: Duration,
    /// Largest delivery accepted; over it, `413`.
    #[serde(default = "default_max_body", with = "size")]
    pub max_body: u64,
    /// Waits between relay attempts after each failure, jittered by a fifth either way;
    /// the last one repeats until the job's `createdAt` + 24 h.
    #[serde(default = "default_retry_schedule", with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// The apps that hear of each event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberConfig>,
}

fn default_in_progress_ttl() -> Duration {
    Duration::from_secs(15)
}

fn default_max_body() -> u64 {
    1024 * 1024
}

fn default_retry_schedule() -> Vec<Duration> {
    [5, 30, 120, 600, 1800, 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// Serde adapter for a list of durations.
mod durations {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|d| super::super::format_duration(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    serde::de::Error::custom(format!("`{text}` is not a duration ({e})"))
                })
            })
            .collect()
    }
}

/// One `[[webhooks.subscribers]]` entry: an app that hears of job events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Shown in logs, metrics and the admin routes.
    pub name: String,
    /// Where its deliveries are POSTed (`http://` or `https://`). Printed (by `check`)
    /// without its query or user info, which may hold an app's token.
    #[serde(serialize_with = "without_query")]
    pub url: String,
    /// The variable holding its `whsec_...` signing secret.
    pub secret_env: String,
    /// The bases whose jobs it hears of; absent means any base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bases: Option<Vec<uuid::Uuid>>,
    /// Whether it hears of jobs of the workspace scope (as `[[clients]]`: absent, allowed
    /// when `bases` is absent too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<bool>,
    /// The event types it wants; absent means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

fn without_query<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shown_url(url))
}

/// A subscriber URL as shown: scheme, host, port and path; a query or user info is
/// replaced by `***`.
pub fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
            format!(
                "{}://{}{host}{port}{}{}",
                uri.scheme_str().unwrap_or("http"),
                if userinfo { "***@" } else { "" },
                uri.path(),
                if uri.query().is_some() { "?***" } else { "" }
            )
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// The event types the gateway sends.
pub const EVENT_TYPES: [&str; 3] = [
    "extract.job.completed",
    "extract.job.failed",
    "extract.job.cleaned",
];

/// Shortest receiver secret accepted: about 190 bits in URL-safe characters.
pub const MIN_SECRET: usize = 32;

/// Where the receiver's secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `webhooks.secret_env`, by name.
    Env(String),
    /// `webhooks.secret_file`.
    File(PathBuf),
}

impl WebhooksConfig {
    /// Checks what the types cannot; `Err` names the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (&self.secret_env, &self.secret_file) {
            (None, None) => {
                return Err((
                    "webhooks.secret_env",
                    "set webhooks.secret_env or webhooks.secret_file: the receiver's path secret must come from somewhere".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    "webhooks.secret_env",
                    "set only one of webhooks.secret_env and webhooks.secret_file".into(),
                ))
            }
            (Some(name), None) if name.trim().is_empty() => {
                return Err(("webhooks.secret_env", "must not be empty".into()))
            }
            _ => {}
        }
        super::http_origin(&self.public_url).map_err(|m| ("webhooks.public_url", m))?;
        if self.retry_schedule.is_empty() || self.retry_schedule.iter().any(Duration::is_zero) {
            return Err((
                "webhooks.retry_schedule",
                "must list at least one wait, each above 0".into(),
            ));
        }
        if self.max_body < 1024 {
            return Err(("webhooks.max_body", "must be at least 1KiB".into()));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.subscribers {
            if s.name.trim().is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err((
                    "webhooks.subscribers.name",
                    format!(
                        "`{}`: use letters, digits, `-`, `_` or `.` (it names the subscriber in admin routes and metrics)",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err((
                    "webhooks.subscribers.name",
                    format!("`{}` appears twice", s.name),
                ));
            }
            let url: http::Uri = s.url.parse().map_err(|_| {
                (
                    "webhooks.subscribers.url",
                    format!("subscriber `{}`: not a URL", s.name),
                )
            })?;
            let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
            if !scheme_ok || url.host().is_none() {
                return Err((
                    "webhooks.subscribers.url",
                    format!(
                        "subscriber `{}`: must be an absolute http:// or https:// URL",
                        s.name
                    ),
                ));
            }
            if s.secret_env.trim().is_empty() {
                return Err((
                    "webhooks.subscribers.secret_env",
                    format!("subscriber `{}`: must not be empty", s.name),
                ));
            }
            for event in s.events.iter().flatten() {
                if !EVENT_TYPES.contains(&event.as_str()) {
                    return Err((
                        "webhooks.subscribers.events",
                        format!(
                            "subscriber `{}`: `{event}` is not one of {}",
                            s.name,
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where the secret comes from.
    pub fn secret_source(&self) -> SecretSource {
        match (&self.secret_file, &self.secret_env) {
            (Some(file), _) => SecretSource::File(file.clone()),
            (None, name) => SecretSource::Env(name.clone().unwrap_or_default()),
        }
    }

    /// Reads the receiver's secret. The error names where it looked, never the value.
    pub fn load_secret(&self) -> Result<String, String> {
        let (text, from) = match self.secret_source() {
            SecretSource::Env(name) => (
                std::env::var(&name)
                    .map_err(|_| format!("webhooks.secret_env: the variable {name} is not set"))?,
                format!("the variable {name}"),
            ),
            SecretSource::File(path) => (
                std::fs::read_to_string(&path).map_err(|e| {
                    format!("webhooks.secret_file: cannot read {}: {e}", path.display())
                })?,
                format!("the file {}", path.display()),
            ),
        };
        let secret = text.trim().to_owned();
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "the webhook secret in {from} is shorter than {MIN_SECRET} characters (`exagate webhooks secret` prints a good one)"
            ));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            return Err(format!(
                "the webhook secret in {from} may hold only letters, digits, `-`, `_`, `.` and `~` (it is a path segment)"
            ));
        }
        Ok(secret)
    }
}
