//! Stored answers held gzip-compressed: clients that accept gzip get the stored bytes as
//! they are, the others the identity body, and what either decodes is byte-identical to
//! what the gateway sent before it stored anything compressed.

mod common;

use std::io::Read;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{job_path, Harness, Reply};
use http::{Method, StatusCode};

const GZIP: (&str, &str) = ("accept-encoding", "gzip, deflate, br");

/// The admin token's variable (no other test binary's): purges need it.
const TOKEN_ENV: &str = "EXAGATE_TEST_COMPRESSION_ADMIN_TOKEN";
const TOKEN: &str = "compression-purge-5d1";

async fn harness() -> Harness {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = TOKEN_ENV.to_owned();
    })
    .await;
    // Job bodies of a realistic size (about 4 KiB of prose in the caption).
    h.sim.set_padding(4096);
    h
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

async fn get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Reply {
    h.send(Method::GET, path, headers, Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_clients_get_the_stored_form_and_others_the_identity_body() {
    let h = harness().await;
    let id = h.sim.add_completed(None);
    let path = job_path(id);
    // The identity client first: the miss, then a hit (from the entry held compressed).
    let miss = get(&h, &path, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.cache(), "miss");
    assert!(miss.body.len() >= 4000, "{}", miss.body.len());
    assert_eq!(header(&miss, "content-encoding"), "");
    let identity = get(&h, &path, &[]).await;
    assert_eq!(identity.cache(), "hit");
    assert_eq!(identity.body, miss.body, "a hit is the miss's body");
    assert_eq!(header(&identity, "content-encoding"), "");
    assert!(header(&identity, "vary").contains("accept-encoding"));

    let gzip = get(&h, &path, &[GZIP]).await;
    assert_eq!(gzip.cache(), "hit");
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    assert!(header(&gzip, "vary").contains("accept-encoding"));
    assert!(header(&gzip, "vary").contains("x-exabase-base-id"));
    assert_eq!(
        gunzip(&gzip.body),
        identity.body,
        "the same job, byte for byte"
    );
    assert!(
        gzip.body.len() * 2 < identity.body.len(),
        "{} of {}",
        gzip.body.len(),
        identity.body.len()
    );
    // The stored bytes as they are: every gzip hit sends the same ones.
    let again = get(&h, &path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(again.body, gzip.body);
    assert_eq!(header(&gzip, "content-length"), gzip.body.len().to_string());

    // The tags: strong for the identity body, the weak form of it for gzip, and either
    // one given back is a 304 whichever form the client takes.
    let strong = header(&identity, "etag").to_owned();
    assert!(strong.starts_with('"'), "{strong}");
    assert_eq!(header(&gzip, "etag"), format!("W/{strong}"));
    for tag in [strong.clone(), format!("W/{strong}")] {
        for accept in [&[][..], &[GZIP][..]] {
            let mut headers = vec![("if-none-match", tag.as_str())];
            headers.extend_from_slice(accept);
            let reply = get(&h, &path, &headers).await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{tag} {accept:?}");
            assert!(reply.body.is_empty());
        }
    }
    // HEAD states the length of the form the GET would send.
    let head = h.send(Method::HEAD, &path, &[GZIP], Bytes::new()).await;
    assert_eq!(header(&head, "content-length"), gzip.body.len().to_string());
    assert_eq!(header(&head, "content-encoding"), "gzip");
    let head = h.send(Method::HEAD, &path, &[], Bytes::new()).await;
    assert_eq!(
        header(&head, "content-length"),
        identity.body.len().to_string()
    );
    // A client that refuses gzip, explicitly, gets the identity body.
    for refusal in ["gzip;q=0", "identity", "br", "*;q=0"] {
        let reply = get(&h, &path, &[("accept-encoding", refusal)]).await;
        assert_eq!(header(&reply, "content-encoding"), "", "{refusal}");
        assert_eq!(reply.body, identity.body, "{refusal}");
    }
    assert_eq!(h.sim.calls_to(&path), 1, "one upstream call in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_for_a_gzip_client_is_sent_compressed_and_decodes_to_the_same_job() {
    let h = harness().await;
    let id = h.sim.add_completed(None);
    let path = job_path(id);
    let miss = get(&h, &path, &[GZIP]).await;
    assert_eq!(miss.cache(), "miss");
    assert_eq!(header(&miss, "content-encoding"), "gzip");
    let hit = get(&h, &path, &[GZIP]).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        hit.body, miss.body,
        "the miss sent the form that was stored"
    );
    // The identity client after only gzip clients: rebuilt from the stored form.
    let identity = get(&h, &path, &[]).await;
    assert_eq!(identity.cache(), "hit");
    assert_eq!(gunzip(&miss.body), identity.body);
    let job: serde_json::Value = serde_json::from_slice(&identity.body).expect("JSON");
    assert_eq!(job["id"], id.to_string());
    // Links inside were rewritten before storing, in both forms.
    assert!(!String::from_utf8_lossy(&identity.body).contains(&h.sim.url()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_answers_and_chunks_and_404s_keep_their_encoding_rules() {
    let h = harness().await;
    // A pending job's body is small: stored as it is, never encoded, and no Vary on
    // Accept-Encoding (nothing varies by it).
    let pending = h.sim.add_progressing(None);
    let reply = get(&h, &job_path(pending), &[GZIP]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(header(&reply, "content-encoding"), "");
    assert!(!header(&reply, "vary").contains("accept-encoding"));
    serde_json::from_slice::<serde_json::Value>(&reply.body).expect("plain JSON");
    // A 404 is small too.
    let missing = get(&h, &job_path(uuid::Uuid::new_v4()), &[GZIP]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(header(&missing, "content-encoding"), "");
    missing.json();
    // A chunks window of a completed job: what a gzip client decodes is what an
    // identity client reads.
    let id = h.sim.add_completed(None);
    assert_eq!(get(&h, &job_path(id), &[]).await.status, StatusCode::OK);
    let chunks = format!("{}/chunks?start=1&end=20", job_path(id));
    let plain = get(&h, &chunks, &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
    let gzip = get(&h, &chunks, &[GZIP]).await;
    assert_eq!(gzip.cache(), "hit");
    assert!(plain.body.len() > 1024, "{}", plain.body.len());
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    assert_eq!(gunzip(&gzip.body), plain.body);
    // Pass-through routes are untouched: the gateway does not encode what it does not
    // store.
    let download = get(&h, &format!("{}/download", job_path(id)), &[GZIP]).await;
    assert_ne!(header(&download, "content-encoding"), "gzip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_weighs_the_compressed_form_and_the_front_tables_copies() {
    const JOBS: usize = 200;
    let h = harness().await;
    let ids = h.sim.seed_completed(None, JOBS);
    let mut identity_bytes = 0;
    for id in &ids {
        let reply = get(&h, &job_path(*id), &[GZIP]).await;
        assert_eq!(reply.status, StatusCode::OK);
        identity_bytes += gunzip(&reply.body).len();
    }
    let weight = h.metric("exagate_cache_bytes").await;
    assert!(weight > 0.0);
    assert_eq!(h.metric("exagate_cache_front_bytes").await, 0.0);
    // Held compressed: well under the identity bytes, overhead included.
    assert!(
        weight < 0.75 * identity_bytes as f64,
        "weight {weight} for {identity_bytes} identity bytes"
    );
    // Identity clients reading them make the front table keep decompressed copies,
    // which the weight then counts.
    for id in &ids {
        let reply = get(&h, &job_path(*id), &[]).await;
        assert_eq!(reply.cache(), "hit");
    }
    let front = h.metric("exagate_cache_front_bytes").await;
    assert!(
        front > 0.5 * identity_bytes as f64 && front <= 1.25 * identity_bytes as f64,
        "front {front} of {identity_bytes}"
    );
    let after = h.metric("exagate_cache_bytes").await;
    assert!(
        (after - weight - front).abs() < 1024.0,
        "{after} = {weight} + {front}"
    );
    // A purge drops the copies with the entries.
    let bearer = format!("Bearer {TOKEN}");
    let purged = h
        .admin_send(Method::DELETE, "/cache", &[("authorization", &bearer)])
        .await;
    assert!(purged.status.is_success(), "{:?}", purged.status);
    assert_eq!(h.metric("exagate_cache_front_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compress_off_every_client_gets_the_identity_body() {
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.cache.compress = false;
    })
    .await;
    h.sim.set_padding(4096);
    let id = h.sim.add_completed(None);
    let first = get(&h, &job_path(id), &[GZIP]).await;
    let hit = get(&h, &job_path(id), &[GZIP]).await;
    assert_eq!(hit.cache(), "hit");
    for reply in [&first, &hit] {
        assert_eq!(header(reply, "content-encoding"), "");
        assert!(!header(reply, "vary").contains("accept-encoding"));
    }
    assert_eq!(hit.body, first.body);
    // Held as it is: the weight is above the body's length.
    let weight = h.metric("exagate_cache_bytes").await;
    assert!(weight > hit.body.len() as f64, "{weight}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_a_gzip_client_with_the_stored_form() {
    let h = harness().await;
    let id = h.sim.add_progressing(None);
    let path = format!("{}?wait=5s", job_path(id));
    let mut last = None;
    for _ in 0..6 {
        let reply = get(&h, &path, &[GZIP]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let body = match header(&reply, "content-encoding") {
            "gzip" => gunzip(&reply.body),
            _ => reply.body.to_vec(),
        };
        let job: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        if job["state"] == "completed" {
            last = Some(reply);
            break;
        }
    }
    let completed = last.expect("the job completed within the long-polls");
    assert_eq!(header(&completed, "content-encoding"), "gzip");
    let hit = get(&h, &job_path(id), &[]).await;
    assert_eq!(gunzip(&completed.body), hit.body);
}

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// The review's finding: each identity reader of a job held compressed got a
/// decompressed copy of its own, held until it had read it all, so stalled readers of one
/// large job pinned their number times its size beyond `cache.max_size`. They now share
/// one copy (counted in `exagate_cache_copies_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_identity_readers_of_a_large_job_share_one_copy() {
    const READERS: usize = 30;
    // A cache whose front table has no room for the copy (its budget is a sixteenth of
    // 8 MiB): the readers share it all the same.
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.cache.max_size = 8 << 20;
        // Short, so the test also sees the connection cut (below).
        c.server.idle_timeout = std::time::Duration::from_secs(2);
        c.server.send_timeout = std::time::Duration::from_secs(3);
    })
    .await;
    h.sim.set_padding(1_000_000);
    let id = h.sim.add_completed(None);
    let path = job_path(id);
    let first = get(&h, &path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let len = first.body.len();
    assert!(len > 900_000, "{len}");
    // Held compressed: the gzip form is what a gzip client is sent.
    let gzip = get(&h, &path, &[GZIP]).await;
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    let before = rss();
    // HTTP/2 streams whose window stays shut: the gateway holds each answer's body
    // until `server.send_timeout`.
    let addr: SocketAddr = h.url().trim_start_matches("http://").parse().expect("addr");
    let (mut sender, connection) = common::h2_shut_windows(addr).await;
    let mut stalled = Vec::new();
    for _ in 0..READERS {
        let request = http::Request::get(format!("{}{path}", h.url()))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("content-encoding")
                .map(|v| v.as_bytes()),
            None
        );
        // Held, never read.
        stalled.push(response);
    }
    let copies = h.metric("exagate_cache_copies_bytes").await;
    let grown = rss().saturating_sub(before);
    assert!(
        copies >= len as f64 && copies <= 2.0 * len as f64,
        "{copies} bytes of copies for a {len}-byte job"
    );
    assert!(
        grown < (READERS as u64 / 2) * len as u64,
        "RSS grew {grown} bytes for {READERS} stalled readers of a {len}-byte job"
    );
    assert_eq!(
        h.metric("exagate_cache_front_bytes").await,
        0.0,
        "no room there"
    );
    // The second review's finding: hyper never ends an HTTP/2 stream whose window stays
    // shut, so the connection stayed open (and the copy held) for as long as the client
    // kept it. Idle, then nothing moving for the send timeout, it is cut, with the client
    // still holding every stream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !connection.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(connection.is_finished(), "the stalled connection was cut");
    assert_eq!(h.metric("exagate_cache_copies_bytes").await, 0.0);
    assert!(
        h.metric("exagate_connections_closed_total{cause=\"send_timeout\"}")
            .await
            >= 1.0
    );
    drop((stalled, sender));
}

/// The review's other finding: identity hits on jobs over 8 KiB were decompressed at
/// every hit, the front table taking no copy of them. A copy of up to 2 MiB now goes in,
/// under the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_large_job_is_decompressed_once() {
    let h = harness().await;
    h.sim.set_padding(200_000);
    let id = h.sim.add_completed(None);
    let path = job_path(id);
    let first = get(&h, &path, &[]).await;
    assert_eq!(first.cache(), "miss");
    for _ in 0..3 {
        let again = get(&h, &path, &[]).await;
        assert_eq!(again.cache(), "hit");
        assert_eq!(again.body, first.body);
    }
    let front = h.metric("exagate_cache_front_bytes").await;
    assert!(front >= first.body.len() as f64, "{front}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_carries_no_content_encoding() {
    let h = harness().await;
    let id = h.sim.add_completed(None);
    let path = job_path(id);
    let identity = get(&h, &path, &[]).await;
    let strong = header(&identity, "etag").to_owned();
    let reply = get(&h, &path, &[GZIP, ("if-none-match", &strong)]).await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_eq!(header(&reply, "content-encoding"), "");
    assert_eq!(header(&reply, "etag"), format!("W/{strong}"));
    assert!(header(&reply, "vary").contains("accept-encoding"));
}
