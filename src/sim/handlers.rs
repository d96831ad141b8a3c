//! Request handling: recording, faults, the key and scope checks, and the
//! `/v2/` routes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::body::SimBody;
use super::server::ConnCtl;
use super::store::{new_uuid, parse_id, to_json, Reprocess, CHUNKS_PER_PAGE, CHUNK_COUNT};
use super::{lock, webhooks, Fault, Inner, RecordedRequest};

/// Error type of the service; returning one makes hyper drop the connection
/// (HTTP/1) or reset the stream (HTTP/2) without answering.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies are counted in full but only this much is kept for
/// parsing: JSON bodies of this API are tiny, uploads need not be kept.
const MAX_BUFFERED_BODY: usize = 1 << 20;
/// Largest chunk window `/chunks` serves (the upstream's is undocumented).
const MAX_CHUNK_WINDOW: u64 = 100;
/// Largest `limit` of a list.
const MAX_LIST_LIMIT: usize = 100;
const DEFAULT_LIST_LIMIT: usize = 20;

const BASE_HEADER: &str = "x-exabase-base-id";
const WORKSPACE_HEADER: &str = "x-exabase-workspace-id";
const KEY_HEADER: &str = "x-api-key";
const JOB_NOT_FOUND: &str = "Extraction job not found";

/// A request body as received.
struct ReqBody {
    /// The body, if it fit in [`MAX_BUFFERED_BODY`].
    bytes: Option<Bytes>,
    /// How many bytes arrived.
    len: usize,
}

/// Reads the whole body, counting it and keeping it if small. A body that
/// fails mid-way (client gone) counts what arrived.
async fn read_body(mut body: Incoming) -> ReqBody {
    let mut buf = BytesMut::new();
    let mut len = 0;
    let mut keep = true;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if keep && buf.len() + data.len() <= MAX_BUFFERED_BODY {
                buf.extend_from_slice(&data);
            } else {
                keep = false;
                buf = BytesMut::new();
            }
        }
    }
    ReqBody {
        bytes: keep.then(|| buf.freeze()),
        len,
    }
}

/// Handles one request: reads and records it, applies the current fault, then
/// answers it.
pub(super) async fn handle(
    inner: Arc<Inner>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    inner.record(RecordedRequest {
        method: parts.method.clone(),
        path_and_query,
        headers: parts.headers.clone(),
        body_len: body.len,
    });

    let fault = lock(&inner.faults).next();
    match fault {
        Fault::None => {}
        Fault::Latency(delay) => tokio::time::sleep(delay).await,
        Fault::SlowAnswer(delay) => {
            let answer = route(&inner, &parts, &body);
            tokio::time::sleep(delay).await;
            return Ok(answer);
        }
        Fault::TooManyRequests { retry_after } => {
            let mut resp = message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(resp);
        }
        Fault::ServerError => {
            return Ok(message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
            ))
        }
        Fault::Reset => {
            ctl.reset();
            return Err("simulated connection reset".into());
        }
        Fault::Truncated => {
            let whole = truncated_payload(&inner, &parts);
            return Ok(with_json_type(Response::new(SimBody::truncated(&whole))));
        }
        Fault::InvalidJson => {
            return Ok(json(StatusCode::OK, Bytes::from_static(br#"{"id": "oops"#)))
        }
        Fault::Silent => {
            inner.shutdown_requested().await;
            return Err("simulator shut down".into());
        }
    }
    Ok(route(&inner, &parts, &body))
}

/// The job body a truncated response cuts in half: the requested job's when
/// the request is a job GET that would find one, else a made-up completed job.
fn truncated_payload(inner: &Inner, parts: &Parts) -> Bytes {
    let scope = parts
        .headers
        .get(BASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_id);
    let segs: Vec<&str> = parts.uri.path().split('/').collect();
    if let ["", "v2", "extract", id] = segs.as_slice() {
        if let Some(id) = parse_id(id) {
            return inner
                .jobs
                .body(scope, id)
                .unwrap_or_else(|| inner.jobs.synthetic_body(id));
        }
    }
    inner.jobs.synthetic_body(new_uuid())
}

/// The routes; the id is still unparsed (an invalid one is a 404, like an
/// unknown one).
enum Route<'a> {
    Extract,
    Upload,
    Job(&'a str),
    Chunks(&'a str),
    Download(&'a str),
    Reprocess(&'a str),
    Trigger(&'a str),
    Settings,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const GET_POST: &[Method] = &[Method::GET, Method::POST];
const GET_PUT: &[Method] = &[Method::GET, Method::PUT];

/// Maps a path to its route and the methods it allows.
fn resolve(path: &str) -> Option<(Route<'_>, &'static [Method])> {
    let segs: Vec<&str> = path.split('/').collect();
    let found = match segs.as_slice() {
        ["", "v2", "extract"] => (Route::Extract, GET_POST),
        ["", "v2", "extract", "upload"] => (Route::Upload, GET),
        ["", "v2", "extract", id] => (Route::Job(id), GET),
        ["", "v2", "extract", id, "chunks"] => (Route::Chunks(id), GET),
        ["", "v2", "extract", id, "download"] => (Route::Download(id), GET),
        ["", "v2", "extract", id, "reprocess"] => (Route::Reprocess(id), POST),
        ["", "v2", "extract", id, "webhook", "trigger"] => (Route::Trigger(id), POST),
        ["", "v2", "extract-settings"] => (Route::Settings, GET_PUT),
        _ => return None,
    };
    Some(found)
}

/// Answers a request that got past the faults.
fn route(inner: &Inner, parts: &Parts, body: &ReqBody) -> Response<SimBody> {
    let key_ok = parts
        .headers
        .get(KEY_HEADER)
        .is_some_and(|v| v.as_bytes() == inner.api_key.as_bytes());
    if !key_ok {
        return message(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let scope = match (
        parts.headers.get(BASE_HEADER),
        parts.headers.get(WORKSPACE_HEADER),
    ) {
        (None, None) => None,
        (Some(v), None) => match v.to_str().ok().and_then(parse_id) {
            Some(base) => Some(base),
            None => return message(StatusCode::BAD_REQUEST, "X-Exabase-Base-Id must be a UUID"),
        },
        // Played as a scope of its own (see `legacy_scope`).
        (None, Some(v)) => match v.to_str().ok().and_then(parse_id) {
            Some(id) => Some(super::legacy_scope(id)),
            None => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "X-Exabase-Workspace-Id must be a UUID",
                )
            }
        },
        (Some(_), Some(_)) => return message(StatusCode::BAD_REQUEST, "two scope headers"),
    };
    let Some((route, allowed)) = resolve(parts.uri.path()) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    // HEAD is a GET whose body hyper does not send.
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    if !allowed.contains(&method) {
        return method_not_allowed(allowed);
    }
    let query = parts.uri.query().unwrap_or("");
    match route {
        Route::Extract if method == Method::GET => list(inner, scope, query),
        Route::Extract => create(inner, scope, parts, body),
        Route::Upload => upload(query),
        Route::Job(id) => job(inner, scope, id),
        Route::Chunks(id) => chunks(inner, scope, id, query),
        Route::Download(id) => download(inner, scope, id),
        Route::Reprocess(id) => reprocess(inner, scope, id),
        Route::Trigger(id) => trigger(inner, scope, id),
        Route::Settings if method == Method::GET => settings(inner, scope),
        Route::Settings => put_settings(inner, scope, body),
    }
}

fn job(inner: &Inner, scope: Option<Uuid>, id: &str) -> Response<SimBody> {
    match parse_id(id).and_then(|id| inner.jobs.body(scope, id)) {
        Some(body) => json(StatusCode::OK, body),
        None => message(StatusCode::NOT_FOUND, JOB_NOT_FOUND),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    sequence: u64,
    text: String,
    page_number: u64,
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

fn chunks(inner: &Inner, scope: Option<Uuid>, id: &str, query: &str) -> Response<SimBody> {
    let Some((id, state)) = parse_id(id).and_then(|id| Some((id, inner.jobs.state(scope, id)?)))
    else {
        return message(StatusCode::NOT_FOUND, JOB_NOT_FOUND);
    };
    let start = match param(query, "start").map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return message(StatusCode::BAD_REQUEST, "start must be an integer >= 1"),
    };
    let end = match param(query, "end").map(|s| s.parse::<u64>()) {
        None => start.saturating_add(19),
        Some(Ok(n)) if n >= start => n,
        Some(_) => return message(StatusCode::BAD_REQUEST, "end must be an integer >= start"),
    };
    if end - start >= MAX_CHUNK_WINDOW {
        return message(
            StatusCode::BAD_REQUEST,
            "A chunk window holds at most 100 chunks",
        );
    }
    if state.as_deref() != Some("completed") {
        return message(StatusCode::CONFLICT, "Extraction job is not completed");
    }
    let items = (start..=end.min(CHUNK_COUNT))
        .map(|n| Chunk {
            sequence: n,
            text: format!(
                "Chunk {n} of simulated document {id}. Lorem ipsum dolor sit amet, \
                 consectetur adipiscing elit, sed do eiusmod tempor incididunt."
            ),
            page_number: (n - 1) / CHUNKS_PER_PAGE + 1,
        })
        .collect();
    json(StatusCode::OK, to_json(&Items { items }))
}

fn download(inner: &Inner, scope: Option<Uuid>, id: &str) -> Response<SimBody> {
    let Some((id, state)) = parse_id(id).and_then(|id| Some((id, inner.jobs.state(scope, id)?)))
    else {
        return message(StatusCode::NOT_FOUND, JOB_NOT_FOUND);
    };
    if state.as_deref() != Some("completed") {
        return message(StatusCode::CONFLICT, "Extraction job is not completed");
    }
    if let Some(to) = inner.jobs.redirect() {
        let Ok(location) = HeaderValue::from_str(&to) else {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid download redirect",
            );
        };
        let mut resp = Response::new(SimBody::full(Bytes::new()));
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut().insert(LOCATION, location);
        return resp;
    }
    let mut resp = Response::new(SimBody::Download {
        remaining: inner.download_size,
    });
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.zip\"")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    resp
}

fn create(inner: &Inner, scope: Option<Uuid>, parts: &Parts, body: &ReqBody) -> Response<SimBody> {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (name, url) = if content_type.starts_with("multipart/form-data") {
        // The file part is not parsed: any multipart body makes a job.
        (None, None)
    } else if content_type.is_empty() || content_type.contains("json") {
        let Some(bytes) = &body.bytes else {
            return message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
        };
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(bytes) else {
            return message(StatusCode::BAD_REQUEST, "Body must be a JSON object");
        };
        let field = |k: &str| match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{k} must be a string")),
        };
        let (name, url, storage_path) = match (field("name"), field("url"), field("storagePath")) {
            (Ok(n), Ok(u), Ok(p)) => (n, u, p),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return message(StatusCode::BAD_REQUEST, &e)
            }
        };
        if url.is_none() && storage_path.is_none() {
            return message(
                StatusCode::BAD_REQUEST,
                "One of url, storagePath or a multipart file is required",
            );
        }
        (name, url)
    } else {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Use application/json or multipart/form-data",
        );
    };
    let id = inner.jobs.create(scope, name, url);
    match inner.jobs.body(scope, id) {
        Some(b) => json(StatusCode::OK, b),
        None => message(StatusCode::INTERNAL_SERVER_ERROR, "job vanished"),
    }
}

fn list(inner: &Inner, scope: Option<Uuid>, query: &str) -> Response<SimBody> {
    let limit = match param(query, "limit").map(|s| s.parse::<usize>()) {
        None => DEFAULT_LIST_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
        Some(_) => return message(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    // The cursor is opaque to clients; here it is simply an offset.
    let offset = match param(query, "cursor").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return message(StatusCode::BAD_REQUEST, "Invalid cursor"),
    };
    let state = param(query, "state");
    let kind = param(query, "kind");
    let ids = inner.jobs.list(scope, state.as_deref(), kind.as_deref());
    let end = offset.saturating_add(limit);
    let next_cursor = (end < ids.len()).then(|| end.to_string());

    // Bodies are spliced in as they are (they are JSON already) rather than
    // parsed and re-serialized.
    let mut out = BytesMut::from(&b"{\"items\":["[..]);
    let page = ids.iter().skip(offset).take(limit);
    for (i, body) in page
        .filter_map(|id| inner.jobs.body(scope, *id))
        .enumerate()
    {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(b"],\"nextCursor\":");
    out.extend_from_slice(&to_json(&next_cursor));
    out.extend_from_slice(b"}");
    json(StatusCode::OK, out.freeze())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UploadTarget {
    url: String,
    headers: serde_json::Map<String, Value>,
    storage_path: String,
}

fn upload(query: &str) -> Response<SimBody> {
    let Some(filename) = param(query, "filename").filter(|f| !f.is_empty()) else {
        return message(StatusCode::BAD_REQUEST, "filename is required");
    };
    let slot = new_uuid();
    let target = UploadTarget {
        url: format!(
            "https://storage.exabase.io/upload/{slot}?sig={}",
            new_uuid().simple()
        ),
        headers: serde_json::Map::new(),
        storage_path: format!("uploads/{slot}/{filename}"),
    };
    json(StatusCode::OK, to_json(&target))
}

fn reprocess(inner: &Inner, scope: Option<Uuid>, id: &str) -> Response<SimBody> {
    let Some(id) = parse_id(id) else {
        return message(StatusCode::NOT_FOUND, JOB_NOT_FOUND);
    };
    match inner.jobs.reprocess(scope, id) {
        Reprocess::NotFound => message(StatusCode::NOT_FOUND, JOB_NOT_FOUND),
        Reprocess::NotFailed => message(
            StatusCode::CONFLICT,
            "Only failed extraction jobs can be reprocessed",
        ),
        Reprocess::Done => job(inner, scope, &id.to_string()),
    }
}

/// Re-sends the job's webhook (queued: the answer never waits for the
/// receiver). The `traceId` answered is the first attempt's `X-Trace-Id`.
fn trigger(inner: &Inner, scope: Option<Uuid>, id: &str) -> Response<SimBody> {
    let Some(id) = parse_id(id).filter(|id| inner.jobs.state(scope, *id).is_some()) else {
        return message(StatusCode::NOT_FOUND, JOB_NOT_FOUND);
    };
    let trace_id = new_uuid().to_string();
    webhooks::trigger(inner, scope, id, trace_id.clone());
    let body = serde_json::json!({ "traceId": trace_id });
    json(StatusCode::OK, to_json(&body))
}

fn settings(inner: &Inner, scope: Option<Uuid>) -> Response<SimBody> {
    let body = serde_json::json!({ "webhookUrl": inner.jobs.webhook(scope) });
    json(StatusCode::OK, to_json(&body))
}

fn put_settings(inner: &Inner, scope: Option<Uuid>, body: &ReqBody) -> Response<SimBody> {
    let Some(bytes) = &body.bytes else {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large");
    };
    let parsed = serde_json::from_slice::<Value>(bytes).ok();
    let url = match parsed.as_ref().and_then(|v| v.get("webhookUrl")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => None,
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                "Body must be {\"webhookUrl\": string or null}",
            )
        }
    };
    inner.jobs.set_webhook(scope, url);
    settings(inner, scope)
}

/// The first value of query parameter `key`, percent- and `+`-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn with_json_type(mut resp: Response<SimBody>) -> Response<SimBody> {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn json(status: StatusCode, body: Bytes) -> Response<SimBody> {
    let mut resp = with_json_type(Response::new(SimBody::full(body)));
    *resp.status_mut() = status;
    resp
}

/// `{"message": msg}`, the shape every simulated error uses.
fn message(status: StatusCode, msg: &str) -> Response<SimBody> {
    json(status, to_json(&serde_json::json!({ "message": msg })))
}

fn method_not_allowed(allowed: &[Method]) -> Response<SimBody> {
    let mut resp = message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
        resp.headers_mut().insert(http::header::ALLOW, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_decoded() {
        assert_eq!(
            param("a=1&filename=my%20file+x.pdf", "filename").as_deref(),
            Some("my file x.pdf")
        );
        assert_eq!(param("start=3&start=4", "start").as_deref(), Some("3"));
        assert_eq!(param("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(param("", "x"), None);
    }

    #[test]
    fn routes_resolve() {
        assert!(matches!(resolve("/v2/extract"), Some((Route::Extract, _))));
        assert!(matches!(
            resolve("/v2/extract/upload"),
            Some((Route::Upload, _))
        ));
        assert!(matches!(
            resolve("/v2/extract/abc/webhook/trigger"),
            Some((Route::Trigger("abc"), _))
        ));
        assert!(resolve("/v2/extract/").is_some_and(|(r, _)| matches!(r, Route::Job(""))));
        assert!(resolve("/v1/extract").is_none());
        assert!(resolve("/v2/extract/a/b").is_none());
    }
}
