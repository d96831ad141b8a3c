//! Who is calling: the `[[clients]]` table.
//!
//! With no clients configured the gateway is open. With any, every request must carry a
//! token, as `X-Api-Key` (so an app's unchanged Exabase SDK works: only its base URL and
//! key change) or as `Authorization: Bearer`. Only SHA-256 hashes are configured; the
//! presented token is hashed and compared to every entry in constant time, so neither
//! the file nor the timing of a refusal tells anything about a valid token.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, AUTHORIZATION};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::cache::Scope;
use crate::config::ClientConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::guard::{rate_limited, Token, TokenBucket};

/// Which scopes a `[[clients]]` or `[[webhooks.subscribers]]` entry may use: its `bases`
/// (absent: any) and `workspace` (absent: allowed when `bases` is absent too).
///
/// The legacy header (`X-Exabase-Workspace-Id`) needs both rights: the API may read it as
/// a base of that id, or ignore it and run the call in the parent workspace, and no one
/// here knows which.
#[derive(Debug, Clone)]
pub struct ScopeRule {
    bases: Option<HashSet<Uuid>>,
    workspace: bool,
}

impl ScopeRule {
    /// The rule of an entry's `bases` and `workspace` keys.
    pub fn new(bases: Option<&[Uuid]>, workspace: Option<bool>) -> ScopeRule {
        ScopeRule {
            workspace: workspace.unwrap_or(bases.is_none()),
            bases: bases.map(|b| b.iter().copied().collect()),
        }
    }

    /// Whether `scope` is allowed.
    pub fn allows(&self, scope: Scope) -> bool {
        let base = |id: &Uuid| self.bases.as_ref().is_none_or(|b| b.contains(id));
        match scope {
            Scope::Workspace => self.workspace,
            Scope::Base(id) => base(&id),
            Scope::Legacy(id) => self.workspace && base(&id),
        }
    }
}

/// One configured client.
pub struct Client {
    /// Its name, for logs and metrics (never its token).
    pub name: Arc<str>,
    /// SHA-256 of its token.
    hash: [u8; 32],
    /// The scopes it may use.
    rule: ScopeRule,
    /// Its own share of the upstream quota; shared with the entry it replaces on reload,
    /// so a reload does not hand out a fresh burst.
    bucket: Arc<TokenBucket>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `403` unless this client may use `scope`.
    ///
    /// The legacy header (`X-Exabase-Workspace-Id`) needs both rights: the API may read
    /// it as a base of that id, or ignore it and run the call in the parent workspace, and
    /// no one here knows which, so a client restricted to bases must not reach the
    /// workspace through it, nor a client without that base reach it.
    pub fn may_use(&self, scope: Scope) -> Result<(), GatewayError> {
        if self.rule.allows(scope) {
            Ok(())
        } else {
            Err(GatewayError::new(
                ErrorKind::Forbidden,
                match scope {
                    Scope::Workspace => {
                        "this client may not call without a base (X-Exabase-Base-Id)"
                    }
                    Scope::Base(_) => "this client may not use that base",
                    Scope::Legacy(_) => {
                        "this client may not use X-Exabase-Workspace-Id: it needs the workspace and that base"
                    }
                },
            ))
        }
    }

    /// Takes one token of this client's own share, for a request that needs the upstream
    /// (`None`: the client has no share of its own). The token goes back unless the
    /// request is sent.
    pub fn take_share(&self) -> Result<Option<Token>, GatewayError> {
        if !self.bucket.is_limited() {
            return Ok(None);
        }
        Token::take(&self.bucket).map(Some).map_err(|wait| {
            rate_limited(
                ErrorKind::QuotaExhausted,
                "this client's share of the upstream quota (clients.rate_limit) is used up",
                wait,
            )
        })
    }
}

/// All configured clients.
#[derive(Default)]
pub struct Clients {
    /// The entries, in file order.
    entries: Vec<Arc<Client>>,
}

impl Clients {
    /// Builds the table; `previous` lends its buckets to entries of the same name.
    pub fn new(configs: &[ClientConfig], previous: Option<&Clients>) -> Clients {
        let old: HashMap<&str, &Arc<TokenBucket>> = previous
            .map(|p| p.entries.iter().map(|c| (&*c.name, &c.bucket)).collect())
            .unwrap_or_default();
        let entries = configs
            .iter()
            .map(|c| {
                let mut hash = [0u8; 32];
                // Validated as 64 hex digits when the config was loaded.
                let _ = hex::decode_to_slice(&c.token_sha256, &mut hash);
                let bucket = match old.get(c.name.as_str()) {
                    Some(bucket) => {
                        bucket.reconfigure(c.rate_limit, None);
                        Arc::clone(bucket)
                    }
                    None => Arc::new(TokenBucket::new(c.rate_limit, None)),
                };
                Arc::new(Client {
                    name: Arc::from(c.name.as_str()),
                    hash,
                    rule: ScopeRule::new(c.bases.as_deref(), c.workspace),
                    bucket,
                })
            })
            .collect();
        Clients { entries }
    }

    /// No clients configured: anyone who reaches the port may call.
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// The calling client: `None` when the gateway is open, `401` without a known token.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Arc<Client>>, GatewayError> {
        if self.is_open() {
            return Ok(None);
        }
        let unauthorized = || {
            GatewayError::new(
                ErrorKind::Unauthorized,
                "a client token is required: send it as X-Api-Key or Authorization: Bearer",
            )
        };
        let token = presented_token(headers).ok_or_else(unauthorized)?;
        let digest = sha256(token.as_bytes());
        // Compare with every entry, without stopping early, in constant time.
        let mut found = None;
        for client in &self.entries {
            if bool::from(client.hash.ct_eq(&digest)) {
                found = Some(Arc::clone(client));
            }
        }
        found.map(Some).ok_or_else(unauthorized)
    }
}

/// Where a client may present its token (as a `HeaderName`: no parse per lookup).
const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// The token from `X-Api-Key`, else from `Authorization: Bearer`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get(X_API_KEY).and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of a token, as the hex `token_sha256` wants (`exagate hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(sha256(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn table() -> Clients {
        let base: Uuid = "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172"
            .parse()
            .expect("uuid");
        Clients::new(
            &[
                ClientConfig {
                    name: "billing".into(),
                    token_sha256: hash_token("billing-token"),
                    bases: Some(vec![base]),
                    workspace: None,
                    rate_limit: None,
                },
                ClientConfig {
                    name: "ops".into(),
                    token_sha256: hash_token("ops-token"),
                    bases: None,
                    workspace: None,
                    rate_limit: None,
                },
            ],
            None,
        )
    }

    #[test]
    fn known_hash_of_test() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn tokens_are_accepted_both_ways() {
        let t = table();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("billing-token"));
        assert_eq!(
            &*t.identify(&h).expect("ok").expect("client").name,
            "billing"
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer ops-token"));
        assert_eq!(&*t.identify(&h).expect("ok").expect("client").name, "ops");
    }

    #[test]
    fn missing_or_unknown_tokens_are_401() {
        let t = table();
        assert_eq!(
            t.identify(&HeaderMap::new()).expect_err("none").kind,
            ErrorKind::Unauthorized
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert_eq!(
            t.identify(&h).expect_err("bad").kind,
            ErrorKind::Unauthorized
        );
    }

    #[test]
    fn bases_and_workspace_are_enforced() {
        let t = table();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("billing-token"));
        let billing = t.identify(&h).expect("ok").expect("client");
        let a: Uuid = "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172"
            .parse()
            .expect("uuid");
        let b: Uuid = "9a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
            .parse()
            .expect("uuid");
        assert!(billing.may_use(Scope::Base(a)).is_ok());
        assert_eq!(
            billing.may_use(Scope::Base(b)).expect_err("b").kind,
            ErrorKind::Forbidden
        );
        assert_eq!(
            billing.may_use(Scope::Workspace).expect_err("ws").kind,
            ErrorKind::Forbidden
        );
        // The legacy header might land in the workspace: a client without it may not.
        assert_eq!(
            billing.may_use(Scope::Legacy(a)).expect_err("legacy").kind,
            ErrorKind::Forbidden
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("ops-token"));
        let ops = t.identify(&h).expect("ok").expect("client");
        assert!(ops.may_use(Scope::Workspace).is_ok() && ops.may_use(Scope::Base(b)).is_ok());
        assert!(ops.may_use(Scope::Legacy(b)).is_ok());
    }

    #[test]
    fn open_gateway_needs_no_token() {
        let t = Clients::new(&[], None);
        assert!(t.is_open());
        assert!(t.identify(&HeaderMap::new()).expect("open").is_none());
    }
}
