//! Webhooks (#12): the receiver primes the cache, the relay tells subscribers, long-polls
//! answer at the change. Everything through real HTTP on 127.0.0.1: the simulator, the
//! gateway, and subscriber servers started here.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{job_path, Harness, Reply, KEY};
use exagate::config::{SubscriberConfig, WebhooksConfig};
use http::{Method, StatusCode};
use uuid::Uuid;

/// The receiver's path secret in these tests: distinctive, so output can be searched.
const SECRET: &str = "whk-path-secret-3b9e51c0d7a24f68a1c5e2b7d9f04a36";

/// A subscriber's signing secret (24 bytes, base64).
const SIGNING: &str = "whsec_c2lnbmluZy1rZXktZm9yLXRoZS10ZXN0cy0x";

/// `[webhooks]` with the secret in a file under `dir` and a fast retry schedule.
fn hooks(dir: &std::path::Path) -> WebhooksConfig {
    let file = dir.join("webhook-secret");
    std::fs::write(&file, format!("{SECRET}\n")).expect("secret file");
    let mut config: WebhooksConfig = toml::from_str(&format!(
        "secret_file = \"{}\"\npublic_url = \"http://127.0.0.1:1\"\nretry_schedule = [\"200ms\"]\n",
        file.display()
    ))
    .expect("webhooks config");
    config.subscribers = Vec::new();
    config
}

/// A harness with `[webhooks]` on (and the admin listener), adjusted further by `adjust`.
async fn harness(dir: &std::path::Path, adjust: impl FnOnce(&mut exagate::Config)) -> Harness {
    let hooks = hooks(dir);
    Harness::with(move |c| {
        c.webhooks = Some(hooks);
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        adjust(c);
    })
    .await
}

/// The job's body as the upstream itself answers it (what the API's webhook carries).
async fn upstream_body(h: &Harness, id: Uuid, base: Option<Uuid>) -> Bytes {
    let base = base.map(|b| b.to_string());
    let mut headers = vec![("x-api-key", KEY)];
    if let Some(base) = &base {
        headers.push(("x-exabase-base-id", base));
    }
    let reply = common::send(
        &h.client,
        Method::GET,
        &format!("{}{}", h.sim.url(), job_path(id)),
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

/// POSTs a delivery to the receiver, as the API does.
async fn deliver(h: &Harness, secret: &str, body: Bytes) -> Reply {
    h.send(
        Method::POST,
        &format!("/webhooks/exabase/{secret}"),
        &[
            ("content-type", "application/json"),
            ("x-trace-id", "trace-1"),
        ],
        body,
    )
    .await
}

/// Whether `cause` of the receiver's deliveries reaches `n` (within 2 s: it is counted
/// as the delivery's processing ends).
async fn received(h: &Harness, cause: &str, n: f64) -> bool {
    let series = format!("exagate_webhook_deliveries_received_total{{cause=\"{cause}\"}}");
    eventually(Duration::from_secs(2), async || {
        h.metric(&series).await == n
    })
    .await
}

/// Polls `f` every 20 ms until it holds, for at most `within`.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn state(reply: &Reply) -> String {
    reply.json()["state"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_primes_the_polled_job_so_the_next_poll_is_completed_with_no_upstream_call() {
    let dir = common::tempdir();
    let h = harness(dir.path(), |_| {}).await;
    let id = h
        .sim
        .add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let first = h.get(&job_path(id)).await;
    assert_eq!(state(&first), "processing");
    // In progress lives webhooks.in_progress_ttl (15 s) now, not 1 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = h.get(&job_path(id)).await;
    assert_eq!(
        (again.cache(), state(&again).as_str()),
        ("hit", "processing")
    );

    h.sim.set_state(id, Some("completed"));
    let body = upstream_body(&h, id, None).await;
    let calls = h.sim.calls_to(&job_path(id));
    let ack = deliver(&h, SECRET, body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    // Primed before the acknowledgement: the very next poll sees it.
    assert_eq!(
        state(&h.get(&job_path(id)).await),
        "completed",
        "the poll after the 202 sees the delivery"
    );
    let reply = h.get(&job_path(id)).await;
    assert_eq!(reply.cache(), "hit");
    // Links rewritten, as for an upstream answer.
    let chunks = reply.json()["links"]["chunks"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(chunks.starts_with(&h.url()), "{chunks}");
    assert_eq!(h.sim.calls_to(&job_path(id)), calls, "no upstream call");
    assert!(
        received(&h, "primed", 1.0).await,
        "one delivery counted primed"
    );
    // The API's retry of the same delivery changes nothing twice.
    let body = upstream_body(&h, id, None).await;
    assert_eq!(deliver(&h, SECRET, body).await.status, StatusCode::ACCEPTED);
    assert!(
        received(&h, "duplicate", 1.0).await,
        "one delivery counted duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_and_bad_bodies_change_nothing() {
    let dir = common::tempdir();
    let h = harness(dir.path(), |c| {
        c.webhooks.as_mut().expect("on").max_body = 4096;
    })
    .await;
    let id = h
        .sim
        .add_job(None, Some("pending"), time::OffsetDateTime::now_utc());
    assert_eq!(state(&h.get(&job_path(id)).await), "pending");
    h.sim.set_state(id, Some("completed"));
    let good = upstream_body(&h, id, None).await;
    let unknown_path = h.get("/no/such/path").await;
    for secret in [
        "",
        "x",
        &SECRET[1..],
        &format!("{SECRET}x"),
        &SECRET.to_uppercase(),
    ] {
        let reply = deliver(&h, secret, good.clone()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{secret:?}");
        assert_eq!(
            reply.body, unknown_path.body,
            "answered like any unknown path"
        );
    }
    for (body, status, code) in [
        (&b"not json"[..], StatusCode::BAD_REQUEST, "invalid_webhook"),
        (
            &br#"{"state":"completed"}"#[..],
            StatusCode::BAD_REQUEST,
            "invalid_webhook",
        ),
        (
            &br#"{"id":"nope","state":"completed"}"#[..],
            StatusCode::BAD_REQUEST,
            "invalid_webhook",
        ),
        (
            &[b' '; 5000][..],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ] {
        let reply = deliver(&h, SECRET, Bytes::copy_from_slice(body)).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (status, code));
    }
    // The job's id in any other spelling than the API's (upper case, braces, no
    // hyphens, a URN) is not a job for the receiver.
    let text = String::from_utf8_lossy(&good).to_string();
    let plain = id.to_string();
    for odd in [
        plain.to_uppercase(),
        format!("{{{plain}}}"),
        id.simple().to_string(),
        format!("urn:uuid:{plain}"),
    ] {
        let body = text.replacen(
            &format!("\"id\":\"{plain}\""),
            &format!("\"id\":\"{odd}\""),
            1,
        );
        assert_ne!(body, text, "the id was replaced");
        let reply = deliver(&h, SECRET, Bytes::from(body)).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_webhook"),
            "{odd}"
        );
    }
    // Another method is a 404 too, whatever the secret: no way to tell a right one.
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        for secret in [SECRET, "wrong"] {
            let reply = h
                .send(
                    method.clone(),
                    &format!("/webhooks/exabase/{secret}"),
                    &[],
                    Bytes::new(),
                )
                .await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {secret}");
            if method != Method::HEAD {
                assert_eq!(reply.body, unknown_path.body);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = h.get(&job_path(id)).await;
    assert_eq!((reply.cache(), state(&reply).as_str()), ("hit", "pending"));
    assert_eq!(
        h.metric("exagate_webhook_deliveries_received_total{cause=\"refused\"}")
            .await,
        21.0
    );
    // The secret is in no metric.
    let metrics = h.admin_get("/metrics").await;
    assert!(!String::from_utf8_lossy(&metrics.body).contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_scopes_a_job_was_seen_in_are_primed() {
    let dir = common::tempdir();
    let h = harness(dir.path(), |_| {}).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let id = h
        .sim
        .add_job(Some(a), Some("processing"), time::OffsetDateTime::now_utc());
    assert_eq!(state(&h.get_in(a, &job_path(id)).await), "processing");
    h.sim.set_state(id, Some("completed"));
    let body = upstream_body(&h, id, Some(a)).await;
    assert_eq!(deliver(&h, SECRET, body).await.status, StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(2), async || {
            state(&h.get_in(a, &job_path(id)).await) == "completed"
        })
        .await
    );
    let calls = h.sim.calls_to(&job_path(id));
    // Base B and the workspace were never primed: they go upstream (which does not
    // know the job there).
    assert_eq!(
        h.get_in(b, &job_path(id)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.sim.calls_to(&job_path(id)), calls + 2);

    // A job never seen is acknowledged and left alone.
    let other = h.sim.add_completed(None);
    let body = upstream_body(&h, other, None).await;
    assert_eq!(deliver(&h, SECRET, body).await.status, StatusCode::ACCEPTED);
    assert!(
        received(&h, "unknown_job", 1.0).await,
        "one delivery counted unknown_job"
    );
    assert_eq!(h.get(&job_path(other)).await.cache(), "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_through_the_gateway_costs_no_first_poll_and_settings_stay_the_gateways() {
    let dir = common::tempdir();
    let h = harness(dir.path(), |_| {}).await;
    let created = h
        .send(
            Method::POST,
            "/v2/extract",
            &[("content-type", "application/json")],
            Bytes::from_static(br#"{"url":"https://example.com/a.pdf","name":"a"}"#),
        )
        .await;
    assert!(created.status.is_success(), "{:?}", created.status);
    let id: Uuid = created.json()["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let calls = h.sim.calls_to(&job_path(id));
    let poll = h.get(&job_path(id)).await;
    assert_eq!((poll.cache(), state(&poll).as_str()), ("hit", "pending"));
    assert_eq!(h.sim.calls_to(&job_path(id)), calls);

    let before = h.sim.calls_to("/v2/extract-settings");
    let put = h
        .send(
            Method::PUT,
            "/v2/extract-settings",
            &[("content-type", "application/json")],
            Bytes::from_static(br#"{"webhookUrl":"https://app.example.com/hook"}"#),
        )
        .await;
    assert_eq!(put.status, StatusCode::CONFLICT);
    assert_eq!(put.error_code(), "webhooks_managed");
    assert!(put.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("subscribers"));
    assert_eq!(
        h.sim.calls_to("/v2/extract-settings"),
        before,
        "never forwarded"
    );
    // Reading them is answered by the gateway: the account's setting holds the
    // receiver's secret, with which anyone could forge deliveries.
    common::send(
        &h.client,
        Method::PUT,
        &format!("{}/v2/extract-settings", h.sim.url()),
        &[("x-api-key", KEY), ("content-type", "application/json")],
        Bytes::from(format!(
            "{{\"webhookUrl\":\"{}/webhooks/exabase/{SECRET}\"}}",
            h.url()
        )),
    )
    .await;
    let before = h.sim.calls_to("/v2/extract-settings");
    let read = h.get("/v2/extract-settings").await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&read.body).contains(SECRET),
        "{:?}",
        read.body
    );
    assert_eq!(read.json()["managedBy"], "exagate");
    assert!(read.json()["webhookUrl"]
        .as_str()
        .unwrap_or("")
        .ends_with("/webhooks/exabase/[redacted]"));
    assert_eq!(
        h.sim.calls_to("/v2/extract-settings"),
        before,
        "not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_answer_if_none_match_with_304() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let first = h.get(&job_path(id)).await;
    let etag = first
        .headers
        .get("etag")
        .expect("etag")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let same = h
        .send(
            Method::GET,
            &job_path(id),
            &[("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(
        same.headers.get("etag").map(|v| v.to_str().ok()),
        Some(Some(etag.as_str()))
    );
    let weak = format!("\"other\", W/{etag}");
    let listed = h
        .send(
            Method::GET,
            &job_path(id),
            &[("if-none-match", &weak)],
            Bytes::new(),
        )
        .await;
    assert_eq!(listed.status, StatusCode::NOT_MODIFIED);
    // Two header lines are one list.
    let lines = h
        .send(
            Method::GET,
            &job_path(id),
            &[("if-none-match", "\"other\""), ("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(lines.status, StatusCode::NOT_MODIFIED);
    let other = h
        .send(
            Method::GET,
            &job_path(id),
            &[("if-none-match", "\"other\"")],
            Bytes::new(),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, first.body);
    assert_eq!(h.sim.calls_to(&job_path(id)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_at_the_delivery_at_the_end_of_its_wait_or_at_once_when_finished() {
    let dir = common::tempdir();
    let h = Arc::new(harness(dir.path(), |_| {}).await);
    // Finished: at once.
    let done = h.sim.add_completed(None);
    let started = Instant::now();
    let reply = h.get(&format!("{}?wait=30s", job_path(done))).await;
    assert_eq!(state(&reply), "completed");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Unparseable: 400.
    let bad = h.get(&format!("{}?wait=soon", job_path(done))).await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_wait")
    );

    // Nothing happens: the current state at the end of the wait.
    let id = h
        .sim
        .add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let started = Instant::now();
    let reply = h.get(&format!("{}?wait=1s", job_path(id))).await;
    let waited = started.elapsed();
    assert_eq!(state(&reply), "processing");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    // A delivery during the wait: answered a moment after it.
    let waiter = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            let reply = h.get(&format!("{}?wait=20s", job_path(id))).await;
            (reply, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "held while in progress");
    h.sim.set_state(id, Some("completed"));
    let body = upstream_body(&h, id, None).await;
    let delivered = Instant::now();
    assert_eq!(deliver(&h, SECRET, body).await.status, StatusCode::ACCEPTED);
    let (reply, answered) = waiter.await.expect("waiter");
    assert_eq!(state(&reply), "completed");
    let delay = answered.duration_since(delivered);
    assert!(delay < Duration::from_millis(500), "{delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_cost_one_upstream_refresh_per_ttl() {
    // Webhooks off: in-progress entries live 1 s, so the job is refreshed once a second
    // however many wait on it.
    let h = Arc::new(Harness::new().await);
    let id = h
        .sim
        .add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let started = Instant::now();
    let waiters: Vec<_> = (0..1000)
        .map(|_| {
            let h = Arc::clone(&h);
            tokio::spawn(async move { h.get(&format!("{}?wait=6s", job_path(id))).await })
        })
        .collect();
    // All held at once (on a loaded machine connections past the accept backlog come in
    // on their SYN retries, a second or three later).
    let watchers = &h.gateway.gateway.watchers;
    assert!(
        eventually(Duration::from_secs(5), async || watchers.waiting() == 1000).await,
        "{} waiters held at once",
        watchers.waiting()
    );
    for waiter in waiters {
        let reply = waiter.await.expect("waiter");
        assert_eq!(state(&reply), "processing");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = h.sim.calls_to(&job_path(id));
    // One call per second of waiting (and one more at each end at most).
    assert!(
        calls as f64 <= elapsed.ceil() + 2.0,
        "{calls} upstream calls in {elapsed:.1} s for 1000 waiters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_waiters_at_once() {
    let h = Harness::new().await;
    let id = h
        .sim
        .add_job(None, Some("pending"), time::OffsetDateTime::now_utc());
    let url = format!("{}{}?wait=30s", h.url(), job_path(id));
    let client = h.client.clone();
    let waiter =
        tokio::spawn(
            async move { common::send(&client, Method::GET, &url, &[], Bytes::new()).await },
        );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    h.gateway.begin_shutdown();
    let reply = waiter.await.expect("waiter");
    assert_eq!(state(&reply), "pending");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// One delivery as a subscriber received it.
#[derive(Debug, Clone)]
struct Received {
    headers: http::HeaderMap,
    body: Bytes,
}

/// A subscriber: records deliveries, answers each with the next status of `script`
/// (then 200), and checks nothing itself (the tests verify the signatures).
struct Endpoint {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn endpoint(script: Vec<u16>) -> Endpoint {
    endpoint_on(0, script).await
}

async fn endpoint_on(port: u16, script: Vec<u16>) -> Endpoint {
    let script = Mutex::new(std::collections::VecDeque::from(script));
    serve_endpoint(port, move |_, _| {
        let status = script.lock().expect("script").pop_front().unwrap_or(200);
        (StatusCode::from_u16(status).expect("status"), None)
    })
    .await
}

/// A subscriber on `port` (0: any) that records each delivery and answers what
/// `respond` makes of it and of those before it: a status and a `Retry-After`.
async fn serve_endpoint(
    port: u16,
    respond: impl Fn(&[Received], &Received) -> (StatusCode, Option<u64>) + Send + Sync + 'static,
) -> Endpoint {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let log = Arc::clone(&received);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (log, respond) = (Arc::clone(&log), Arc::clone(&respond));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (log, respond) = (Arc::clone(&log), Arc::clone(&respond));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let this = Received {
                                headers: parts.headers,
                                body,
                            };
                            let (status, retry_after) = {
                                let mut log = log.lock().expect("log");
                                let answer = respond(&log, &this);
                                log.push(this);
                                answer
                            };
                            let mut response =
                                http::Response::new(http_body_util::Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            if let Some(secs) = retry_after {
                                response.headers_mut().insert(
                                    "retry-after",
                                    secs.to_string().parse().expect("header"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Endpoint {
        url: format!("http://{addr}/hooks"),
        received,
        task,
    }
}

fn subscriber(name: &str, url: &str, env: &str, bases: Option<Vec<Uuid>>) -> SubscriberConfig {
    // Each test names its own variable: tests run side by side in one process.
    std::env::set_var(env, SIGNING);
    SubscriberConfig {
        name: name.into(),
        url: url.into(),
        secret_env: env.into(),
        workspace: bases.is_none().then_some(true),
        bases,
        events: None,
    }
}

/// Checks a delivery with the reference Standard Webhooks library.
fn verify(received: &Received) -> serde_json::Value {
    let reference = standardwebhooks::Webhook::new(SIGNING).expect("key");
    reference
        .verify(&received.body, &received.headers)
        .expect("the signature verifies");
    serde_json::from_slice(&received.body).expect("json body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_signed_retried_scoped_deliveries_once_per_event() {
    let dir = common::tempdir();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // Fails twice, then takes it.
    let everything = endpoint(vec![500, 503]).await;
    let only_b = endpoint(vec![]).await;
    let (all_url, b_url) = (everything.url.clone(), only_b.url.clone());
    let h = harness(dir.path(), move |c| {
        let hooks = c.webhooks.as_mut().expect("on");
        hooks.subscribers = vec![
            subscriber("everything", &all_url, "EXAGATE_TEST_SIGNING_1", None),
            subscriber("only-b", &b_url, "EXAGATE_TEST_SIGNING_2", Some(vec![b])),
        ];
    })
    .await;
    let id = h
        .sim
        .add_job(Some(a), Some("processing"), time::OffsetDateTime::now_utc());
    assert_eq!(state(&h.get_in(a, &job_path(id)).await), "processing");
    h.sim.set_state(id, Some("completed"));
    let body = upstream_body(&h, id, Some(a)).await;
    deliver(&h, SECRET, body.clone()).await;
    deliver(&h, SECRET, body).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            everything.received.lock().expect("log").len() >= 3
        })
        .await,
        "retried until taken"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = everything.received.lock().expect("log").clone();
    assert_eq!(
        got.len(),
        3,
        "two failures and one success, for two deliveries of one event"
    );
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one event id on every attempt"
    );
    let event = verify(&got[2]);
    assert_eq!(event["type"], "extract.job.completed");
    assert_eq!(event["data"]["id"], id.to_string());
    assert_eq!(event["data"]["baseId"], a.to_string());
    assert!(
        only_b.received.lock().expect("log").is_empty(),
        "a job of base A never reaches a subscriber of B"
    );

    // The admin listener shows it delivered, after two attempts that failed.
    let list = h.admin_get("/webhooks/deliveries?status=delivered").await;
    let items = list.json()["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert_eq!(items[0]["attempts"], 3);
    assert_eq!(
        h.metric("exagate_webhook_relayed_total{subscriber=\"everything\",outcome=\"delivered\"}")
            .await,
        1.0
    );
    // The app fetches the job through the gateway: a hit.
    assert_eq!(h.get_in(a, &job_path(id)).await.cache(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_subscriber_until_an_operator_enables_it_and_retries() {
    let dir = common::tempdir();
    let gone = endpoint(vec![410]).await;
    let url = gone.url.clone();
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_WH", "admin-token-wh");
    let h = harness(dir.path(), move |c| {
        c.admin.token_env = "EXAGATE_TEST_ADMIN_TOKEN_WH".into();
        c.webhooks.as_mut().expect("on").subscribers =
            vec![subscriber("gone", &url, "EXAGATE_TEST_SIGNING_3", None)];
    })
    .await;
    let id = h
        .sim
        .add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    // A failure learned by a lookup is an event too.
    assert_eq!(state(&h.get(&job_path(id)).await), "failed");
    assert!(
        eventually(Duration::from_secs(5), async || {
            h.admin_get("/webhooks/subscribers").await.json()["items"][0]["state"] == "disabled"
        })
        .await
    );
    let failed = h
        .admin_get("/webhooks/deliveries?status=failed")
        .await
        .json();
    let delivery = failed["items"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(failed["items"][0]["kind"], "extract.job.failed");
    let auth = [("authorization", "Bearer admin-token-wh")];
    let refused = h
        .admin_send(Method::POST, "/webhooks/subscribers/gone/enable", &[])
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let enabled = h
        .admin_send(Method::POST, "/webhooks/subscribers/gone/enable", &auth)
        .await;
    assert_eq!(enabled.status, StatusCode::OK);
    let retried = h
        .admin_send(
            Method::POST,
            &format!("/webhooks/deliveries/{delivery}/retry"),
            &auth,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), async || {
            gone.received.lock().expect("log").len() == 2
        })
        .await
    );
    let last = gone.received.lock().expect("log")[1].clone();
    assert_eq!(verify(&last)["type"], "extract.job.failed");
    assert!(
        eventually(Duration::from_secs(2), async || {
            h.admin_get("/webhooks/deliveries?status=delivered")
                .await
                .json()["items"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        })
        .await
    );
}

/// Runs the `exagate` binary with `config` (written to `dir`), its output to files there.
fn spawn_gateway(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> common::KillOnDrop {
    use std::process::{Command, Stdio};
    let path = dir.join("config.toml");
    std::fs::write(&path, config).expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_exagate"));
    command
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stdout.log"))
                .expect("log"),
        )
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stderr.log"))
                .expect("log"),
        );
    for (name, value) in env {
        command.env(name, value);
    }
    common::KillOnDrop(command.spawn().expect("spawn"))
}

/// Runs `exagate webhooks ACTION --config dir/config.toml`: (success, stdout + stderr).
fn webhooks_command(dir: &std::path::Path, action: &str, env: &[(&str, &str)]) -> (bool, String) {
    common::run_exagate(&["webhooks", action], &dir.join("config.toml"), env)
}

/// The whole loop, as ops run it: `webhooks register` points the (simulated) account at
/// the gateway; an app creates a job through it and long-polls; the simulator's webhook
/// answers the long-poll the moment the job completes, with no upstream poll at all; the
/// secret is in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_a_long_poll_returns_when_the_apis_webhook_arrives() {
    let sim = common::start_sim(false).await;
    let dir = common::tempdir();
    let key_file = key_file(dir.path());
    let (port, admin) = (common::free_port(), common::free_port());
    let config = format!(
        "{}[log]\nlevel = \"debug\"\n\
         [webhooks]\nsecret_env = \"EXAGATE_TEST_WEBHOOK_SECRET\"\npublic_url = \"http://127.0.0.1:{port}\"\n",
        binary_config(port, Some(admin), &sim, &key_file)
    );
    std::fs::write(dir.path().join("config.toml"), &config).expect("config");
    let env = [("EXAGATE_TEST_WEBHOOK_SECRET", SECRET)];
    let (ok, said) = webhooks_command(dir.path(), "status", &env);
    assert!(!ok, "not registered yet: {said}");
    assert!(said.contains("nothing (no webhook set)"), "{said}");
    let (ok, said) = webhooks_command(dir.path(), "register", &env);
    assert!(ok, "{said}");
    assert!(said.contains("/webhooks/exabase/[redacted]"), "{said}");
    let (ok, status) = webhooks_command(dir.path(), "status", &env);
    assert!(ok, "{status}");
    for text in [&said, &status] {
        assert!(!text.contains(SECRET), "the secret is printed: {text}");
    }
    // The account now holds the receiver's URL, secret included.
    let settings = common::send(
        &common::client(),
        Method::GET,
        &format!("{}/v2/extract-settings", sim.url()),
        &[("x-api-key", KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        settings.json()["webhookUrl"],
        format!("http://127.0.0.1:{port}/webhooks/exabase/{SECRET}")
    );

    let _gateway = spawn_gateway(dir.path(), &config, &env);
    common::wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = common::client();
    let created = common::send(
        &client,
        Method::POST,
        &format!("{base}/v2/extract"),
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"url":"https://example.com/doc.pdf","name":"doc"}"#),
    )
    .await;
    assert!(created.status.is_success());
    let id: Uuid = created.json()["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let started = Instant::now();
    let mut polls = 0;
    let reply = loop {
        // An app's long-poll loop: each answer either is the change or the wait's end.
        let reply = common::send(
            &client,
            Method::GET,
            &format!("{base}{}?wait=5s", job_path(id)),
            &[],
            Bytes::new(),
        )
        .await;
        polls += 1;
        if state(&reply) == "completed" || polls > 5 {
            break reply;
        }
    };
    assert_eq!(state(&reply), "completed", "after {polls} long-polls");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The job's create and completion came by the gateway's own answers and the
    // webhook: the gateway never polled the upstream for it.
    assert_eq!(sim.calls_to(&job_path(id)), 0, "no upstream poll");
    // The delivery is acknowledged, and its access-log line written, when its answer
    // is done, which may be after the long-poll it woke has returned: wait for both
    // before the kill, which would lose the line.
    let logs = || {
        format!(
            "{}{}",
            std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(sim.webhooks_acked() >= 1 && logs().contains("/webhooks/exabase/[redacted]"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sim.webhooks_acked() >= 1, "the webhook was acknowledged");
    drop(_gateway);
    for log in ["stdout.log", "stderr.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        assert!(!text.contains(SECRET), "{log} holds the secret");
        assert!(!text.contains(KEY), "{log} holds the API key");
    }
    assert!(
        logs().contains("/webhooks/exabase/[redacted]"),
        "the access log shows the delivery, redacted"
    );
}

/// A delivery accepted before a `kill -9` is delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_kill_9() {
    let sim = common::start_sim(false).await;
    let dir = common::tempdir();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let key_file = key_file(dir.path());
    let (port, admin, hook_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = format!(
        "{}[state]\ndir = \"{}\"\n\
         [webhooks]\nsecret_env = \"EXAGATE_TEST_WEBHOOK_SECRET\"\npublic_url = \"http://127.0.0.1:{port}\"\nretry_schedule = [\"300ms\"]\n{}",
        binary_config(port, Some(admin), &sim, &key_file),
        state_dir.display(),
        app_subscriber(hook_port)
    );
    let env = [
        ("EXAGATE_TEST_WEBHOOK_SECRET", SECRET),
        ("EXAGATE_TEST_SIGNING", SIGNING),
    ];
    let mut first = spawn_gateway(dir.path(), &config, &env);
    common::wait_listening(port).await;
    let id = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let reply = common::send(
        &common::client(),
        Method::GET,
        &format!("http://127.0.0.1:{port}{}", job_path(id)),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(state(&reply), "failed");
    // The subscriber is down: the delivery waits, attempted and pending.
    let pending = format!("http://127.0.0.1:{admin}/webhooks/deliveries?status=pending");
    assert!(
        eventually(Duration::from_secs(5), async || {
            let list =
                common::send(&common::client(), Method::GET, &pending, &[], Bytes::new()).await;
            list.json()["items"][0]["attempts"].as_u64().unwrap_or(0) >= 1
        })
        .await
    );
    // Two jobs polled while in progress; the API's webhook for the first is
    // acknowledged, and the gateway is killed the moment it is.
    let get = |path: String| async move {
        common::send(
            &common::client(),
            Method::GET,
            &format!("http://127.0.0.1:{port}{path}"),
            &[],
            Bytes::new(),
        )
        .await
    };
    let (done, later) = (
        sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc()),
        sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc()),
    );
    for job in [done, later] {
        assert_eq!(state(&get(job_path(job)).await), "processing");
    }
    let body_of = |job: Uuid| {
        let sim = sim.clone();
        async move {
            sim.set_state(job, Some("completed"));
            common::send(
                &common::client(),
                Method::GET,
                &format!("{}{}", sim.url(), job_path(job)),
                &[("x-api-key", KEY)],
                Bytes::new(),
            )
            .await
            .body
        }
    };
    let receiver = format!("http://127.0.0.1:{port}/webhooks/exabase/{SECRET}");
    let body = body_of(done).await;
    let ack = common::send(&common::client(), Method::POST, &receiver, &[], body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    first.kill().expect("kill -9");
    let _ = first.wait();
    let endpoint = endpoint_on(hook_port, vec![]).await;
    let _second = spawn_gateway(dir.path(), &config, &env);
    common::wait_listening(port).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            endpoint.received.lock().expect("log").len() >= 2
        })
        .await,
        "both delivered after the restart"
    );
    let kinds: Vec<(String, String)> = endpoint
        .received
        .lock()
        .expect("log")
        .iter()
        .map(|r| {
            let event = verify(r);
            (
                event["type"].as_str().unwrap_or("").to_owned(),
                event["data"]["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("extract.job.failed".into(), id.to_string())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("extract.job.completed".into(), done.to_string())),
        "{kinds:?}"
    );
    // No upstream call was needed for them after the restart.
    assert_eq!(sim.calls_to(&job_path(id)), 1);
    // The restarted gateway still knows the scope of the job it saw before the kill:
    // its webhook primes it.
    let body = body_of(later).await;
    let calls = sim.calls_to(&job_path(later));
    let ack = common::send(&common::client(), Method::POST, &receiver, &[], body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    assert_eq!(state(&get(job_path(later)).await), "completed");
    assert_eq!(sim.calls_to(&job_path(later)), calls, "primed, not fetched");
}

/// In-progress answers not kept (`in_progress_ttl = "0s"`): waiters still refresh the
/// job together, once a second, not each on its own and never as fast as they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_an_unkept_job_refresh_it_once_a_second_together() {
    let h = Arc::new(Harness::with(|c| c.cache.in_progress_ttl = Duration::ZERO).await);
    let id = h
        .sim
        .add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let started = Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                // Begun at different moments, as apps' polls are.
                tokio::time::sleep(Duration::from_millis(37 * i)).await;
                h.get(&format!("{}?wait=3s", job_path(id))).await
            })
        })
        .collect();
    for waiter in waiters {
        assert_eq!(state(&waiter.await.expect("waiter")), "processing");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = h.sim.calls_to(&job_path(id));
    // The first look of each waiter may miss (20 at most, begun apart), then one a tick.
    assert!(
        calls as f64 <= 20.0 + elapsed.ceil() + 1.0,
        "{calls} upstream calls in {elapsed:.1} s for 20 waiters"
    );
    assert!(calls <= 30, "{calls}");
}

/// What `run` would refuse at start, `check` refuses: a short receiver secret, an unset
/// or short signing key; and it names no secret in its output.
#[test]
fn check_refuses_webhook_secrets_the_gateway_would_refuse() {
    let dir = common::tempdir();
    let key_file = key_file(dir.path());
    let base = format!(
        "[upstream]\napi_key_file = \"{}\"\n[webhooks]\nsecret_env = \"EXAGATE_TEST_CHECK_SECRET\"\npublic_url = \"http://127.0.0.1:1\"\n\
         [[webhooks.subscribers]]\nname = \"app\"\nurl = \"http://user:pw-secret-9@127.0.0.1:9/hooks?token=qs-secret-9\"\nsecret_env = \"EXAGATE_TEST_CHECK_SIGNING\"\n",
        key_file.display()
    );
    std::fs::write(dir.path().join("config.toml"), &base).expect("config");
    // The variables are only ever given to the command, never set in this process.
    let check = |env: &[(&str, &str)]| {
        common::run_exagate(&["check"], &dir.path().join("config.toml"), env)
    };
    let short = "short-secret";
    for (env, why) in [
        (
            vec![
                ("EXAGATE_TEST_CHECK_SECRET", short),
                ("EXAGATE_TEST_CHECK_SIGNING", SIGNING),
            ],
            "shorter than",
        ),
        (
            vec![("EXAGATE_TEST_CHECK_SECRET", SECRET)],
            "EXAGATE_TEST_CHECK_SIGNING",
        ),
        (
            vec![
                ("EXAGATE_TEST_CHECK_SECRET", SECRET),
                ("EXAGATE_TEST_CHECK_SIGNING", "whsec_c2hvcnQ="),
            ],
            "bytes",
        ),
    ] {
        let (ok, said) = check(&env);
        assert!(!ok, "{said}");
        assert!(said.contains(why), "{said}");
        assert!(
            !said.contains(short) && !said.contains(SECRET) && !said.contains("c2hvcnQ"),
            "{said}"
        );
    }
    let (ok, said) = check(&[
        ("EXAGATE_TEST_CHECK_SECRET", SECRET),
        ("EXAGATE_TEST_CHECK_SIGNING", SIGNING),
    ]);
    assert!(ok, "{said}");
    for secret in [SECRET, SIGNING, "pw-secret-9", "qs-secret-9"] {
        assert!(!said.contains(secret), "check printed {secret}: {said}");
    }
}

/// A new receiver secret in `secret_file` is picked up by the file watcher, as the key
/// file is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secret_in_the_secret_file_is_picked_up_without_a_signal() {
    let sim = common::start_sim(false).await;
    let dir = common::tempdir();
    let key_file = key_file(dir.path());
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, SECRET).expect("secret");
    let port = common::free_port();
    let config = format!(
        "{}[webhooks]\nsecret_file = \"{}\"\npublic_url = \"http://127.0.0.1:{port}\"\n",
        binary_config(port, None, &sim, &key_file),
        secret_file.display()
    );
    let _gateway = spawn_gateway(dir.path(), &config, &[]);
    common::wait_listening(port).await;
    let id = sim.add_completed(None);
    let body = upstream_body_of(&sim, id).await;
    let post = |secret: &'static str, body: Bytes| async move {
        common::send(
            &common::client(),
            Method::POST,
            &format!("http://127.0.0.1:{port}/webhooks/exabase/{secret}"),
            &[],
            body,
        )
        .await
        .status
    };
    const ROTATED: &str = "whk-rotated-secret-0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    assert_eq!(post(SECRET, body.clone()).await, StatusCode::ACCEPTED);
    std::fs::write(&secret_file, format!("{ROTATED}\n")).expect("rotate");
    assert!(
        eventually(Duration::from_secs(8), async || {
            post(ROTATED, body.clone()).await == StatusCode::ACCEPTED
        })
        .await,
        "the new secret is taken"
    );
    assert_eq!(
        post(SECRET, body).await,
        StatusCode::NOT_FOUND,
        "the old one is not"
    );
}

/// Two replicas sharing `redis` with webhooks on (their state in `dir`), and a job in
/// progress that the first has looked up: it knows the job's scope, the second does not.
async fn replicas_with_a_job_in_progress(
    sim: &exagate::sim::Simulator,
    redis: &common::redis::RedisServer,
    dir: &std::path::Path,
) -> (Vec<exagate::RunningGateway>, Uuid) {
    let hooks = hooks(dir);
    let gws = common::redis::replicas(sim, redis, 2, |c| c.webhooks = Some(hooks.clone())).await;
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    assert_eq!(
        state(&common::get_from(&gws[0], &job_path(id)).await),
        "processing"
    );
    (gws, id)
}

async fn upstream_body_of(sim: &exagate::sim::Simulator, id: Uuid) -> Bytes {
    common::send(
        &common::client(),
        Method::GET,
        &format!("{}{}", sim.url(), job_path(id)),
        &[("x-api-key", KEY)],
        Bytes::new(),
    )
    .await
    .body
}

/// Two replicas sharing a real Redis: a job seen only by one is primed by a delivery
/// that reaches the other (scopes, the answer and the news go through Redis), with no
/// upstream call; events learned by both replicas reach a subscriber once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_a_delivery_to_one_replica_primes_the_others_and_subscribers_hear_once() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let dir = common::tempdir();
    let app = endpoint(vec![]).await;
    let url = app.url.clone();
    std::env::set_var("EXAGATE_TEST_SIGNING_S", SIGNING);
    let hooks = hooks(dir.path());
    let gws = common::redis::replicas(&sim, &redis, 2, |c| {
        let mut hooks = hooks.clone();
        hooks.subscribers = vec![subscriber("app", &url, "EXAGATE_TEST_SIGNING_S", None)];
        c.webhooks = Some(hooks);
    })
    .await;
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let path = job_path(id);
    assert_eq!(state(&common::get_from(&gws[0], &path).await), "processing");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Replica 1 has it too (from Redis), then the API completes it and its webhook
    // reaches replica 1 only.
    assert_eq!(state(&common::get_from(&gws[1], &path).await), "processing");
    let in_progress = upstream_body_of(&sim, id).await;
    // A long-poll held by replica 0; the delivery goes to replica 1.
    let waiter = {
        let url = format!("{}{path}?wait=10s", gws[0].url());
        tokio::spawn(async move {
            let reply = common::send(&common::client(), Method::GET, &url, &[], Bytes::new()).await;
            (reply, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_state(id, Some("completed"));
    let body = upstream_body_of(&sim, id).await;
    let calls = sim.calls_to(&path);
    let acked_at = Instant::now();
    let ack = deliver_to(&gws[1], body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    let (reply, answered) = waiter.await.expect("waiter");
    assert_eq!(state(&reply), "completed");
    let delay = answered.saturating_duration_since(acked_at);
    assert!(
        delay < Duration::from_secs(1),
        "the other replica's long-poll answered after {delay:?}"
    );
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(3), async || {
                state(&common::get_from(gw, &path).await) == "completed"
            })
            .await,
            "every replica sees the completion"
        );
    }
    // An older delivery (in progress) reaching a replica that holds nothing of the job
    // itself is still stale: the shared tier holds it completed.
    let third = common::redis::replicas(&sim, &redis, 1, |c| {
        c.webhooks = Some(hooks.clone());
    })
    .await;
    let ack = deliver_to(&third[0], in_progress).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gw in gws.iter().chain(third.iter()) {
        assert_eq!(
            state(&common::get_from(gw, &path).await),
            "completed",
            "never back to in progress"
        );
    }
    assert_eq!(
        sim.calls_to(&path),
        calls,
        "no upstream call on either replica"
    );
    // Both replicas learn of a failure by a lookup: the subscriber hears it once.
    let failed = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    for gw in &gws {
        common::get_from(gw, &job_path(failed)).await;
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            app.received.lock().expect("log").len() >= 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = app.received.lock().expect("log").clone();
    let kinds: Vec<String> = got
        .iter()
        .map(|r| verify(r)["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        kinds.len(),
        2,
        "one delivery per event, not per replica: {kinds:?}"
    );
    assert!(kinds.contains(&"extract.job.completed".to_owned()));
    assert!(kinds.contains(&"extract.job.failed".to_owned()));
}

/// With `[shared]`, a delivery waiting in Redis is relayed by another replica after the
/// one that queued it is gone (no state directory anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_pending_deliveries_live_in_redis() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let dir = common::tempdir();
    let hook_port = common::free_port();
    let url = format!("http://127.0.0.1:{hook_port}/hooks");
    std::env::set_var("EXAGATE_TEST_SIGNING_R", SIGNING);
    let hooks = hooks(dir.path());
    let adjust = |c: &mut exagate::Config| {
        let mut hooks = hooks.clone();
        hooks.subscribers = vec![subscriber("app", &url, "EXAGATE_TEST_SIGNING_R", None)];
        c.webhooks = Some(hooks);
    };
    let first = common::redis::replicas(&sim, &redis, 1, adjust).await;
    let id = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    assert_eq!(
        state(&common::get_from(&first[0], &job_path(id)).await),
        "failed"
    );
    let relay = std::sync::Arc::clone(&first[0].gateway.webhooks.relay);
    assert!(
        eventually(Duration::from_secs(5), async || {
            relay
                .list(Some(exagate::webhooks::outbox::Status::Pending), None)
                .await
                .first()
                .is_some_and(|d| d.attempts >= 1)
        })
        .await,
        "attempted while the subscriber is down"
    );
    assert!(
        relay.outbox.list(None, None).is_empty(),
        "queued in Redis, not here"
    );
    drop(relay);
    for gw in first {
        gw.shutdown().await;
    }
    let app = endpoint_on(hook_port, vec![]).await;
    // The claim of the replica that left ends after its lease: then another takes it.
    let _second = common::redis::replicas(&sim, &redis, 1, adjust).await;
    assert!(
        eventually(Duration::from_secs(40), async || {
            !app.received.lock().expect("log").is_empty()
        })
        .await,
        "relayed by the other replica"
    );
    let event = verify(&app.received.lock().expect("log")[0]);
    assert_eq!(event["data"]["id"], id.to_string());
}

/// A subscriber that never answers holds up neither another subscriber nor the gateway;
/// one that answers `503` with `Retry-After` is not tried again before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_subscriber_slows_no_other_and_retry_after_is_honoured() {
    let dir = common::tempdir();
    // Accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("http://{}/hooks", hung.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            open.push(stream);
        }
    });
    let healthy = endpoint(vec![]).await;
    let throttled = endpoint_throttling(3).await;
    let (healthy_url, throttled_url) = (healthy.url.clone(), throttled.url.clone());
    let h = harness(dir.path(), move |c| {
        c.webhooks.as_mut().expect("on").subscribers = vec![
            subscriber("hung", &hung_url, "EXAGATE_TEST_SIGNING_H1", None),
            subscriber("healthy", &healthy_url, "EXAGATE_TEST_SIGNING_H2", None),
            subscriber("throttled", &throttled_url, "EXAGATE_TEST_SIGNING_H3", None),
        ];
    })
    .await;
    // Ten failed jobs: ten events for each subscriber.
    let ids: Vec<Uuid> = (0..10)
        .map(|_| {
            h.sim
                .add_job(None, Some("failed"), time::OffsetDateTime::now_utc())
        })
        .collect();
    let started = Instant::now();
    for id in &ids {
        assert_eq!(state(&h.get(&job_path(*id)).await), "failed");
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            healthy.received.lock().expect("log").len() == 10
        })
        .await,
        "the healthy subscriber gets every event while the hung one holds its attempts"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway answers as ever.
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    // The throttled one answered 503 + Retry-After: 3 to the first attempt of each: no
    // second attempt came before 3 s (the schedule alone says 200 ms).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let early: Vec<_> = throttled.received.lock().expect("log").clone();
    let firsts = early.len();
    assert!(firsts >= 1, "first attempts arrive");
    let ids_seen: std::collections::HashSet<_> = early
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(
        ids_seen.len(),
        firsts,
        "no event tried twice within its Retry-After"
    );
    assert!(
        eventually(Duration::from_secs(8), async || {
            throttled.received.lock().expect("log").len() > firsts
        })
        .await,
        "tried again after the Retry-After"
    );
    held.abort();
}

/// A subscriber that answers every first attempt of an event `503` with `Retry-After:
/// secs`, and takes it after.
async fn endpoint_throttling(secs: u64) -> Endpoint {
    serve_endpoint(0, move |before, this| {
        let id = this.headers.get("webhook-id");
        if before.iter().any(|r| r.headers.get("webhook-id") == id) {
            (StatusCode::OK, None)
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, Some(secs))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_is_cut_at_server_max_wait() {
    let h = Harness::with(|c| c.server.max_wait = Duration::from_secs(1)).await;
    let id = h
        .sim
        .add_job(None, Some("pending"), time::OffsetDateTime::now_utc());
    let started = Instant::now();
    let reply = h.get(&format!("{}?wait=10m", job_path(id))).await;
    let waited = started.elapsed();
    assert_eq!(state(&reply), "pending");
    // Within the cap, less its jitter (at most a sixteenth).
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// A restarted gateway (`state.dir`) still knows the scopes of the jobs it had cached:
/// a delivery after the restart primes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_deliveries_prime_the_jobs_it_had_seen() {
    let dir = common::tempdir();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("dir");
    let sim = common::start_sim(false).await;
    let mut config = common::test_config();
    config.webhooks = Some(hooks(dir.path()));
    config.state.dir = Some(state_dir.clone());
    // The same address both times: the snapshot is of links to it.
    let port = common::free_port();
    config.server.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    config.server.public_url = format!("http://127.0.0.1:{port}");
    config.upstream.url = sim.url();
    let start = |config: exagate::Config| async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .expect("bind");
        let key = exagate::secret::ApiKey::from_secret(
            KEY,
            exagate::secret::KeySource::Env("TEST".into()),
        )
        .expect("key");
        exagate::start(exagate::Launch::in_memory(config, key, listener)).expect("starts")
    };
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let first = start(config.clone()).await;
    assert_eq!(
        state(&common::get_from(&first, &job_path(id)).await),
        "processing"
    );
    first.shutdown().await;
    let second = start(config).await;
    sim.set_state(id, Some("completed"));
    let body = common::send(
        &common::client(),
        Method::GET,
        &format!("{}{}", sim.url(), job_path(id)),
        &[("x-api-key", KEY)],
        Bytes::new(),
    )
    .await
    .body;
    let calls = sim.calls_to(&job_path(id));
    let ack = deliver_to(&second, body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(2), async || {
            state(&common::get_from(&second, &job_path(id)).await) == "completed"
        })
        .await
    );
    assert_eq!(sim.calls_to(&job_path(id)), calls, "primed, not fetched");
}

/// With `[shared]`, a delivery reaching a replica that never saw the job while Redis
/// (which may know who did) is away is refused for the API to send again, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_a_delivery_that_cannot_be_placed_is_refused_for_a_retry() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let dir = common::tempdir();
    let (gws, id) = replicas_with_a_job_in_progress(&sim, &redis, dir.path()).await;
    sim.set_state(id, Some("completed"));
    let body = upstream_body_of(&sim, id).await;
    redis.freeze();
    common::redis::wait_shared(&gws[1], false).await;
    let refused = deliver_to(&gws[1], body.clone()).await;
    redis.thaw();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "temporarily_unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    // Sent again once Redis is back: primed everywhere.
    common::redis::wait_shared(&gws[1], true).await;
    let ack = deliver_to(&gws[1], body).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(3), async || {
            state(&common::get_from(&gws[0], &job_path(id)).await) == "completed"
        })
        .await
    );
}

/// A completion that cannot be stored (no `createdAt`) drops what was cached, so the
/// next poll asks the upstream rather than show the old state, and wakes long-polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_cannot_be_stored_drops_the_old_state() {
    let dir = common::tempdir();
    let h = Arc::new(harness(dir.path(), |_| {}).await);
    let id = h
        .sim
        .add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    assert_eq!(state(&h.get(&job_path(id)).await), "processing");
    let waiter = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.get(&format!("{}?wait=20s", job_path(id))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.sim.set_state(id, Some("completed"));
    let body = upstream_body(&h, id, None).await;
    let mut job: serde_json::Value = serde_json::from_slice(&body).expect("job");
    job.as_object_mut().expect("object").remove("createdAt");
    let started = Instant::now();
    let ack = deliver(&h, SECRET, Bytes::from(job.to_string())).await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    let reply = waiter.await.expect("waiter");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the long-poll was woken"
    );
    assert_eq!(state(&reply), "completed", "from the upstream, asked again");
    assert_eq!(
        h.metric("exagate_webhook_deliveries_received_total{cause=\"not_stored\"}")
            .await,
        1.0
    );
}

/// An operator's retry of a delivered delivery is refused unless it asks to replay:
/// retries sent twice do not send it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_delivery_is_resent_only_on_replay() {
    let dir = common::tempdir();
    let app = endpoint(vec![]).await;
    let url = app.url.clone();
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_RP", "admin-token-rp");
    let h = harness(dir.path(), move |c| {
        c.admin.token_env = "EXAGATE_TEST_ADMIN_TOKEN_RP".into();
        c.webhooks.as_mut().expect("on").subscribers =
            vec![subscriber("app", &url, "EXAGATE_TEST_SIGNING_RP", None)];
    })
    .await;
    // Created a thousand years from now: the relay still gives up within a job's life.
    let far = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    let id = h.sim.add_job(None, Some("failed"), far);
    assert_eq!(state(&h.get(&job_path(id)).await), "failed");
    assert!(
        eventually(Duration::from_secs(5), async || app
            .received
            .lock()
            .expect("log")
            .len()
            == 1)
        .await
    );
    let listed = h
        .admin_get("/webhooks/deliveries?status=delivered")
        .await
        .json();
    let delivery = listed["items"][0]["id"].as_str().expect("id").to_owned();
    let give_up = listed["items"][0]["give_up_at_ms"]
        .as_u64()
        .expect("give up");
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).expect("now") * 1000;
    assert!(
        give_up <= now + 26 * 3_600_000,
        "gives up within a day or so, not in the year 10000"
    );
    let auth = [("authorization", "Bearer admin-token-rp")];
    let retry = format!("/webhooks/deliveries/{delivery}/retry");
    for _ in 0..3 {
        let again = h.admin_send(Method::POST, &retry, &auth).await;
        assert_eq!(
            (again.status, again.error_code().as_str()),
            (StatusCode::CONFLICT, "already_delivered")
        );
    }
    let replay = h
        .admin_send(Method::POST, &format!("{retry}?replay=1"), &auth)
        .await;
    assert_eq!(replay.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), async || app
            .received
            .lock()
            .expect("log")
            .len()
            == 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.received.lock().expect("log").len(),
        2,
        "once per replay"
    );
}

/// A subscriber removed by a reload: its pending deliveries are given up, not left
/// pending forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_a_removed_subscriber_are_given_up() {
    let sim = common::start_sim(false).await;
    let dir = common::tempdir();
    let key_file = key_file(dir.path());
    let (port, admin, hook_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let head = format!(
        "{}[webhooks]\nsecret_env = \"EXAGATE_TEST_WEBHOOK_SECRET\"\npublic_url = \"http://127.0.0.1:{port}\"\nretry_schedule = [\"300ms\"]\n",
        binary_config(port, Some(admin), &sim, &key_file)
    );
    let with_app = format!("{head}{}", app_subscriber(hook_port));
    let env = [
        ("EXAGATE_TEST_WEBHOOK_SECRET", SECRET),
        ("EXAGATE_TEST_SIGNING", SIGNING),
    ];
    let _gateway = spawn_gateway(dir.path(), &with_app, &env);
    common::wait_listening(port).await;
    let id = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    common::send(
        &common::client(),
        Method::GET,
        &format!("http://127.0.0.1:{port}{}", job_path(id)),
        &[],
        Bytes::new(),
    )
    .await;
    let list = |status: &'static str| async move {
        common::send(
            &common::client(),
            Method::GET,
            &format!("http://127.0.0.1:{admin}/webhooks/deliveries?status={status}"),
            &[],
            Bytes::new(),
        )
        .await
        .json()
    };
    assert!(
        eventually(Duration::from_secs(5), async || list("pending").await
            ["items"][0]["attempts"]
            .as_u64()
            .unwrap_or(0)
            >= 1)
        .await
    );
    // The subscriber is removed (the file watcher reloads it).
    std::fs::write(dir.path().join("config.toml"), &head).expect("config");
    assert!(
        eventually(Duration::from_secs(15), async || {
            list("failed").await["items"][0]["last_outcome"] == "subscriber_removed"
        })
        .await,
        "given up after the reload"
    );
    assert_eq!(
        list("pending").await["items"].as_array().map(Vec::len),
        Some(0)
    );
}

/// A URL with user info (a password before `@`) is refused wherever it would be shown
/// or put in links: `webhooks.public_url`, `server.public_url`, `upstream.url`; the
/// refusal does not quote it.
#[test]
fn urls_with_user_info_are_refused_without_being_quoted() {
    let dir = common::tempdir();
    let key_file = key_file(dir.path());
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("secret");
    for (key, config) in [
        (
            "webhooks.public_url",
            format!(
                "[upstream]\napi_key_file = \"{}\"\n[webhooks]\nsecret_file = \"{}\"\npublic_url = \"http://wu:PW-secret-1@127.0.0.1:1\"\n",
                key_file.display(),
                secret_file.display()
            ),
        ),
        (
            "server.public_url",
            format!(
                "[server]\npublic_url = \"http://su:PW-secret-1@127.0.0.1:8080\"\n[upstream]\napi_key_file = \"{}\"\n",
                key_file.display()
            ),
        ),
        (
            "upstream.url",
            format!(
                "[upstream]\nurl = \"https://uu:PW-secret-1@api.exabase.io\"\napi_key_file = \"{}\"\n",
                key_file.display()
            ),
        ),
    ] {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("config");
        let (ok, said) = common::run_exagate(&["check"], &path, &[]);
        assert!(!ok, "{key}: {said}");
        assert!(said.contains(key) && said.contains("user info"), "{key}: {said}");
        assert!(!said.contains("PW-secret-1"), "{key}: {said}");
    }
}

/// With `[shared]`: a completion primed on one replica while Redis is away reaches the
/// others when Redis is back (the older state they and Redis hold is dropped then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_a_completion_primed_during_an_outage_reaches_the_others_after_it() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let dir = common::tempdir();
    let (gws, id) = replicas_with_a_job_in_progress(&sim, &redis, dir.path()).await;
    let path = job_path(id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&common::get_from(&gws[1], &path).await), "processing");
    redis.freeze();
    common::redis::wait_shared(&gws[0], false).await;
    sim.set_state(id, Some("completed"));
    let body = upstream_body_of(&sim, id).await;
    let ack = deliver_to(&gws[0], body).await;
    assert_eq!(
        ack.status,
        StatusCode::ACCEPTED,
        "it knows the job: primed here"
    );
    assert_eq!(state(&common::get_from(&gws[0], &path).await), "completed");
    redis.thaw();
    common::redis::wait_shared(&gws[0], true).await;
    common::redis::wait_shared(&gws[1], true).await;
    assert!(
        eventually(Duration::from_secs(3), async || {
            state(&common::get_from(&gws[1], &path).await) == "completed"
        })
        .await,
        "the other replica drops its older state once Redis is back"
    );
}

/// With `[shared]`, a replica whose config lacks a subscriber (a rolling deploy) leaves
/// the deliveries the others queued for it in Redis alone; and retries sent at once for
/// a pending delivery send it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_other_replicas_subscribers_and_concurrent_retries_are_respected() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let dir = common::tempdir();
    // The first attempt is told to come back in an hour; every later one is taken.
    let app = serve_endpoint(0, |before, _| {
        if before.is_empty() {
            (StatusCode::SERVICE_UNAVAILABLE, Some(3600))
        } else {
            (StatusCode::OK, None)
        }
    })
    .await;
    std::env::set_var("EXAGATE_TEST_SIGNING_RD", SIGNING);
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_RD", "admin-token-rd");
    let url = app.url.clone();
    let hooks = hooks(dir.path());
    let with_app = {
        let hooks = hooks.clone();
        move |c: &mut exagate::Config| {
            let mut hooks = hooks.clone();
            hooks.subscribers = vec![subscriber("app", &url, "EXAGATE_TEST_SIGNING_RD", None)];
            c.webhooks = Some(hooks);
            c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
            c.admin.token_env = "EXAGATE_TEST_ADMIN_TOKEN_RD".into();
        }
    };
    let with = common::redis::replicas(&sim, &redis, 1, with_app).await;
    // A replica of the next deploy, without that subscriber.
    let without =
        common::redis::replicas(&sim, &redis, 1, |c| c.webhooks = Some(hooks.clone())).await;
    let id = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    assert_eq!(
        state(&common::get_from(&with[0], &job_path(id)).await),
        "failed"
    );
    let relay = std::sync::Arc::clone(&with[0].gateway.webhooks.relay);
    assert!(
        eventually(Duration::from_secs(5), async || !app
            .received
            .lock()
            .expect("log")
            .is_empty())
        .await
    );
    // Past two orphan sweeps (every 5 s) of the replica without the subscriber.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let pending = relay
        .list(Some(exagate::webhooks::outbox::Status::Pending), None)
        .await;
    assert_eq!(pending.len(), 1, "still pending: {pending:?}");
    drop(without);
    // Twenty retries at once: one more delivery.
    let admin = with[0].admin_url().expect("admin");
    let retry = format!("{admin}/webhooks/deliveries/{}/retry", pending[0].id);
    let retries: Vec<_> = (0..20)
        .map(|_| {
            let retry = retry.clone();
            tokio::spawn(async move {
                common::send(
                    &common::client(),
                    Method::POST,
                    &retry,
                    &[("authorization", "Bearer admin-token-rd")],
                    Bytes::new(),
                )
                .await
                .status
            })
        })
        .collect();
    for r in retries {
        let status = r.await.expect("retry");
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), async || app
            .received
            .lock()
            .expect("log")
            .len()
            >= 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.received.lock().expect("log").len(),
        2,
        "sent once for twenty retries"
    );
}

/// The API key in a file under `dir`, for a binary's config.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("key");
    std::fs::write(&path, format!("{KEY}\n")).expect("key");
    path
}

/// POSTs a delivery to `gw`'s receiver, as the API does.
async fn deliver_to(gw: &exagate::RunningGateway, body: Bytes) -> Reply {
    common::send(
        &common::client(),
        Method::POST,
        &format!("{}/webhooks/exabase/{SECRET}", gw.url()),
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// The `[server]`, `[upstream]` and `[admin]` of a binary's config: listening on `port`,
/// in front of `sim` with the key in `key_file`, the admin listener on `admin` (or off).
fn binary_config(
    port: u16,
    admin: Option<u16>,
    sim: &exagate::sim::Simulator,
    key_file: &std::path::Path,
) -> String {
    let admin = admin.map_or("off".to_owned(), |a| format!("127.0.0.1:{a}"));
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndrain_delay = \"0s\"\n\
         [upstream]\nurl = \"{}\"\napi_key_file = \"{}\"\n[admin]\nlisten = \"{admin}\"\n",
        sim.url(),
        key_file.display()
    )
}

/// A `[[webhooks.subscribers]]` entry `app` at `hook_port`, keyed by `EXAGATE_TEST_SIGNING`.
fn app_subscriber(hook_port: u16) -> String {
    format!(
        "[[webhooks.subscribers]]\nname = \"app\"\nurl = \"http://127.0.0.1:{hook_port}/hooks\"\nsecret_env = \"EXAGATE_TEST_SIGNING\"\n"
    )
}
