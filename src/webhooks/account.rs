//! `exagate webhooks register` and `exagate webhooks status`: the account's one webhook
//! URL (`/v2/extract-settings`), pointed at this gateway's receiver. Neither prints the
//! secret: the URL is shown with its last segment redacted.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{WebhooksLive, REDACTED_PATH};
use crate::config::Config;
use crate::secret::ApiKey;
use crate::BoxError;

/// Where the account's webhook points, as `status` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointing {
    /// At this gateway's receiver, secret and all.
    Here,
    /// Somewhere else (shown without path or query, which may hold someone's secret).
    Elsewhere(String),
    /// Nowhere: no webhook is set.
    Nowhere,
}

/// Points the account's webhook at this gateway; returns what it pointed at before.
pub async fn register(config: &Config, key: &ApiKey) -> Result<Pointing, BoxError> {
    let hooks = live(config)?;
    let before = status(config, key).await?;
    let body = serde_json::json!({ "webhookUrl": hooks.receiver_url() }).to_string();
    let (code, _) = settings(config, key, Method::PUT, Some(body)).await?;
    if !code.is_success() {
        return Err(format!("the upstream refused the new webhook URL: {code}").into());
    }
    match status(config, key).await? {
        Pointing::Here => Ok(before),
        _ => Err("the upstream took the new webhook URL but reads back another one".into()),
    }
}

/// Where the account's webhook points.
pub async fn status(config: &Config, key: &ApiKey) -> Result<Pointing, BoxError> {
    let hooks = live(config)?;
    let (code, body) = settings(config, key, Method::GET, None).await?;
    if code != StatusCode::OK {
        return Err(format!("GET /v2/extract-settings answered {code}").into());
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| "GET /v2/extract-settings answered something that is not JSON")?;
    Ok(match value.get("webhookUrl").and_then(|v| v.as_str()) {
        None | Some("") => Pointing::Nowhere,
        Some(url) if url == hooks.receiver_url() => Pointing::Here,
        Some(url) => Pointing::Elsewhere(origin_of(url)),
    })
}

/// The receiver's URL as printed: the secret replaced.
pub fn shown_receiver(config: &Config) -> Option<String> {
    let hooks = config.webhooks.as_ref()?;
    Some(format!(
        "{}{REDACTED_PATH}",
        hooks.public_url.trim_end_matches('/')
    ))
}

fn live(config: &Config) -> Result<WebhooksLive, BoxError> {
    let hooks = config
        .webhooks
        .as_ref()
        .ok_or("[webhooks] is not configured: there is no receiver to point the account at")?;
    Ok(WebhooksLive::new(hooks)?)
}

/// `scheme://host[:port]` of a URL, or `(not a URL)`.
fn origin_of(url: &str) -> String {
    match url.parse::<http::Uri>() {
        // Host and port only: user info, like the path, may hold someone's secret.
        Ok(uri) if uri.host().is_some() => format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or(""),
            uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        _ => "(not a URL)".into(),
    }
}

async fn settings(
    config: &Config,
    key: &ApiKey,
    method: Method,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let client = super::relay::https_client(crate::proxy::upstream::client_tls(
        config.upstream.ca_file.as_deref(),
    )?);
    let url = format!(
        "{}/v2/extract-settings",
        config.upstream.url.trim_end_matches('/')
    );
    let mut request = Request::builder().method(method).uri(url).header(
        header::USER_AGENT,
        concat!("exagate/", env!("CARGO_PKG_VERSION")),
    );
    request = request.header("x-api-key", key.header_value().clone());
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = tokio::time::timeout(config.upstream.timeout, client.request(request))
        .await
        .map_err(|_| "the upstream did not answer within upstream.timeout")?
        .map_err(|e| {
            format!(
                "cannot reach the upstream: {}",
                crate::proxy::upstream::error_chain(&e)
            )
        })?;
    let code = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| "the upstream's answer broke off")?
        .to_bytes();
    Ok((code, body))
}
