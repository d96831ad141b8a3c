//! Which headers cross the proxy, in each direction.
//!
//! Requests: the client's own credentials (`X-Api-Key`, `Authorization`) never go
//! upstream: the gateway's key replaces them. Hop-by-hop headers stop at each hop
//! (RFC 9110 §7.6.1). Responses: a stored answer keeps only what stays true for every
//! later reader; an answer passed through keeps all its end-to-end headers.

use http::header::{self, HeaderMap, HeaderName};

/// Headers meaningful only on one connection.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers the gateway sets itself or must never forward.
const NOT_FORWARDED: [HeaderName; 5] = [
    header::HOST,
    HeaderName::from_static("x-api-key"),
    header::AUTHORIZATION,
    header::UPGRADE,
    HeaderName::from_static(super::route::BASE_HEADER),
];

fn hop_by_hop(name: &HeaderName, connection_listed: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || connection_listed.contains(name)
}

/// Names listed in `Connection` are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The client's headers to send upstream on a pass-through request.
pub fn forward_request(client: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 3);
    for (name, value) in client {
        if !hop_by_hop(name, &listed) && !NOT_FORWARDED.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's headers to send to the client on a streamed response.
pub fn forward_response(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        if !hop_by_hop(name, &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Headers kept with a buffered answer. A stored answer is replayed to other clients for
/// a long time, so it keeps only its content type (the body may be rewritten, which makes
/// the upstream's `ETag` and length wrong, and a `Date` or request id would be stale); an
/// answer that is not stored (429, 5xx, 401) keeps everything end-to-end, so `Retry-After`
/// and any rate-limit headers reach the app.
pub fn buffered_response(upstream: &HeaderMap, stored: bool) -> HeaderMap {
    if stored {
        let mut out = HeaderMap::with_capacity(2);
        if let Some(ct) = upstream.get(header::CONTENT_TYPE) {
            out.insert(header::CONTENT_TYPE, ct.clone());
        }
        return out;
    }
    let mut out = forward_response(upstream);
    out.remove(header::CONTENT_LENGTH);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn client_credentials_and_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("client-key"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::HOST, HeaderValue::from_static("gw"));
        let out = forward_request(&h);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn stored_answers_keep_only_content_type() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(buffered_response(&h, true).len(), 1);
        let passed = buffered_response(&h, false);
        assert!(passed.contains_key(header::RETRY_AFTER));
        assert!(!passed.contains_key(header::CONTENT_LENGTH));
    }
}
