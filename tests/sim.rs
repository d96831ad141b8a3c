//! Real-HTTP tests of the simulated Exabase Extract API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use exagate::sim::{Fault, SimOptions, Simulator, WebhookAttempt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const KEY: &str = "sim-key";

fn opts() -> SimOptions {
    SimOptions {
        pending_for: Duration::from_millis(300),
        processing_for: Duration::from_millis(300),
        download_size: 200_000,
        ..SimOptions::default()
    }
}

async fn start() -> Simulator {
    Simulator::start(opts()).await.unwrap()
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send_with<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Resp, Box<dyn std::error::Error + Send + Sync>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A request with the right key; `headers` are added (or, for `x-api-key`, replace it).
fn request(
    sim: &Simulator,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{path}", sim.url()));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
    {
        b = b.header("x-api-key", KEY);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn call(
    sim: &Simulator,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    send_with(&client(), request(sim, method, path, headers, body))
        .await
        .unwrap()
}

async fn get(sim: &Simulator, path: &str) -> Resp {
    call(sim, Method::GET, path, &[], "").await
}

async fn get_in(sim: &Simulator, base: Uuid, path: &str) -> Resp {
    let base = base.to_string();
    call(sim, Method::GET, path, &[("x-exabase-base-id", &base)], "").await
}

/// Writes a raw HTTP/1.1 request for `path` and returns the open socket.
async fn raw_get(sim: &Simulator, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {KEY}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn key_routes_and_job_shape() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let path = format!("/v2/extract/{id}");

    for headers in [&[][..], &[("x-api-key", "wrong")][..]] {
        let req = Request::get(format!("{}{path}", sim.url()));
        let req = headers
            .iter()
            .fold(req, |r, (k, v)| r.header(*k, *v))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send_with(&client(), req).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json(), serde_json::json!({"message": "Unauthorized"}));
    }

    let r = get(&sim, "/v1/other").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["message"].is_string());

    let r = get(&sim, &format!("/v2/extract/{}", Uuid::nil())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["message"], "Extraction job not found");

    let r = call(&sim, Method::DELETE, &path, &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET");

    let r = call(
        &sim,
        Method::GET,
        &path,
        &[("x-exabase-base-id", "nope")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = get(&sim, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let job = r.json();
    assert_eq!(job["id"], id.to_string());
    assert_eq!(job["state"], "completed");
    assert_eq!(job["kind"], "document");
    let created = job["createdAt"].as_str().unwrap();
    assert_eq!(created.len(), "2026-05-28T14:02:02.644Z".len());
    assert!(created.ends_with('Z'));
    assert_eq!(job["extraction"]["common"]["chunkCount"], 45);
    let thumb = job["extraction"]["common"]["thumbnail"].as_str().unwrap();
    assert!(thumb.starts_with(&format!("https://cdn.exabase.io/{id}/")));
    assert!(thumb.contains("X-Amz-Signature="));
    assert_eq!(
        job["links"]["chunks"],
        format!("{}/v2/extract/{id}/chunks?start=1&end=20", sim.url())
    );
    assert_eq!(
        job["links"]["download"],
        format!("{}/v2/extract/{id}/download", sim.url())
    );

    // Ids match case-insensitively.
    let r = get(
        &sim,
        &format!("/v2/extract/{}", id.to_string().to_uppercase()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // A null state, and an odd body served verbatim.
    let nulled = sim.add_job(None, None, time::OffsetDateTime::now_utc());
    let job = get(&sim, &format!("/v2/extract/{nulled}")).await.json();
    assert!(job["state"].is_null() && job["extraction"].is_null() && job["links"].is_null());
    let odd = Uuid::from_u128(7);
    let body = Bytes::from_static(br#"{"id":"11111111-1111-4111-8111-111111111111"}"#);
    sim.add_job_with_body(None, odd, body.clone());
    assert_eq!(get(&sim, &format!("/v2/extract/{odd}")).await.body, body);
    sim.shutdown().await;
}

#[tokio::test]
async fn scopes_are_isolated_and_lists_are_newest_first() {
    let sim = start().await;
    let base = Uuid::from_u128(0xba5e);
    let in_ws = sim.add_completed(None);
    let now = time::OffsetDateTime::now_utc();
    let older = sim.add_job(Some(base), Some("failed"), now - time::Duration::hours(1));
    let newer = sim.add_job(Some(base), Some("completed"), now);

    assert_eq!(get(&sim, &format!("/v2/extract/{newer}")).await.status, 404);
    assert_eq!(
        get_in(&sim, base, &format!("/v2/extract/{newer}"))
            .await
            .status,
        200
    );
    assert_eq!(
        get_in(&sim, base, &format!("/v2/extract/{in_ws}"))
            .await
            .status,
        404
    );
    assert_eq!(get(&sim, &format!("/v2/extract/{in_ws}")).await.status, 200);

    let list = get_in(&sim, base, "/v2/extract").await.json();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [newer.to_string(), older.to_string()]);
    assert!(list["nextCursor"].is_null());

    let page = get_in(&sim, base, "/v2/extract?limit=1").await.json();
    assert_eq!(page["items"][0]["id"], newer.to_string());
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let page = get_in(&sim, base, &format!("/v2/extract?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_eq!(page["items"][0]["id"], older.to_string());
    assert!(page["nextCursor"].is_null());

    let failed = get_in(&sim, base, "/v2/extract?state=failed").await.json();
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&sim, "/v2/extract").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_progress_and_reprocess() {
    let sim = start().await;
    let r = call(
        &sim,
        Method::POST,
        "/v2/extract",
        &[("content-type", "application/json")],
        r#"{"url":"https://example.com/a.pdf","name":"a.pdf"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let job = r.json();
    assert_eq!(job["state"], "pending");
    assert_eq!(job["name"], "a.pdf");
    assert_eq!(job["url"], "https://example.com/a.pdf");
    assert!(job["extraction"].is_null());
    let path = format!("/v2/extract/{}", job["id"].as_str().unwrap());
    let created = Instant::now();
    let progressing = sim.add_progressing(None);

    let multipart = call(
        &sim,
        Method::POST,
        "/v2/extract",
        &[("content-type", "multipart/form-data; boundary=x")],
        "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.pdf\"\r\n\r\n%PDF\r\n--x--\r\n",
    )
    .await
    .json();
    assert_eq!(multipart["state"], "pending");
    assert!(multipart["name"].is_null());
    let bad = call(&sim, Method::POST, "/v2/extract", &[], r#"{"name":"x"}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    tokio::time::sleep_until((created + Duration::from_millis(420)).into()).await;
    assert_eq!(get(&sim, &path).await.json()["state"], "processing");
    tokio::time::sleep_until((created + Duration::from_millis(720)).into()).await;
    let done = get(&sim, &path).await.json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["extraction"]["common"]["chunkCount"], 45);
    let p = get(&sim, &format!("/v2/extract/{progressing}"))
        .await
        .json();
    assert_eq!(p["state"], "completed");

    // Reprocess: only failed jobs, which then start over.
    let failed = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let re = format!("/v2/extract/{failed}/reprocess");
    let r = call(&sim, Method::POST, &re, &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "pending");
    assert_eq!(call(&sim, Method::POST, &re, &[], "").await.status, 409);
    let unknown = format!("/v2/extract/{}/reprocess", Uuid::nil());
    assert_eq!(
        call(&sim, Method::POST, &unknown, &[], "").await.status,
        404
    );

    sim.set_state(failed, Some("cleaned"));
    assert_eq!(
        get(&sim, &format!("/v2/extract/{failed}")).await.json()["state"],
        "cleaned"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn chunks_windows() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let items = |r: Resp| {
        let v = r.json();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["sequence"].as_u64().unwrap(),
                    c["pageNumber"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = items(get(&sim, &format!("/v2/extract/{id}/chunks")).await);
    assert_eq!(first.len(), 20);
    assert_eq!(first[0], (1, 1));
    assert_eq!(first[5], (6, 2));
    let last = items(get(&sim, &format!("/v2/extract/{id}/chunks?start=41&end=60")).await);
    assert_eq!(
        last.iter().map(|c| c.0).collect::<Vec<_>>(),
        [41, 42, 43, 44, 45]
    );

    for q in [
        "start=1&end=101",
        "start=0&end=5",
        "start=x",
        "start=5&end=4",
    ] {
        let r = get(&sim, &format!("/v2/extract/{id}/chunks?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
    assert_eq!(
        get(&sim, &format!("/v2/extract/{id}/chunks?start=1&end=100"))
            .await
            .status,
        200
    );
    let pending = sim.add_job(None, Some("pending"), time::OffsetDateTime::now_utc());
    assert_eq!(
        get(&sim, &format!("/v2/extract/{pending}/chunks"))
            .await
            .status,
        409
    );
    let nil = Uuid::nil();
    assert_eq!(
        get(&sim, &format!("/v2/extract/{nil}/chunks")).await.status,
        404
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn download_streams_or_redirects() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let path = format!("/v2/extract/{id}/download");
    let r = get(&sim, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/zip");
    assert_eq!(r.body.len(), 200_000);
    assert!(r.body.starts_with(b"PK\x03\x04"));

    sim.set_download_redirect(Some("https://cdn.exabase.io/z.zip?sig=1".to_owned()));
    let r = get(&sim, &path).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "https://cdn.exabase.io/z.zip?sig=1");

    let pending = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    assert_eq!(
        get(&sim, &format!("/v2/extract/{pending}/download"))
            .await
            .status,
        409
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn upload_settings_and_webhook_trigger() {
    let sim = start().await;
    let up = get(&sim, "/v2/extract/upload?filename=my%20file.pdf")
        .await
        .json();
    assert!(up["url"]
        .as_str()
        .unwrap()
        .starts_with("https://storage.exabase.io/upload/"));
    assert!(up["headers"].as_object().unwrap().is_empty());
    let sp = up["storagePath"].as_str().unwrap();
    assert!(sp.starts_with("uploads/") && sp.ends_with("/my file.pdf"));
    assert_eq!(get(&sim, "/v2/extract/upload").await.status, 400);

    assert!(get(&sim, "/v2/extract-settings").await.json()["webhookUrl"].is_null());
    let put = call(
        &sim,
        Method::PUT,
        "/v2/extract-settings",
        &[("content-type", "application/json")],
        r#"{"webhookUrl":"https://hooks.example/x"}"#,
    )
    .await;
    assert_eq!(put.json()["webhookUrl"], "https://hooks.example/x");
    let got = get(&sim, "/v2/extract-settings").await.json();
    assert_eq!(got["webhookUrl"], "https://hooks.example/x");

    let id = sim.add_completed(None);
    let r = call(
        &sim,
        Method::POST,
        &format!("/v2/extract/{id}/webhook/trigger"),
        &[],
        "",
    )
    .await;
    assert!(Uuid::parse_str(r.json()["traceId"].as_str().unwrap()).is_ok());
    sim.shutdown().await;
}

#[tokio::test]
async fn http_level_faults() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let path = format!("/v2/extract/{id}");

    sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(7),
        },
        1,
    );
    let r = get(&sim, &path).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "7");
    assert!(r.json()["message"].is_string());
    assert_eq!(get(&sim, &path).await.status, StatusCode::OK);

    // Faults come before the key check.
    sim.set_fault(Fault::ServerError);
    let r = call(&sim, Method::GET, &path, &[("x-api-key", "wrong")], "").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.json()["message"].is_string());

    sim.set_fault(Fault::InvalidJson);
    let r = get(&sim, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(&r.body[..], br#"{"id": "oops"#);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    sim.set_fault(Fault::Latency(Duration::from_millis(250)));
    let t = Instant::now();
    assert_eq!(get(&sim, &path).await.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(250));

    sim.set_fault(Fault::None);
    assert_eq!(get(&sim, &path).await.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn reset_fault_resets_the_connection() {
    let sim = start().await;
    let id = sim.add_completed(None);
    sim.set_fault_for(Fault::Reset, 1);
    let mut s = raw_get(&sim, &format!("/v2/extract/{id}")).await;
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("reset must not hang");
    let err = read.expect_err("a reset connection answers nothing");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(sim.calls(), 1);

    // The client sees an error too, and the next request is served again.
    sim.set_fault_for(Fault::Reset, 1);
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    assert!(send_with(&client(), req).await.is_err());
    assert_eq!(get(&sim, &format!("/v2/extract/{id}")).await.status, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_fault_sends_half_then_closes() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let full_len = get(&sim, &format!("/v2/extract/{id}")).await.body.len();
    sim.set_fault(Fault::Truncated);
    let mut s = raw_get(&sim, &format!("/v2/extract/{id}")).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
        .await
        .expect("truncated response must end")
        .unwrap();
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 200"));
    assert!(
        head.contains(&format!("content-length: {full_len}")),
        "{head}"
    );
    assert_eq!(body.len(), full_len / 2);

    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    assert!(send_with(&client(), req).await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn silent_fault_holds_until_shutdown() {
    let sim = start().await;
    sim.set_fault(Fault::Silent);
    let mut s = raw_get(&sim, "/v2/extract").await;
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(waited.is_err(), "a silent server must not answer");
    assert_eq!(sim.calls(), 1);

    let t = Instant::now();
    sim.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(2));
    let after = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .expect("shutdown closes held connections");
    assert!(matches!(after, Ok(0) | Err(_)));
    assert!(
        TcpStream::connect(sim.addr()).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn counters_count() {
    let sim = start().await;
    let id = sim.add_completed(None);
    get(&sim, &format!("/v2/extract/{id}")).await;
    get(&sim, &format!("/v2/extract/{id}/chunks?start=1&end=20")).await;
    call(
        &sim,
        Method::GET,
        "/v2/extract",
        &[("x-api-key", "bad")],
        "",
    )
    .await;
    let body = r#"{"url":"https://example.com/x"}"#;
    call(
        &sim,
        Method::POST,
        "/v2/extract",
        &[("content-type", "application/json")],
        body,
    )
    .await;

    assert_eq!(sim.calls(), 4);
    assert_eq!(sim.calls_to(&format!("/v2/extract/{id}")), 2);
    assert_eq!(sim.calls_to("/v2/extract"), 4);
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[1].path_and_query,
        format!("/v2/extract/{id}/chunks?start=1&end=20")
    );
    assert_eq!(reqs[2].headers["x-api-key"], "bad");
    assert_eq!(reqs[3].method, Method::POST);
    assert_eq!(reqs[3].body_len, body.len());

    sim.reset_counters();
    assert_eq!(
        (sim.calls(), sim.calls_to("/"), sim.requests().len()),
        (0, 0, 0)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn padding_sets_the_body_size() {
    let sim = start().await;
    let id = sim.add_completed(None);
    sim.set_padding(2 * 1024 * 1024);
    let r = get(&sim, &format!("/v2/extract/{id}")).await;
    assert_eq!(r.body.len(), 2 * 1024 * 1024);
    assert_eq!(r.json()["id"], id.to_string());
    sim.set_padding(0);
    assert!(get(&sim, &format!("/v2/extract/{id}")).await.body.len() < 4096);
    sim.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let sim = start().await;
    let id = sim.add_completed(None);
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);

    // A reset drops the whole h2 connection; a new one is served again.
    sim.set_fault_for(Fault::Reset, 1);
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    assert!(send_with(&h2, req).await.is_err());
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    assert_eq!(send_with(&h2, req).await.unwrap().status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_is_trusted_through_ca_pem() {
    let sim = Simulator::start(SimOptions {
        tls: true,
        ..opts()
    })
    .await
    .unwrap();
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    let pem = sim.ca_pem().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);

    let id = sim.add_completed(None);
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN offers h2");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let job: Value = serde_json::from_slice(&body).unwrap();
    assert!(job["links"]["download"]
        .as_str()
        .unwrap()
        .starts_with("https://127.0.0.1:"));

    // Without the certificate in its roots, a client refuses the server.
    let untrusted = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(untrusted)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = request(&sim, Method::GET, &format!("/v2/extract/{id}"), &[], "");
    assert!(client.request(req).await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn only_loopback() {
    let opts = SimOptions {
        addr: "0.0.0.0:0".parse().unwrap(),
        ..SimOptions::default()
    };
    let err = Simulator::start(opts).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

// ---- Webhooks ----

/// How a [`Receiver`] answers its `n`th delivery (0-based).
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answers (the simulator's timeout must end the attempt).
    Hang,
}

/// One request a [`Receiver`] got.
struct Hook {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on 127.0.0.1 (hyper, HTTP/1.1) that records every request and
/// answers the `n`th as `answer(n)` says. Stops when dropped.
struct Receiver {
    addr: std::net::SocketAddr,
    hooks: Arc<Mutex<Vec<Hook>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (recorded, counted) = (hooks.clone(), connections.clone());
        let task = tokio::spawn(async move {
            // Owned here, so dropping the receiver also drops its connections.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (recorded, answer) = (recorded.clone(), answer.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (recorded, answer) = (recorded.clone(), answer.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let n = {
                            let mut hooks = recorded.lock().unwrap();
                            hooks.push(Hook {
                                method: parts.method,
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            hooks.len() - 1
                        };
                        match answer(n) {
                            Answer::Status(s) => Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(s)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            ),
                            Answer::Hang => std::future::pending().await,
                        }
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            hooks,
            connections,
            task,
        }
    }

    /// Always 200.
    async fn ok() -> Receiver {
        Receiver::start(|_| Answer::Status(200)).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self) -> usize {
        self.hooks.lock().unwrap().len()
    }

    /// The deliveries to `path`: (X-Trace-Id, body).
    fn to(&self, path: &str) -> Vec<(String, Bytes)> {
        self.hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .map(|h| {
                (
                    h.headers["x-trace-id"].to_str().unwrap().to_owned(),
                    h.body.clone(),
                )
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Long enough for the sender to act on anything pending (several 50 ms ticks), to show
/// that nothing more comes.
const SETTLE: Duration = Duration::from_millis(250);

/// Polls `probe` every 10 ms until it gives a value; fails after 5 s.
async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets the webhook URL of `base` (`None`: the workspace) through the API.
async fn set_webhook(sim: &Simulator, base: Option<Uuid>, url: Option<&str>) {
    let base = base.map(|b| b.to_string());
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &base {
        headers.push(("x-exabase-base-id", b));
    }
    let body = serde_json::json!({ "webhookUrl": url }).to_string();
    let r = call(sim, Method::PUT, "/v2/extract-settings", &headers, &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["webhookUrl"], serde_json::json!(url));
}

/// `POST .../webhook/trigger` for job `id` in `base`; the `traceId` answered.
async fn trigger(sim: &Simulator, base: Option<Uuid>, id: Uuid) -> String {
    let base = base.map(|b| b.to_string());
    let headers: Vec<(&str, &str)> = base.iter().map(|b| ("x-exabase-base-id", &b[..])).collect();
    let path = format!("/v2/extract/{id}/webhook/trigger");
    let r = call(sim, Method::POST, &path, &headers, "").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["traceId"].as_str().unwrap().to_owned()
}

/// A simulator with a fast schedule and the given retry pauses.
async fn start_hooks(retry: &[u64]) -> Simulator {
    Simulator::start(SimOptions {
        pending_for: Duration::from_millis(50),
        processing_for: Duration::from_millis(50),
        webhook_retry: retry.iter().map(|&ms| Duration::from_millis(ms)).collect(),
        ..opts()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_completing_job_delivers_its_body_once() {
    let sim = start_hooks(&[100]).await;
    let rx = Receiver::ok().await;
    let url = rx.url("/hooks/exabase?src=sim");
    set_webhook(&sim, None, Some(&url)).await;
    // Born completed: no completion to announce.
    let done = sim.add_completed(None);
    let id = sim.add_progressing(None);

    let hook = until("the webhook", || rx.hooks.lock().unwrap().pop()).await;
    assert_eq!(hook.method, Method::POST);
    assert_eq!(hook.path, "/hooks/exabase?src=sim");
    assert_eq!(hook.headers["content-type"], "application/json");
    assert_eq!(hook.headers["host"], rx.addr.to_string());
    let trace = hook.headers["x-trace-id"].to_str().unwrap();
    assert!(Uuid::parse_str(trace).is_ok(), "{trace}");
    let job = get(&sim, &format!("/v2/extract/{id}")).await;
    assert_eq!(hook.body, job.body, "the body GET answers, byte for byte");
    assert_eq!(job.json()["state"], "completed");

    tokio::time::sleep(SETTLE).await;
    assert_eq!(rx.count(), 0, "once per completion");
    let attempts = sim.webhooks();
    assert_eq!(
        attempts,
        [WebhookAttempt {
            job: id,
            url,
            trace_id: trace.to_owned(),
            attempt: 1,
            outcome: Some(200),
            refused: false,
            at: attempts[0].at,
        }]
    );
    assert_eq!(sim.webhooks_acked(), 1);
    assert!(sim.webhooks().iter().all(|a| a.job != done));
    sim.shutdown().await;
}

#[tokio::test]
async fn set_state_and_reprocess_each_notify_their_completion() {
    let sim = start_hooks(&[]).await;
    let rx = Receiver::ok().await;
    set_webhook(&sim, None, Some(&rx.url("/h"))).await;
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    sim.set_state(id, Some("completed"));
    until("the set_state completion", || {
        (rx.count() == 1).then_some(())
    })
    .await;
    let first = rx.to("/h")[0].1.clone();
    assert_eq!(first, get(&sim, &format!("/v2/extract/{id}")).await.body);
    // Completed already: not a new completion.
    sim.set_state(id, Some("completed"));

    sim.set_state(id, Some("failed"));
    let re = call(
        &sim,
        Method::POST,
        &format!("/v2/extract/{id}/reprocess"),
        &[],
        "",
    )
    .await;
    assert_eq!(re.json()["state"], "pending");
    until("the reprocessed completion", || {
        (rx.count() == 2).then_some(())
    })
    .await;
    let again: Value = serde_json::from_slice(&rx.to("/h")[1].1).unwrap();
    assert_eq!(
        (again["id"].as_str(), again["state"].as_str()),
        (Some(&*id.to_string()), Some("completed"))
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(rx.count(), 2);
    assert_eq!(sim.webhooks_acked(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried() {
    let sim = start_hooks(&[100, 100]).await;
    let rx = Receiver::start(|n| Answer::Status(if n == 0 { 500 } else { 200 })).await;
    set_webhook(&sim, None, Some(&rx.url("/h"))).await;
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    sim.set_state(id, Some("completed"));

    until("the retry's ack", || {
        (sim.webhooks_acked() == 1).then_some(())
    })
    .await;
    let attempts = sim.webhooks();
    let seen: Vec<(u32, Option<u16>)> = attempts.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(seen, [(1, Some(500)), (2, Some(200))]);
    assert!(attempts.iter().all(|a| a.job == id && !a.refused));
    let got = rx.to("/h");
    assert_eq!(got.len(), 2);
    assert_ne!(got[0].0, got[1].0, "a fresh trace id per attempt");
    assert_eq!(
        (&got[0].0, &got[1].0),
        (&attempts[0].trace_id, &attempts[1].trace_id)
    );
    assert_eq!(got[0].1, got[1].1, "the retry sends the same body");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(sim.webhooks().len(), 2, "no retry after an ack");
    sim.shutdown().await;
}

#[tokio::test]
async fn timeouts_and_connect_errors_are_retried_then_given_up() {
    let sim = Simulator::start(SimOptions {
        webhook_timeout: Duration::from_millis(200),
        webhook_retry: vec![Duration::from_millis(50); 2],
        ..opts()
    })
    .await
    .unwrap();
    // A receiver that never answers its first delivery.
    let slow = Receiver::start(|n| {
        if n == 0 {
            Answer::Hang
        } else {
            Answer::Status(204)
        }
    })
    .await;
    set_webhook(&sim, None, Some(&slow.url("/slow"))).await;
    let id = sim.add_completed(None);
    trigger(&sim, None, id).await;
    until("the ack after a timeout", || {
        (sim.webhooks_acked() == 1).then_some(())
    })
    .await;
    let seen: Vec<_> = sim
        .webhooks()
        .iter()
        .map(|a| (a.attempt, a.outcome))
        .collect();
    assert_eq!(seen, [(1, None), (2, Some(204))]);

    // Nothing listens on this port: every attempt fails, and after the last retry it
    // gives up.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/gone");
    set_webhook(&sim, None, Some(&url)).await;
    trigger(&sim, None, id).await;
    let gone = || -> Vec<(u32, Option<u16>, bool)> {
        sim.webhooks()
            .iter()
            .filter(|a| a.url == url)
            .map(|a| (a.attempt, a.outcome, a.refused))
            .collect()
    };
    until("three failed attempts", || {
        (gone().len() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        gone(),
        [(1, None, false), (2, None, false), (3, None, false)]
    );
    assert_eq!(sim.webhooks_acked(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn trigger_resends_the_current_body() {
    let sim = start_hooks(&[]).await;
    let rx = Receiver::ok().await;
    let base = Uuid::from_u128(0x7e57);
    set_webhook(&sim, Some(base), Some(&rx.url("/t"))).await;
    let id = sim.add_completed(Some(base));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        rx.count(),
        0,
        "a job added completed sends nothing by itself"
    );

    let first = trigger(&sim, Some(base), id).await;
    until("the triggered webhook", || (rx.count() == 1).then_some(())).await;
    sim.set_padding(3000);
    let second = trigger(&sim, Some(base), id).await;
    until("the second one", || (rx.count() == 2).then_some(())).await;
    let got = rx.to("/t");
    assert_eq!(
        (&got[0].0, &got[1].0),
        (&first, &second),
        "X-Trace-Id is the traceId answered"
    );
    assert_ne!(first, second);
    assert_eq!(
        got[1].1,
        get_in(&sim, base, &format!("/v2/extract/{id}")).await.body
    );
    assert_eq!(got[1].1.len(), 3000, "the job's current body");
    assert!(got[0].1.len() < 3000);

    // Unknown (or out-of-scope) jobs: 404, nothing sent.
    let other = format!("/v2/extract/{id}/webhook/trigger");
    assert_eq!(call(&sim, Method::POST, &other, &[], "").await.status, 404);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(rx.count(), 2);
    assert_eq!(sim.webhooks_acked(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_base_job_goes_to_the_base_url_else_to_the_workspace_url() {
    let sim = start_hooks(&[]).await;
    let rx = Receiver::ok().await;
    let (own, bare) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
    set_webhook(&sim, None, Some(&rx.url("/workspace"))).await;
    set_webhook(&sim, Some(own), Some(&rx.url("/own"))).await;
    let in_own = sim.add_progressing(Some(own));
    let in_bare = sim.add_progressing(Some(bare));
    let in_ws = sim.add_progressing(None);

    until("three webhooks", || (rx.count() == 3).then_some(())).await;
    let ids = |path: &str| -> Vec<String> {
        rx.to(path)
            .iter()
            .map(|(_, b)| {
                serde_json::from_slice::<Value>(b).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(ids("/own"), [in_own.to_string()]);
    let mut ws = ids("/workspace");
    ws.sort();
    let mut want = vec![in_bare.to_string(), in_ws.to_string()];
    want.sort();
    assert_eq!(ws, want);
    assert_eq!(
        rx.to("/own")[0].1,
        get_in(&sim, own, &format!("/v2/extract/{in_own}"))
            .await
            .body,
        "rendered in the job's scope"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn non_loopback_urls_are_refused_unsent() {
    let sim = Simulator::start(SimOptions {
        // A real attempt at an unroutable address would take this long to fail.
        webhook_timeout: Duration::from_secs(30),
        webhook_retry: vec![Duration::from_millis(50)],
        ..opts()
    })
    .await
    .unwrap();
    let rx = Receiver::ok().await;
    let port = rx.addr.port();
    let id = sim.add_completed(None);
    let started = Instant::now();
    for url in [
        "http://192.0.2.1/x".to_owned(),
        // Both reach the receiver if contacted.
        format!("https://127.0.0.1:{port}/tls"),
        format!("http://2130706433:{port}/decimal"),
    ] {
        set_webhook(&sim, None, Some(&url)).await;
        let trace_id = trigger(&sim, None, id).await;
        let got = until("the refusal", || {
            sim.webhooks().into_iter().find(|a| a.url == url)
        })
        .await;
        assert_eq!(
            got,
            WebhookAttempt {
                job: id,
                url,
                trace_id,
                attempt: 1,
                outcome: None,
                refused: true,
                at: got.at,
            }
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused without trying"
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(sim.webhooks().len(), 3, "refusals are not retried");
    assert_eq!(rx.connections.load(Ordering::SeqCst), 0);

    // The loopback names are sent to, `localhost` with its own Host header.
    let url = format!("http://localhost:{port}/named");
    set_webhook(&sim, None, Some(&url)).await;
    trigger(&sim, None, id).await;
    until("the localhost delivery", || (rx.count() == 1).then_some(())).await;
    assert_eq!(
        rx.hooks.lock().unwrap()[0].headers["host"],
        format!("localhost:{port}")
    );
    assert_eq!(sim.webhooks_acked(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn nothing_is_sent_without_a_url_or_when_switched_off() {
    let rx = Receiver::ok().await;
    let sim = start_hooks(&[]).await;
    let progressing = sim.add_progressing(None);
    let set = sim.add_job(None, Some("pending"), time::OffsetDateTime::now_utc());
    sim.set_state(set, Some("completed"));
    trigger(&sim, None, set).await;
    let path = format!("/v2/extract/{progressing}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&sim, &path).await.json()["state"] != "completed" {
        assert!(Instant::now() < deadline, "the job completes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The ticker has had its chance; a URL set now is not retroactive.
    tokio::time::sleep(SETTLE).await;
    set_webhook(&sim, None, Some(&rx.url("/late"))).await;
    tokio::time::sleep(SETTLE).await;
    assert!(sim.webhooks().is_empty());
    sim.shutdown().await;

    let off = Simulator::start(SimOptions {
        send_webhooks: false,
        ..opts()
    })
    .await
    .unwrap();
    set_webhook(&off, None, Some(&rx.url("/off"))).await;
    let id = off.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    off.set_state(id, Some("completed"));
    assert!(Uuid::parse_str(&trigger(&off, None, id).await).is_ok());
    tokio::time::sleep(SETTLE).await;
    assert!(off.webhooks().is_empty());
    assert_eq!(rx.connections.load(Ordering::SeqCst), 0);
    off.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_pending_retries() {
    let sim = start_hooks(&[300, 300]).await;
    let rx = Receiver::start(|_| Answer::Status(503)).await;
    set_webhook(&sim, None, Some(&rx.url("/h"))).await;
    let id = sim.add_completed(None);
    trigger(&sim, None, id).await;
    until("the first attempt", || {
        (!sim.webhooks().is_empty()).then_some(())
    })
    .await;
    let started = Instant::now();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // Past the first retry's due time.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.count(), 1, "no retry after shutdown");
    let seen: Vec<_> = sim
        .webhooks()
        .iter()
        .map(|a| (a.attempt, a.outcome))
        .collect();
    assert_eq!(seen, [(1, Some(503))]);
}
