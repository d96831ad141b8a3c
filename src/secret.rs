//! The upstream API key, kept where no log line, error body or debug dump can print it.
//!
//! Keys leak through `Debug` output and error messages far more often than through the
//! request itself, so the key lives in one type whose `Debug`/`Display` are redacted and
//! whose only way out is a header value marked sensitive (hyper and `http` never print
//! sensitive values in their own debug output).

use std::fmt;
use std::path::PathBuf;

use http::HeaderValue;

use crate::config::UpstreamConfig;

/// Why the API key could not be loaded. Messages name the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The environment variable is unset or empty.
    #[error("the API key is missing: environment variable {0} is not set (set it, or set upstream.api_key_file)")]
    MissingEnv(String),
    /// The key file could not be read.
    #[error("the API key file {path} cannot be read: {source}")]
    File {
        /// The configured file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file or variable holds nothing usable.
    #[error("the API key from {0} is empty or holds characters not allowed in an HTTP header")]
    Unusable(String),
}

/// Where a key came from, for `exagate check` and startup logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable, by name.
    Env(String),
    /// A file, by path.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "environment variable {name}"),
            KeySource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// The team's Exabase API key.
#[derive(Clone)]
pub struct ApiKey {
    /// The header value sent upstream, built once and marked sensitive.
    header: HeaderValue,
    /// Where it was read from (safe to show).
    source: KeySource,
}

impl ApiKey {
    /// Loads the key as the config says: the file when `api_key_file` is set, else the
    /// variable named by `api_key_env`.
    pub fn load(config: &UpstreamConfig) -> Result<ApiKey, KeyError> {
        match &config.api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
                    path: path.clone(),
                    source,
                })?;
                ApiKey::from_secret(&text, KeySource::File(path.clone()))
            }
            None => {
                let name = &config.api_key_env;
                let value = std::env::var(name).unwrap_or_default();
                if value.trim().is_empty() {
                    return Err(KeyError::MissingEnv(name.clone()));
                }
                ApiKey::from_secret(&value, KeySource::Env(name.clone()))
            }
        }
    }

    /// Builds a key from its text; surrounding whitespace (a file's final newline) is cut.
    pub fn from_secret(text: &str, source: KeySource) -> Result<ApiKey, KeyError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(KeyError::Unusable(source.to_string()));
        }
        let mut header =
            HeaderValue::from_str(trimmed).map_err(|_| KeyError::Unusable(source.to_string()))?;
        header.set_sensitive(true);
        Ok(ApiKey { header, source })
    }

    /// The value for the `X-Api-Key` header (sensitive: never printed by `http`).
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// A fingerprint of this key in `context` (the shared tier passes the upstream URL):
    /// SHA-256 over a fixed label, the context and the key, of which the first 16 bytes
    /// are kept. It tells keys apart and reveals nothing about any of them.
    pub fn fingerprint(&self, context: &str) -> [u8; 16] {
        let mut input = Vec::with_capacity(64 + context.len() + self.header.len());
        input.extend_from_slice(b"exagate shared-tier fingerprint v1\0");
        input.extend_from_slice(context.as_bytes());
        input.push(0);
        input.extend_from_slice(self.header.as_bytes());
        let digest = crate::auth::sha256(&input);
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// Where the key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(<redacted>, from {})", self.source)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted key from {}>", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key =
            ApiKey::from_secret("sk-very-secret\n", KeySource::Env("K".into())).expect("valid key");
        assert!(!format!("{key:?}").contains("sk-very-secret"));
        assert!(!format!("{key}").contains("sk-very-secret"));
        assert!(!format!("{:?}", key.header_value()).contains("sk-very-secret"));
        assert_eq!(key.header_value().as_bytes(), b"sk-very-secret");
    }

    #[test]
    fn blank_key_is_refused_without_echoing_it() {
        let err = ApiKey::from_secret("  \n", KeySource::Env("K".into())).expect_err("blank");
        assert!(err.to_string().contains("environment variable K"));
    }

    #[test]
    fn header_breaking_key_is_refused_without_echoing_it() {
        let err = ApiKey::from_secret("abc\ndef", KeySource::File("/k".into())).expect_err("nl");
        assert!(!err.to_string().contains("abc"));
    }
}
