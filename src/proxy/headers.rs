//! Which headers cross the proxy, in each direction.
//!
//! Requests: only an allow-list of headers the API uses goes upstream ([`FORWARDED`]).
//! The client's own credentials (`X-Api-Key`, `Authorization`) never do: the gateway's
//! key replaces them. Nor do the client's framing headers (`Content-Length`,
//! `Transfer-Encoding`): the request sent upstream declares exactly the body it carries,
//! as hyper frames it, so an upstream can never be told of a body it does not get (and
//! read the next pooled request as its rest). Nor does anything a server or a proxy
//! behind it could take for an instruction (`X-HTTP-Method-Override`, `X-Original-URL`,
//! `Forwarded`, names with underscores, which some servers fold into dashes). Hop-by-hop
//! headers stop at each hop (RFC 9110 §7.6.1). Responses: a stored answer keeps only what stays true for every
//! later reader; an answer passed through keeps all its end-to-end headers.

use std::cell::RefCell;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// The request headers a pass-through call forwards, all others being dropped: what the
/// Extract API reads (`Content-Type` of an upload or JSON body, `Accept`), what a
/// download may use (`Range`, `If-Range`, `Accept-Encoding`), and request tracing. The
/// base header is set by the gateway itself after validation.
pub const FORWARDED: [HeaderName; 10] = [
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::CONTENT_TYPE,
    header::IF_RANGE,
    header::RANGE,
    header::USER_AGENT,
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-request-id"),
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

/// The client's headers to send upstream on a pass-through request: those on the
/// allow-list, unless `Connection` names them.
pub fn forward_request(client: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(FORWARDED.len() + 3);
    for name in &FORWARDED {
        if listed.contains(name) {
            continue;
        }
        for value in client.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's headers to send to the client on an answer the gateway does not store,
/// marked `no-store` ([`NO_STORE`]).
pub fn forward_response(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len() + 2);
    for (name, value) in upstream {
        if !hop_by_hop(name, &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::CACHE_CONTROL, NO_STORE);
    out
}

/// `Cache-Control` of every answer the gateway does not store itself: pass-through
/// answers, errors, its own refusals. The upstream's own `Cache-Control` is replaced:
/// these answers were made with the team's key, for one scope and one client, so no
/// cache between the apps and the gateway may keep them and hand them to another.
pub const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// `Vary` of a stored answer: the scope headers pick the entry, so an app's own HTTP
/// cache that calls one gateway for several bases keeps them apart too.
pub const VARY_SCOPE: HeaderValue =
    HeaderValue::from_static("x-exabase-base-id, x-exabase-workspace-id");

/// [`VARY_SCOPE`] for an answer that has a gzip form: which form is sent depends on
/// `Accept-Encoding` too.
pub const VARY_SCOPE_ENCODING: HeaderValue =
    HeaderValue::from_static("x-exabase-base-id, x-exabase-workspace-id, accept-encoding");

/// Whether a request's `Accept-Encoding` takes gzip (RFC 9110 12.5.3): `gzip` (or
/// `x-gzip`) with a q-value above 0, or else `*` with one. A request without the header
/// gets the identity body: many clients that send none do not decode gzip. Named more
/// than once, any refusal (`q=0`) wins, in whatever order the entries come.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut star = None;
    let mut named: Option<bool> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    // A q-value that is no number takes nothing.
                    name.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
                })
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                named = Some(named.unwrap_or(true) && q > 0.0);
            } else if coding == "*" {
                star = Some(star.unwrap_or(true) && q > 0.0);
            }
        }
    }
    named.or(star).unwrap_or(false)
}

/// `Cache-Control` of a stored answer that stays true for `max_age` seconds (counted,
/// as `Age` is, from when the gateway fetched it). `private`: only the calling app's own
/// cache may keep it, never one shared between apps, which would mix bases and clients.
pub fn private_max_age(max_age: u64) -> HeaderValue {
    // Nearly every stored answer has one of a few lifetimes (the completed-job TTL, the
    // in-progress one), and a hit sends it again and again.
    thread_local! {
        static MADE: RefCell<Made> = const { RefCell::new(Made::new()) };
    }
    MADE.with(|made| {
        made.borrow_mut().get(max_age, |max_age| {
            let text = format!("private, max-age={max_age}");
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).unwrap_or(NO_STORE)
        })
    })
}

/// `Age: {secs}`. The hits on a hot job within one second send the same value, and so
/// do those on jobs fetched together.
pub fn age(secs: u64) -> HeaderValue {
    const SMALL: [&str; 60] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59",
    ];
    if let Some(text) = usize::try_from(secs).ok().and_then(|i| SMALL.get(i)) {
        return HeaderValue::from_static(text);
    }
    thread_local! {
        static MADE: RefCell<Made> = const { RefCell::new(Made::new()) };
    }
    MADE.with(|made| made.borrow_mut().get(secs, HeaderValue::from))
}

/// Header values a thread made last, by the number they were made from: a hit then
/// clones one (a reference count) rather than formatting and allocating it again.
struct Made {
    kept: [Option<(u64, HeaderValue)>; MADE_KEPT],
    /// Which to replace next.
    next: usize,
}

/// How many values each [`Made`] keeps.
const MADE_KEPT: usize = 4;

impl Made {
    const fn new() -> Made {
        Made {
            kept: [const { None }; MADE_KEPT],
            next: 0,
        }
    }

    /// The value for `n`, kept or made now by `make` (and kept in place of the oldest).
    fn get(&mut self, n: u64, make: impl FnOnce(u64) -> HeaderValue) -> HeaderValue {
        if let Some((_, value)) = self.kept.iter().flatten().find(|(kept, _)| *kept == n) {
            return value.clone();
        }
        let value = make(n);
        self.kept[self.next] = Some((n, value.clone()));
        self.next = (self.next + 1) % MADE_KEPT;
        value
    }
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

/// The `Content-Length` a request declares, if it declares one that is a number.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_kept_per_thread_are_the_ones_asked_for() {
        // More numbers than are kept, asked for in turn and again: each answer names its
        // own, whether made now or kept from before.
        for round in 0..3 {
            for n in (0..=MADE_KEPT as u64 + 2)
                .chain(58..=62)
                .chain(100..=100 + MADE_KEPT as u64 + 1)
                .chain([86_400, u64::MAX])
            {
                assert_eq!(
                    private_max_age(n).to_str().expect("ascii"),
                    format!("private, max-age={n}"),
                    "round {round}"
                );
                assert_eq!(
                    age(n).to_str().expect("ascii"),
                    n.to_string(),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        let takes = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            accepts_gzip(&h)
        };
        assert!(!takes(&[]), "no header: identity");
        assert!(takes(&["gzip"]));
        assert!(takes(&["GZip"]));
        assert!(takes(&["br, gzip;q=0.5, deflate"]));
        assert!(takes(&["x-gzip"]));
        assert!(takes(&["*"]));
        assert!(takes(&["br", "gzip"]), "header lines combine");
        assert!(!takes(&["br, deflate"]));
        assert!(!takes(&["identity"]));
        assert!(!takes(&["gzip;q=0"]));
        assert!(!takes(&["gzip; q=0.000"]));
        assert!(!takes(&["*, gzip;q=0"]), "an explicit refusal beats *");
        assert!(!takes(&["gzip;q=0, *"]));
        assert!(!takes(&["*;q=0"]));
        assert!(!takes(&["gzip;q=nonsense"]));
        assert!(takes(&["gzip;Q=1"]));
        // Named twice: the refusal wins whichever comes first, on one line or two.
        assert!(!takes(&["gzip;q=0, gzip"]));
        assert!(!takes(&["gzip, gzip;q=0"]));
        assert!(!takes(&["gzip", "gzip;q=0"]));
        assert!(!takes(&["x-gzip;q=0", "gzip"]));
    }

    #[test]
    fn only_the_allow_list_is_forwarded() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-api-key", "client-key"),
            ("x_api_key", "client-key"),
            ("authorization", "Bearer t"),
            ("connection", "close, x-request-id"),
            ("x-request-id", "listed in Connection"),
            ("content-type", "application/json"),
            ("content-length", "19"),
            ("transfer-encoding", "chunked"),
            ("host", "gw"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/v2/admin"),
            ("forwarded", "for=10.0.0.1"),
            ("x-exabase-base-id", "not validated here"),
            ("range", "bytes=0-99"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        let out = forward_request(&h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "range", "traceparent"]);
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
