//! Configuration: one TOML file turned into typed, validated structs.
//!
//! Parsing is kept apart from the code that uses the config (the linkerd2-proxy way):
//! the rest of the gateway only ever sees a [`Config`] whose values are already checked,
//! so no request path has to handle a bad setting. Unknown keys are errors, so a typo in
//! an ops file fails loudly instead of silently falling back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod shared;
mod webhooks;
pub use shared::{check_url as check_redis_url, redact_url, SharedConfig, StateConfig, UrlSource};
pub use webhooks::{
    shown_url as shown_subscriber_url, SecretSource, SubscriberConfig, WebhooksConfig, EVENT_TYPES,
    MIN_SECRET,
};

/// A problem with the configuration file; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong form.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The parser's message, which quotes the offending line and key.
        message: String,
    },
    /// A value parsed but makes no sense (e.g. a zero timeout).
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The dotted key, as written in the file.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole, validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where and how the gateway listens.
    pub server: ServerConfig,
    /// The Exabase API behind the gateway.
    pub upstream: UpstreamConfig,
    /// Cache size and per-state lifetimes.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin listener (metrics, health, purge).
    pub admin: AdminConfig,
    /// Who may call; empty means the gateway is open.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientConfig>,
    /// The tier replicas share on Redis; `None`: this process is on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedConfig>,
    /// What is kept on disk across restarts.
    pub state: StateConfig,
    /// The account's webhook, received and relayed by the gateway; `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Socket address the gateway accepts HTTP/1.1 and h2c on.
    pub listen: SocketAddr,
    /// Origin (and optional path prefix) that rewritten links point at: what apps reach
    /// the gateway by, which is not always `listen` (a load balancer, a Service name).
    pub public_url: String,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long to keep serving (with `/readyz` failing) before closing
    /// the listener, so load balancers stop sending traffic first.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Most connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A client must send its request head within this, from the head's first byte (or
    /// from connecting); slow-header clients are cut. Waiting between requests on a
    /// keep-alive connection is ruled by `idle_timeout` instead.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no bytes either way for this long is closed, gracefully.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A response whose client reads nothing for this long is ended, and its upstream
    /// call with it (nginx's `send_timeout`).
    #[serde(with = "duration")]
    pub send_timeout: Duration,
    /// Largest request head (request line and headers).
    #[serde(with = "size")]
    pub max_header_bytes: u64,
    /// Largest request body forwarded (uploads); over it, 413 before any upstream call.
    #[serde(with = "size")]
    pub max_body: u64,
    /// Request bodies up to this size are read whole before an upstream slot is taken
    /// (nginx's `proxy_request_buffering`); larger ones stream after their first part.
    #[serde(with = "size")]
    pub upload_buffer: u64,
    /// Longest a long-poll (`?wait=`) is held: below the 60 s idle cut of common load
    /// balancers, since a held JSON answer cannot send keep-alive bytes.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    /// TLS termination; absent means plain HTTP (and h2c).
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".to_string(),
            shutdown_timeout: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body: 100 * 1024 * 1024,
            upload_buffer: 1024 * 1024,
            max_wait: Duration::from_secs(55),
            tls: None,
        }
    }
}

/// `[server.tls]`: certificate and key, PEM, re-read on reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[admin]`: a separate listener for operators, never the public port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and the purge routes listen; `"off"` (as
    /// Caddy's `admin off`) turns the admin listener off (`None`). Absent from the file it
    /// is `127.0.0.1:9090`, like every other default.
    #[serde(with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
    /// Environment variable holding the bearer token that purging requires; while it is
    /// unset, purging is refused.
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token_env: "EXAGATE_ADMIN_TOKEN".to_string(),
        }
    }
}

/// `admin.listen`: an address, or `"off"`. Written back as `"off"` too, so a config
/// printed and read again keeps the listener off (an absent key would mean the default).
mod listen_or_off {
    use std::net::SocketAddr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is neither an address (ip:port, such as \"127.0.0.1:9090\") nor \"off\""
            ))
        })
    }
}

/// One `[[clients]]` entry: an app allowed to call the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Shown in logs and metrics.
    pub name: String,
    /// SHA-256 of its token, hex (`exagate hash-token` prints it); the token itself is
    /// never in the file.
    pub token_sha256: String,
    /// The bases it may use; absent means any base.
    pub bases: Option<Vec<uuid::Uuid>>,
    /// Whether it may call without a base (the workspace scope). Absent: allowed when
    /// `bases` is absent too, refused when `bases` restricts it.
    pub workspace: Option<bool>,
    /// Its own share of the upstream quota.
    pub rate_limit: Option<Rate>,
}

/// A rate such as `"5000/h"`, `"10/s"`, `"600/m"`, `"100/d"`, or `"50/30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed...
    pub count: u32,
    /// ...per this period.
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let bad = || format!("`{text}` is not a rate; write e.g. \"5000/h\", \"10/s\", \"50/30s\"");
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if count == 0 || per.is_zero() {
            return Err(format!(
                "`{text}`: the count and the period must be above zero"
            ));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => "s".to_string(),
            60 if self.per.subsec_nanos() == 0 => "m".to_string(),
            3600 if self.per.subsec_nanos() == 0 => "h".to_string(),
            86_400 if self.per.subsec_nanos() == 0 => "d".to_string(),
            _ => format_duration(self.per),
        };
        write!(f, "{}/{per}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Origin of the Extract API, e.g. `https://api.exabase.io`.
    pub url: String,
    /// Environment variable holding the API key (used when `api_key_file` is unset).
    pub api_key_env: String,
    /// File holding the API key (a mounted secret); takes precedence over the variable.
    pub api_key_file: Option<PathBuf>,
    /// Extra CA certificate(s), PEM, trusted for the upstream besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// Time allowed to open a TCP (and TLS) connection upstream.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline for an upstream answer: headers for streamed routes, the whole body for
    /// cached ones. No waiter waits longer than this.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Idle pooled connections are closed after this; keep it below the upstream's own
    /// keep-alive so we never reuse a connection the far end is closing.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Largest upstream body the gateway buffers (jobs, chunks); larger answers are a 502.
    #[serde(with = "size")]
    pub max_body: u64,
    /// Token bucket in front of every upstream call (the account's quota); unset is no
    /// limit.
    pub rate_limit: Option<Rate>,
    /// Bucket size: how many calls may go at once after a quiet spell. Default: a tenth of
    /// the rate's count (at least 1).
    pub rate_limit_burst: Option<u32>,
    /// With no `[[clients]]`: each client address's own share of upstream calls (an
    /// IPv6 address counts by its /64), so that one address scanning made-up ids cannot
    /// spend the whole account's quota. Unset: no per-address limit.
    pub per_address_rate_limit: Option<Rate>,
    /// Longest the gateway stops calling the upstream after a 429.
    #[serde(with = "duration")]
    pub max_cooldown: Duration,
    /// Most upstream calls in flight for cached lookups; bounds the memory fetches hold.
    pub max_concurrent: usize,
    /// Most forwarded calls (downloads, uploads, creates, lists, settings, job actions)
    /// in flight, each held until its response body is done: a bound of their own, so
    /// that slow transfers never take the lookups' slots.
    pub max_streams: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "https://api.exabase.io".to_string(),
            api_key_env: "EXABASE_API_KEY".to_string(),
            api_key_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(50),
            max_body: 64 * 1024 * 1024,
            rate_limit: None,
            rate_limit_burst: None,
            per_address_rate_limit: None,
            max_cooldown: Duration::from_secs(60),
            max_concurrent: 64,
            max_streams: 64,
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Upper bound of the cache, in bytes (entries are weighed by their real size).
    #[serde(with = "size")]
    pub max_size: u64,
    /// Longest a `completed` job is kept (further capped by `retention`).
    #[serde(with = "duration")]
    pub completed_ttl: Duration,
    /// How long after `createdAt` the upstream deletes a job's files (it turns `cleaned`).
    #[serde(with = "duration")]
    pub retention: Duration,
    /// How long a `cleaned` job is kept; it never changes again.
    #[serde(with = "duration")]
    pub cleaned_ttl: Duration,
    /// How long a `failed` job is kept; a reprocess can revive it.
    #[serde(with = "duration")]
    pub failed_ttl: Duration,
    /// How long a `pending`/`processing`/unknown job is kept; 0 turns it off.
    #[serde(with = "duration")]
    pub in_progress_ttl: Duration,
    /// How long a 404 is kept: a job may appear moments after creation.
    #[serde(with = "duration")]
    pub not_found_ttl: Duration,
    /// A job's entry expires this long before the earliest expiry of a signed link in
    /// it (read from the URLs), so an app that gets the job still has time to use them.
    #[serde(with = "duration")]
    pub link_margin: Duration,
    /// Hold stored answers by their gzip form where that saves memory (most job
    /// bodies: two to three times), sent as it is to clients that accept gzip. Off, every
    /// entry holds its identity body only.
    pub compress: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: 256 * 1024 * 1024,
            completed_ttl: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(24 * 3600),
            cleaned_ttl: Duration::from_secs(7 * 24 * 3600),
            failed_ttl: Duration::from_secs(30),
            in_progress_ttl: Duration::from_secs(1),
            not_found_ttl: Duration::from_secs(2),
            link_margin: Duration::from_secs(60),
            compress: true,
        }
    }
}

impl CacheConfig {
    /// The longest any answer is kept: what an entry read from elsewhere (the shared
    /// tier) may be kept here at most, whatever it says.
    pub fn longest_ttl(&self) -> Duration {
        [
            self.completed_ttl.min(self.retention),
            self.cleaned_ttl,
            self.failed_ttl,
            self.in_progress_ttl,
            self.not_found_ttl,
        ]
        .into_iter()
        .max()
        .unwrap_or(Duration::ZERO)
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or directives like `exagate=debug,hyper=info`.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable single lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The file as written: every section optional, every key defaulted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    upstream: UpstreamConfig,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    clients: Vec<ClientConfig>,
    #[serde(default)]
    shared: Option<SharedConfig>,
    #[serde(default)]
    state: StateConfig,
    #[serde(default)]
    webhooks: Option<WebhooksConfig>,
}

impl From<RawConfig> for Config {
    fn from(raw: RawConfig) -> Config {
        Config {
            server: raw.server,
            upstream: raw.upstream,
            cache: raw.cache,
            log: raw.log,
            admin: raw.admin,
            clients: raw.clients,
            shared: raw.shared,
            state: raw.state,
            webhooks: raw.webhooks,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        let config = Config::from(raw);
        config.validate()?;
        Ok(config)
    }

    /// The defaults, as if from an empty file.
    pub fn defaults() -> Config {
        Config::from(RawConfig::default())
    }

    /// No `[[clients]]` and a listener other machines can reach: anyone who gets to the
    /// port can spend the team's quota (warned at startup, said by `check`).
    pub fn open_beyond_loopback(&self) -> bool {
        self.clients.is_empty() && !self.server.listen.ip().is_loopback()
    }

    /// Open beyond loopback with nothing to stop one address spending the whole quota.
    pub fn open_without_address_limit(&self) -> bool {
        self.open_beyond_loopback() && self.upstream.per_address_rate_limit.is_none()
    }

    /// Checks the relations a type cannot express. Public so code that builds a config
    /// in memory (tests, the demo) gets the same checks as a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        http_origin(&self.server.public_url).map_err(|m| invalid("server.public_url", m))?;
        http_origin(&self.upstream.url).map_err(|m| invalid("upstream.url", m))?;
        if self.upstream.api_key_env.is_empty() && self.upstream.api_key_file.is_none() {
            return Err(invalid(
                "upstream.api_key_env",
                "empty, and no upstream.api_key_file either: the key must come from somewhere",
            ));
        }
        let positive = [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.timeout", self.upstream.timeout),
            (
                "upstream.pool_idle_timeout",
                self.upstream.pool_idle_timeout,
            ),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.upstream.max_body == 0 {
            return Err(invalid("upstream.max_body", "must be greater than 0"));
        }
        if self.cache.max_size < 64 * 1024 {
            return Err(invalid(
                "cache.max_size",
                "must be at least 64KiB (one job can weigh several KiB)",
            ));
        }
        if self.cache.retention.is_zero() {
            return Err(invalid("cache.retention", "must be greater than 0"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        let s = &self.server;
        let positive = [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("server.send_timeout", s.send_timeout),
            ("server.shutdown_timeout", s.shutdown_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be greater than 0"));
        }
        if s.max_header_bytes < 1024 {
            return Err(invalid("server.max_header_bytes", "must be at least 1KiB"));
        }
        if self.upstream.max_concurrent == 0 {
            return Err(invalid("upstream.max_concurrent", "must be greater than 0"));
        }
        if self.upstream.max_streams == 0 {
            return Err(invalid("upstream.max_streams", "must be greater than 0"));
        }
        if self.upstream.rate_limit_burst == Some(0) {
            return Err(invalid(
                "upstream.rate_limit_burst",
                "must be greater than 0",
            ));
        }
        if self.upstream.rate_limit_burst.is_some() && self.upstream.rate_limit.is_none() {
            return Err(invalid(
                "upstream.rate_limit_burst",
                "set without upstream.rate_limit",
            ));
        }
        if let Some(admin) = self.admin.listen {
            if admin == s.listen && admin.port() != 0 {
                return Err(invalid(
                    "admin.listen",
                    "must differ from server.listen: the admin routes are never on the public port",
                ));
            }
        }
        if let Some(shared) = &self.shared {
            shared.validate().map_err(|(key, m)| invalid(key, m))?;
        }
        self.state.validate().map_err(|(key, m)| invalid(key, m))?;
        if let Some(webhooks) = &self.webhooks {
            webhooks.validate().map_err(|(key, m)| invalid(key, m))?;
        }
        if s.max_wait > Duration::from_secs(600) {
            return Err(invalid(
                "server.max_wait",
                "must be at most 10m (a held request holds a connection and a task)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for client in &self.clients {
            if client.name.trim().is_empty() {
                return Err(invalid("clients.name", "must not be empty"));
            }
            if !names.insert(client.name.as_str()) {
                return Err(invalid(
                    "clients.name",
                    format!("`{}` appears twice", client.name),
                ));
            }
            let hash = &client.token_sha256;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "clients.token_sha256",
                    format!(
                        "client `{}`: must be 64 hex digits (exagate hash-token prints it)",
                        client.name
                    ),
                ));
            }
            if !hashes.insert(hash.to_ascii_lowercase()) {
                return Err(invalid(
                    "clients.token_sha256",
                    format!(
                        "client `{}` shares its token with another client",
                        client.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Parsed pieces of an `http(s)://host[:port][/prefix]` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and optional port.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash; empty for none.
    pub prefix: String,
}

/// Parses an absolute http(s) URL without query or fragment into its parts.
pub fn http_origin(url: &str) -> Result<Origin, String> {
    // First, and without quoting the URL: what is before an `@` is a password, and such
    // an origin would be printed (`check`), logged and written into every job's links.
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_part = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    if authority_part.contains('@') {
        return Err(
            "holds user info (a name or password before `@`), which would be printed, logged and put in links: remove it"
                .into(),
        );
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no scheme: write http:// or https://"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("`{url}`: only http and https are supported"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    Ok(Origin {
        scheme,
        authority,
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

impl fmt::Display for Config {
    /// The effective config as TOML, as `exagate check` prints it. It holds no secret:
    /// the key itself is never part of [`Config`], only where to read it from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match toml::to_string_pretty(self) {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "# (could not render config: {e})"),
        }
    }
}

/// The config in plain words, for `exagate check`: what an operator would otherwise have
/// to work out from the TTL table.
pub fn describe(config: &Config) -> Vec<String> {
    let d = format_duration;
    let c = &config.cache;
    let mut lines = vec![
        format!(
            "listens on {} (HTTP/1.1 and h2c); rewritten links point at {}",
            config.server.listen, config.server.public_url
        ),
        format!(
            "clients get {} to send a request head; a connection with no traffic for {} is closed; a response the client reads nothing of for {} is ended",
            d(config.server.header_read_timeout),
            d(config.server.idle_timeout),
            d(config.server.send_timeout)
        ),
        format!(
            "forwards to {} with a {} deadline ({} to connect)",
            config.upstream.url,
            d(config.upstream.timeout),
            d(config.upstream.connect_timeout)
        ),
        format!(
            "cache holds at most {}{}",
            format_size(c.max_size),
            if c.compress {
                ", bodies gzip-compressed"
            } else {
                ", bodies uncompressed"
            }
        ),
        format!(
            "completed jobs are kept up to {} after creation, and at most {}",
            d(c.retention),
            d(c.completed_ttl)
        ),
        format!("cleaned jobs are kept {}", d(c.cleaned_ttl)),
        format!("failed jobs are kept {}", d(c.failed_ttl)),
    ];
    let in_progress_ttl = config
        .webhooks
        .as_ref()
        .map_or(c.in_progress_ttl, |w| w.in_progress_ttl);
    if in_progress_ttl.is_zero() {
        lines.push(
            "pending and processing jobs are not kept (polls still share in-flight calls)".into(),
        );
    } else {
        lines.push(format!(
            "pending and processing jobs are kept {}: polls within that share one upstream call",
            d(in_progress_ttl)
        ));
    }
    lines.push(format!(
        "long-polls (?wait=) are held at most {}",
        d(config.server.max_wait)
    ));
    lines.push(format!(
        "a job's entry ends {} before the earliest expiry a signed link in it states",
        d(c.link_margin)
    ));
    match &config.webhooks {
        None => lines.push(
            "webhooks off: the account's webhook is not the gateway's ([webhooks] turns it on)"
                .into(),
        ),
        Some(w) => {
            let from = match w.secret_source() {
                SecretSource::Env(name) => format!("${name}"),
                SecretSource::File(path) => path.display().to_string(),
            };
            lines.push(format!(
                "receives the API's webhooks at {}/webhooks/exabase/[secret from {from}] (exagate webhooks register points the account there); PUT /v2/extract-settings is refused",
                w.public_url.trim_end_matches('/')
            ));
            let names: Vec<&str> = w.subscribers.iter().map(|s| s.name.as_str()).collect();
            lines.push(if names.is_empty() {
                "relays events to no subscriber".into()
            } else {
                format!(
                    "relays job events to {} subscriber(s), signed, retried until the job's data is gone: {}",
                    names.len(),
                    names.join(", ")
                )
            });
        }
    }
    if c.not_found_ttl.is_zero() {
        lines.push("404s are not kept".into());
    } else {
        lines.push(format!("404s are kept {}", d(c.not_found_ttl)));
    }
    let u = &config.upstream;
    lines.push(match u.rate_limit {
        Some(rate) => format!(
            "upstream calls are limited to {rate} (bursts of {}); beyond it, 429 quota_exhausted",
            u.rate_limit_burst.unwrap_or((rate.count / 10).max(1))
        ),
        None => {
            "upstream calls are not rate-limited (set upstream.rate_limit to your plan's quota)"
                .into()
        }
    });
    lines.push(format!(
        "at most {} upstream calls in flight for lookups and {} for forwarded calls (each until its body is done); after an upstream 429, calls pause for its Retry-After (at most {})",
        u.max_concurrent,
        u.max_streams,
        d(u.max_cooldown)
    ));
    lines.push(if config.open_without_address_limit() {
        "OPEN: no [[clients]] and no upstream.per_address_rate_limit: anyone who reaches the port may spend the team's whole quota".into()
    } else if config.open_beyond_loopback() {
        "OPEN: no [[clients]]; each address may spend its upstream.per_address_rate_limit".into()
    } else if config.clients.is_empty() {
        "open: no [[clients]], anyone on this machine may call".into()
    } else {
        let names: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
        format!(
            "{} client(s) may call, each with its token: {}",
            names.len(),
            names.join(", ")
        )
    });
    lines.push(match &config.server.tls {
        Some(tls) => format!("serves HTTPS with {}", tls.cert_file.display()),
        None => "serves plain HTTP (no [server.tls])".into(),
    });
    lines.push(match config.admin.listen {
        Some(addr) => format!(
            "admin routes (/metrics, /healthz, /readyz, purge) on {addr}; purging needs ${}",
            config.admin.token_env
        ),
        None => {
            "admin listener off (admin.listen = \"off\"): no /metrics, /healthz, /readyz or purge"
                .into()
        }
    });
    lines.push(match &config.shared {
        None => "no [shared]: this process keeps its own cache, quota and 429 gate".into(),
        Some(s) => {
            let from = match (&s.redis_url, &s.redis_url_env) {
                (Some(url), _) => redact_url(url),
                (None, Some(var)) => format!("${var}"),
                (None, None) => "nowhere".into(),
            };
            format!(
                "[shared] on Redis at {from} (password not shown), namespace `{}`: cache, quota and 429 gate shared with the other replicas; each Redis command waits at most {}; without Redis each replica spends 1/{} of the quota",
                s.namespace,
                d(s.timeout),
                s.max_replicas
            )
        }
    });
    lines.push(match &config.state.dir {
        None => {
            "no state.dir: a restart starts with an empty cache (unless [shared] has it)".into()
        }
        Some(dir) => format!(
            "the cache is kept in {} (written on drain and every {}), read back at start",
            dir.display(),
            d(config.state.snapshot_interval)
        ),
    });
    lines.push(format!(
        "on SIGTERM: unready at once, serving {} more, then {} for in-flight requests",
        d(config.server.drain_delay),
        d(config.server.shutdown_timeout)
    ));
    lines
}

/// A duration the way an operator writes it: the largest whole unit (`"24h"`, `"7d"`,
/// `"1500ms"`), so `exagate check` prints back what the file says.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.is_zero() {
        return if d.subsec_nanos() % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            humantime::format_duration(d).to_string()
        };
    }
    let secs = d.as_secs();
    // Days only from a week up: "24h" reads better than "1d" next to retention.
    if secs % 86_400 == 0 && secs >= 7 * 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A size the way an operator writes it: `"256MiB"` when exact, else bytes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// Serde adapter for durations written like `"1s"`, `"24h"`, `"7d"`.
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"24h\", \"7d\""
            ))
        })
    }
}

/// Serde adapter for sizes written like `"256MiB"`, `"64 KB"`.
mod size {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write e.g. \"64KiB\", \"256MiB\", \"1GiB\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").expect("defaults are valid");
        assert_eq!(c.cache.max_size, 256 * 1024 * 1024);
        assert_eq!(c.cache.in_progress_ttl, Duration::from_secs(1));
        assert_eq!(c.upstream.api_key_env, "EXABASE_API_KEY");
    }

    #[test]
    fn durations_and_sizes_parse() {
        let c = Config::parse(
            "[cache]\nmax_size = \"1GiB\"\ncleaned_ttl = \"7d\"\nin_progress_ttl = \"0s\"\n",
        )
        .expect("valid");
        assert_eq!(c.cache.max_size, 1 << 30);
        assert_eq!(c.cache.cleaned_ttl, Duration::from_secs(7 * 86400));
        assert!(c.cache.in_progress_ttl.is_zero());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[cache]\nmax_sise = \"1GiB\"\n").expect_err("typo");
        assert!(err.to_string().contains("max_sise"), "{err}");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let err = Config::parse("[upstream]\ntimeout = \"soon\"\n").expect_err("bad");
        let text = err.to_string();
        assert!(text.contains("timeout") && text.contains("soon"), "{text}");
    }

    #[test]
    fn zero_timeout_is_refused() {
        let err = Config::parse("[upstream]\ntimeout = \"0s\"\n").expect_err("zero");
        assert!(err.to_string().contains("upstream.timeout"), "{err}");
    }

    #[test]
    fn bad_public_url_is_refused() {
        let err = Config::parse("[server]\npublic_url = \"ftp://x\"\n").expect_err("scheme");
        assert!(err.to_string().contains("server.public_url"), "{err}");
    }

    #[test]
    fn durations_and_sizes_print_as_written() {
        assert_eq!(format_duration(Duration::from_secs(86400)), "24h");
        assert_eq!(format_duration(Duration::from_secs(7 * 86400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_size(1000), "1000B");
        let text = Config::defaults().to_string();
        let again = Config::parse(&text).expect("printed config parses back");
        assert_eq!(again.to_string(), text);
    }

    #[test]
    fn origin_keeps_prefix() {
        let o = http_origin("https://gw.example.com/exa/").expect("valid");
        assert_eq!(o.prefix, "/exa");
        assert_eq!(o.authority.as_str(), "gw.example.com");
    }

    #[test]
    fn check_says_when_an_open_gateway_has_no_address_limit() {
        let mut config = Config::defaults();
        config.server.listen = "0.0.0.0:8080".parse().expect("addr");
        let said = describe(&config).join("\n");
        assert!(
            said.contains("no upstream.per_address_rate_limit"),
            "{said}"
        );
        config.upstream.per_address_rate_limit = Some(Rate {
            count: 100,
            per: Duration::from_secs(3600),
        });
        let said = describe(&config).join("\n");
        assert!(
            !said.contains("no upstream.per_address_rate_limit"),
            "{said}"
        );
        assert!(said.contains("each address may spend"), "{said}");
    }
}
