//! Routing: which of the gateway's few routes a request is, with its ids validated.
//!
//! The gateway is not an open door to the rest of the API: anything not listed here is a
//! 404 from the gateway itself and costs no upstream call.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use uuid::Uuid;

use crate::cache::Scope;

use crate::error::{ErrorKind, GatewayError};

/// The header selecting a base (sandboxed scope). A `HeaderName`, not a `&str`: every
/// request looks both scope headers up, and a lookup by `&str` parses and checks the
/// name each time.
pub const BASE_HEADER: HeaderName = HeaderName::from_static("x-exabase-base-id");

/// The API's earlier name for the scope header ([`Scope::Legacy`]).
pub const WORKSPACE_HEADER: HeaderName = HeaderName::from_static("x-exabase-workspace-id");

/// A recognised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET`/`HEAD /v2/extract/{id}`: the cached lookup.
    Job(Uuid),
    /// `GET`/`HEAD /v2/extract/{id}/chunks`: cached while the job is known completed.
    Chunks(Uuid),
    /// `GET`/`HEAD /v2/extract/{id}/download`: streamed, never cached.
    Download(Uuid),
    /// Any other method on `/v2/extract/{id}/...` (reprocess, webhook trigger): forwarded,
    /// and the job's cached entries dropped.
    JobAction(Uuid),
    /// `GET /v2/extract` (list) and `POST /v2/extract` (create).
    Collection,
    /// `GET /v2/extract/upload`: a one-time upload target.
    Upload,
    /// `GET`/`PUT /v2/extract-settings`.
    Settings,
}

impl Route {
    /// Label for logs and metrics: bounded, never the id.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Job(_) => "job",
            Route::Chunks(_) => "chunks",
            Route::Download(_) => "download",
            Route::JobAction(_) => "job_action",
            Route::Collection => "collection",
            Route::Upload => "upload",
            Route::Settings => "settings",
        }
    }
}

/// Longest request target (path and query) the gateway accepts.
pub const MAX_TARGET: usize = 2048;

const CONTROLS: &str = "the request target holds control characters or a backslash";

/// Refuses request targets no Extract API route needs and that only serve to confuse a
/// path-based rule somewhere: over-long, `//`, dot segments (plain or percent-encoded),
/// encoded slashes and backslashes, encoded or raw control characters.
pub fn check_target(uri: &http::Uri) -> Result<(), GatewayError> {
    let bad = |why: &'static str| GatewayError::new(ErrorKind::BadRequest, why);
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    if path.len() + query.len() > MAX_TARGET {
        return Err(bad("the request target is too long"));
    }
    // One pass over the path (this runs on every request, hits included): each byte is
    // looked at once, and a segment is judged when the `/` that ends it is reached.
    let bytes = path.as_bytes();
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                let segment = &bytes[segment_start..i];
                if i > 0 && segment.is_empty() {
                    return Err(bad("the path has an empty segment (//)"));
                }
                if segment == b"." || segment == b".." {
                    return Err(bad("the path has a dot segment"));
                }
                segment_start = i + 1;
            }
            b'\\' | 0..=0x1f | 0x7f => return Err(bad(CONTROLS)),
            b'%' => {
                // Percent-escapes of `.`, `/`, `\`, and control characters.
                let hi = bytes.get(i + 1).map(u8::to_ascii_lowercase);
                let lo = bytes.get(i + 2).map(u8::to_ascii_lowercase);
                let suspicious = matches!(
                    (hi, lo),
                    (Some(b'0' | b'1'), _)
                        | (Some(b'2'), Some(b'e' | b'f'))
                        | (Some(b'5'), Some(b'c'))
                        | (Some(b'7'), Some(b'f'))
                );
                if suspicious {
                    return Err(bad(
                        "the path holds an encoded dot, slash, backslash or control character",
                    ));
                }
            }
            _ => {}
        }
    }
    let last = &bytes[segment_start..];
    if last == b"." || last == b".." {
        return Err(bad("the path has a dot segment"));
    }
    if query.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(bad(CONTROLS));
    }
    Ok(())
}

/// Methods of the read routes.
const GET_HEAD: &str = "GET, HEAD";

/// The answer for a path the gateway does not serve (the webhook receiver answers a
/// wrong secret with it too, so a prober cannot tell the two apart).
pub fn not_found() -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        "exagate serves only the Extract API routes under /v2/extract",
    )
}

/// Classifies a request by method and path.
pub fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        "/v2/extract" => {
            return match *method {
                Method::GET | Method::POST => Ok(Route::Collection),
                _ => Err(GatewayError::method_not_allowed("GET, POST")),
            }
        }
        "/v2/extract/upload" => {
            return match *method {
                Method::GET => Ok(Route::Upload),
                _ => Err(GatewayError::method_not_allowed("GET")),
            }
        }
        "/v2/extract-settings" => {
            return match *method {
                Method::GET | Method::PUT => Ok(Route::Settings),
                _ => Err(GatewayError::method_not_allowed("GET, PUT")),
            }
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix(JOB_PREFIX) else {
        return Err(not_found());
    };
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let id = parse_job_id(id)?;
    match tail {
        None if read => Ok(Route::Job(id)),
        None => Err(GatewayError::method_not_allowed(GET_HEAD)),
        Some("chunks") if read => Ok(Route::Chunks(id)),
        Some("download") if read => Ok(Route::Download(id)),
        Some(tail) if !read && !tail.is_empty() => Ok(Route::JobAction(id)),
        Some(_) => Err(not_found()),
    }
}

/// The path and query to send upstream for a routed request: the client's, with a job
/// id in its canonical lower-case spelling (the upstream's id pattern is lower-case, and
/// the cached routes send it so too).
pub fn upstream_target(route: &Route, uri: &http::Uri) -> String {
    let path = uri.path();
    let id = match route {
        Route::Job(id) | Route::Chunks(id) | Route::Download(id) | Route::JobAction(id) => *id,
        Route::Collection | Route::Upload | Route::Settings => {
            return uri
                .path_and_query()
                .map_or(path, |pq| pq.as_str())
                .to_owned();
        }
    };
    // Routed, so the path is `/v2/extract/` and the 36 ASCII characters of the id.
    let rest = path.get(JOB_PREFIX.len() + 36..).unwrap_or("");
    let mut target = format!("{JOB_PREFIX}{id}{rest}");
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// A chunks query in canonical form: `start=S&end=E` (each only if given), as the cache
/// key and as sent upstream, so that spellings of one window (`end=20&start=1`,
/// `start=01&end=20`) share one entry and one upstream call. Only `start` and `end` are
/// taken, each once, as integers with `1 <= start <= end`: anything else is a `400`
/// with no upstream call (a scan of made-up parameters must not mint cache keys).
pub fn chunk_window(query: &str) -> Result<String, GatewayError> {
    let bad = |why: &'static str| GatewayError::new(ErrorKind::BadRequest, why);
    let (mut start, mut end) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "start" => &mut start,
            "end" => &mut end,
            _ => return Err(bad("a chunks query takes only start and end")),
        };
        if slot.is_some() {
            return Err(bad("start and end may each be given once"));
        }
        let number =
            (!value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad("start and end must be whole numbers"))?;
        *slot = Some(number);
    }
    if start == Some(0) || end == Some(0) {
        return Err(bad("chunks are numbered from 1"));
    }
    if let (Some(start), Some(end)) = (start, end) {
        if end < start {
            return Err(bad("end must not be before start"));
        }
    }
    Ok(match (start, end) {
        (None, None) => String::new(),
        (Some(s), None) => format!("start={s}"),
        (None, Some(e)) => format!("end={e}"),
        (Some(s), Some(e)) => format!("start={s}&end={e}"),
    })
}

/// The path before a job id.
const JOB_PREFIX: &str = "/v2/extract/";

/// Where each of the 16 bytes' pair of hex digits starts in a hyphenated UUID.
const HEX_PAIRS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The value of each ASCII hex digit, either case; `0x80` for every other byte.
const HEX: [u8; 256] = {
    let mut table = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Checks a job id against the documented pattern
/// `^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`,
/// case-insensitively. The parsed `Uuid` prints lower-case, which is what goes upstream.
pub fn parse_job_id(text: &str) -> Result<Uuid, GatewayError> {
    let invalid = || {
        GatewayError::new(
            ErrorKind::InvalidJobId,
            "the job id must be a UUID like 123e4567-e89b-12d3-a456-426614174000",
        )
    };
    let bytes = text.as_bytes();
    // Version 1-8, variant 8/9/a/b, as the documented pattern says.
    let versioned = bytes.len() == 36
        && (b'1'..=b'8').contains(&bytes[14])
        && matches!(bytes[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b');
    match decode_hyphenated(bytes) {
        Some(id) if versioned => Ok(id),
        _ => Err(invalid()),
    }
}

/// Decodes the hyphenated form (`8-4-4-4-12` hex digits, either case) and nothing else
/// (no braces, no URN, no plain 32 digits: two spellings of one id would make two cache
/// keys). Without a branch per digit (this runs on every request): each pair goes
/// through a table where a non-digit has its high bit set, and the bits of all of them
/// are or-ed together and checked once.
fn decode_hyphenated(bytes: &[u8]) -> Option<Uuid> {
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    for (byte, &at) in out.iter_mut().zip(HEX_PAIRS.iter()) {
        let (high, low) = (HEX[usize::from(bytes[at])], HEX[usize::from(bytes[at + 1])]);
        bad |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (bad & 0x80 == 0).then(|| Uuid::from_bytes(out))
}

/// The request's scope from its scope headers: neither is the workspace;
/// `X-Exabase-Base-Id` a base; `X-Exabase-Workspace-Id` the legacy scope. Each must be
/// one UUID, and both at once is a `400`.
pub fn parse_scope(headers: &HeaderMap) -> Result<Scope, GatewayError> {
    let base = parse_base(headers)?;
    let legacy = parse_uuid_header(
        headers,
        WORKSPACE_HEADER,
        ErrorKind::InvalidWorkspaceId,
        "X-Exabase-Workspace-Id must be a single UUID",
    )?;
    match (base, legacy) {
        (None, None) => Ok(Scope::Workspace),
        (Some(base), None) => Ok(Scope::Base(base)),
        (None, Some(id)) => Ok(Scope::Legacy(id)),
        (Some(_), Some(_)) => Err(GatewayError::new(
            ErrorKind::ConflictingScope,
            "send X-Exabase-Base-Id or X-Exabase-Workspace-Id (its earlier name), not both",
        )),
    }
}

/// The header that puts an upstream call in `scope`, its UUID hyphenated as parsed.
pub fn scope_header(scope: Scope) -> Option<(HeaderName, HeaderValue)> {
    let (name, id) = match scope {
        Scope::Workspace => return None,
        Scope::Base(id) => (BASE_HEADER, id),
        Scope::Legacy(id) => (WORKSPACE_HEADER, id),
    };
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    let value = HeaderValue::from_str(text).ok()?;
    Some((name, value))
}

/// Reads `X-Exabase-Base-Id`: absent is the workspace scope; present must be one UUID.
pub fn parse_base(headers: &HeaderMap) -> Result<Option<Uuid>, GatewayError> {
    parse_uuid_header(
        headers,
        BASE_HEADER,
        ErrorKind::InvalidBaseId,
        "X-Exabase-Base-Id must be a single UUID",
    )
}

/// One hyphenated UUID in header `name`, or none; anything else is `kind`.
fn parse_uuid_header(
    headers: &HeaderMap,
    name: HeaderName,
    kind: ErrorKind,
    message: &'static str,
) -> Result<Option<Uuid>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || GatewayError::new(kind, message);
    if values.next().is_some() {
        return Err(invalid());
    }
    // Only the hyphenated form: the braced and URN forms `Uuid` also takes are not what
    // the API documents, and accepting them would make two spellings of one scope.
    decode_hyphenated(value.as_bytes())
        .map(Some)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    #[test]
    fn job_routes() {
        let id = parse_job_id(ID).expect("valid");
        assert_eq!(
            route(&Method::GET, &format!("/v2/extract/{ID}")).ok(),
            Some(Route::Job(id))
        );
        assert_eq!(
            route(&Method::HEAD, &format!("/v2/extract/{ID}")).ok(),
            Some(Route::Job(id))
        );
        assert_eq!(
            route(&Method::GET, &format!("/v2/extract/{ID}/chunks")).ok(),
            Some(Route::Chunks(id))
        );
        assert_eq!(
            route(&Method::POST, &format!("/v2/extract/{ID}/reprocess")).ok(),
            Some(Route::JobAction(id))
        );
        assert_eq!(
            route(&Method::POST, &format!("/v2/extract/{ID}/webhook/trigger")).ok(),
            Some(Route::JobAction(id))
        );
    }

    #[test]
    fn the_upstream_gets_the_canonical_id_and_the_rest_as_sent() {
        let upper = ID.to_uppercase();
        for (method, target, expected) in [
            (
                Method::POST,
                format!("/v2/extract/{upper}/reprocess"),
                format!("/v2/extract/{ID}/reprocess"),
            ),
            (
                Method::GET,
                format!("/v2/extract/{upper}/download?format=pdf"),
                format!("/v2/extract/{ID}/download?format=pdf"),
            ),
            (
                Method::GET,
                format!("/v2/extract/{upper}"),
                format!("/v2/extract/{ID}"),
            ),
            (
                Method::GET,
                "/v2/extract?limit=5&offset=A".to_owned(),
                "/v2/extract?limit=5&offset=A".to_owned(),
            ),
        ] {
            let uri: http::Uri = target.parse().expect("uri");
            let routed = route(&method, uri.path()).expect("routed");
            assert_eq!(upstream_target(&routed, &uri), expected, "{target}");
        }
    }

    #[test]
    fn chunk_windows_are_canonical_or_refused() {
        for (query, canonical) in [
            ("", ""),
            ("start=1&end=20", "start=1&end=20"),
            ("end=20&start=1", "start=1&end=20"),
            ("start=01&end=020", "start=1&end=20"),
            ("start=5", "start=5"),
            ("end=5&", "end=5"),
            ("start=3&end=3", "start=3&end=3"),
        ] {
            assert_eq!(chunk_window(query).expect(query), canonical, "{query}");
        }
        for query in [
            "start=1&end=100&x=7",
            "x",
            "start=0&end=5",
            "start=5&end=4",
            "start=1&start=2",
            "start=-1",
            "start=+1",
            "start=1.5",
            "start=",
            "start=99999999999999999999",
            "START=1",
            "start=1%26end=2",
        ] {
            assert_eq!(
                chunk_window(query).expect_err(query).kind,
                ErrorKind::BadRequest,
                "{query}"
            );
        }
    }

    #[test]
    fn upper_case_id_is_the_same_job() {
        let lower = parse_job_id(ID).expect("valid");
        let upper = parse_job_id(&ID.to_uppercase()).expect("valid");
        assert_eq!(lower, upper);
        assert_eq!(upper.to_string(), ID);
    }

    #[test]
    fn ids_off_the_pattern_are_refused() {
        for bad in [
            "",
            "upload2",
            "123e4567-e89b-02d3-a456-426614174000", // version 0
            "123e4567-e89b-92d3-a456-426614174000", // version 9
            "123e4567-e89b-12d3-c456-426614174000", // variant c
            "123e4567e89b12d3a456426614174000",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "123e4567-e89b-12d3-a456-42661417400g",
            "%31%32%33e4567-e89b-12d3-a456-426614174000",
        ] {
            let err = parse_job_id(bad).expect_err(bad);
            assert_eq!(err.kind, ErrorKind::InvalidJobId, "{bad}");
        }
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in [
            "/",
            "/v2/users",
            "/v2/extractx",
            "/v1/extract/x",
            "/v2/extract/",
        ] {
            let err = route(&Method::GET, path).expect_err(path);
            assert!(
                matches!(err.kind, ErrorKind::NotFound | ErrorKind::InvalidJobId),
                "{path}"
            );
        }
        let err = route(&Method::GET, &format!("/v2/extract/{ID}/secret")).expect_err("tail");
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[test]
    fn wrong_methods_get_405_with_allow() {
        let err = route(&Method::DELETE, &format!("/v2/extract/{ID}")).expect_err("delete");
        assert_eq!(err.kind, ErrorKind::MethodNotAllowed);
        assert_eq!(err.allow, Some("GET, HEAD"));
        let err = route(&Method::DELETE, "/v2/extract").expect_err("delete");
        assert_eq!(err.allow, Some("GET, POST"));
    }

    #[test]
    fn suspicious_targets_are_refused() {
        for target in [
            "/v2//extract",
            "/v2/extract/../users",
            "/v2/./extract",
            "/v2/extract/%2e%2e/users",
            "/v2/extract/%2E%2E",
            "/v2/extract%2fupload",
            "/v2/extract/%00",
            "/v2/extract/a%0ab",
        ] {
            let uri: http::Uri = target.parse().expect("uri");
            assert_eq!(
                check_target(&uri).expect_err(target).kind,
                ErrorKind::BadRequest
            );
        }
        let long: http::Uri = format!("/v2/extract?{}", "a".repeat(MAX_TARGET))
            .parse()
            .expect("uri");
        assert!(check_target(&long).is_err());
        let fine: http::Uri = "/v2/extract/upload?filename=a%20b.pdf"
            .parse()
            .expect("uri");
        assert!(check_target(&fine).is_ok());
    }

    #[test]
    fn base_header_must_be_one_uuid() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_base(&h).ok(), Some(None));
        h.insert(BASE_HEADER, ID.parse().expect("header"));
        assert!(parse_base(&h).expect("valid").is_some());
        h.insert(BASE_HEADER, "not-a-uuid".parse().expect("header"));
        assert_eq!(
            parse_base(&h).expect_err("bad").kind,
            ErrorKind::InvalidBaseId
        );
        h.insert(BASE_HEADER, ID.replace('-', "").parse().expect("header"));
        assert!(parse_base(&h).is_err());
        h.insert(BASE_HEADER, ID.parse().expect("header"));
        h.append(BASE_HEADER, ID.parse().expect("header"));
        assert!(parse_base(&h).is_err());
    }
}
