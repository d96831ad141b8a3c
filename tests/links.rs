//! Link rewriting, and following the rewritten links (chunks, download) through the gateway.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{job_path, send, Harness, KEY};
use http::{Method, StatusCode};

/// The path and query of a rewritten link, checked to point at the gateway.
fn gateway_path(h: &Harness, link: &serde_json::Value) -> String {
    let link = link.as_str().expect("link is a string");
    let prefix = h.url();
    assert!(
        link.starts_with(&prefix),
        "{link} does not point at {prefix}"
    );
    link[prefix.len()..].to_string()
}

#[tokio::test]
async fn links_point_at_the_gateway_and_nothing_else_changes() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let via_gateway = h.get(&job_path(id)).await;
    let direct = send(
        &h.client,
        Method::GET,
        &format!("{}{}", h.sim.url(), job_path(id)),
        &[("x-api-key", KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(direct.status, StatusCode::OK);
    let mut ours = via_gateway.json();
    let theirs = direct.json();
    // The links moved to the gateway, path and query intact.
    for name in ["chunks", "download"] {
        let upstream_link = theirs["links"][name].as_str().expect("upstream link");
        let path = gateway_path(&h, &ours["links"][name]);
        assert!(upstream_link.ends_with(&path), "{upstream_link} vs {path}");
    }
    // Everything else is identical, the pre-signed CDN URLs included.
    ours["links"] = theirs["links"].clone();
    assert_eq!(ours, theirs);
    let cdn = theirs["extraction"]["common"]["thumbnail"]
        .as_str()
        .expect("thumbnail url");
    assert!(cdn.starts_with("https://cdn.exabase.io/"));
    assert!(String::from_utf8_lossy(&via_gateway.body).contains(cdn));
    // Length recomputed for the rewritten body; no stale validator.
    assert_eq!(
        via_gateway.headers["content-length"].to_str().ok(),
        Some(via_gateway.body.len().to_string().as_str())
    );
    // The validator is the gateway's own, of the rewritten body: never the upstream's.
    let etag = via_gateway.headers.get("etag").expect("etag");
    assert_ne!(Some(etag), direct.headers.get("etag"));
    let digest = exagate::auth::sha256(&via_gateway.body);
    assert_eq!(
        etag.to_str().ok(),
        Some(format!("\"{}\"", hex::encode(&digest[..12])).as_str())
    );
}

#[tokio::test]
async fn the_lookup_asks_upstream_for_an_uncompressed_body() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let _ = h
        .send(
            Method::GET,
            &job_path(id),
            &[("accept-encoding", "gzip, br")],
            Bytes::new(),
        )
        .await;
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn following_the_chunks_link_is_cached_while_the_job_is_completed() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let job = h.get(&job_path(id)).await.json();
    let chunks = gateway_path(&h, &job["links"]["chunks"]);
    let first = h.get(&chunks).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache(), "miss");
    let items = first.json()["items"].as_array().expect("items").len();
    assert_eq!(items, 20);
    let second = h.get(&chunks).await;
    assert_eq!(second.cache(), "hit");
    assert_eq!(second.body, first.body);
    // Another window is another entry.
    let next = format!("/v2/extract/{id}/chunks?start=21&end=40");
    assert_eq!(h.get(&next).await.cache(), "miss");
    assert_eq!(h.get(&next).await.cache(), "hit");
    assert_eq!(h.sim.calls_to(&format!("/v2/extract/{id}/chunks")), 2);
}

#[tokio::test]
async fn chunks_of_a_job_not_known_completed_are_not_stored() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let path = format!("/v2/extract/{id}/chunks?start=1&end=20");
    // The job itself was never looked up: the gateway does not know it is completed.
    assert_eq!(h.get(&path).await.cache(), "miss");
    assert_eq!(h.get(&path).await.cache(), "miss");
    assert_eq!(h.sim.calls_to(&format!("/v2/extract/{id}/chunks")), 2);
}

#[tokio::test]
async fn chunks_expire_with_their_job() {
    let h = Harness::with(|c| c.cache.completed_ttl = Duration::from_millis(600)).await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    let path = format!("/v2/extract/{id}/chunks?start=1&end=20");
    assert_eq!(h.get(&path).await.cache(), "miss");
    assert_eq!(h.get(&path).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.get(&path).await.cache(), "miss");
}

#[tokio::test]
async fn following_the_download_link_streams_the_bytes_uncached() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let job = h.get(&job_path(id)).await.json();
    let download = gateway_path(&h, &job["links"]["download"]);
    for _ in 0..2 {
        let reply = h.get(&download).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.cache(), "bypass");
        assert_eq!(reply.body.len(), 3 * 1024 * 1024);
        assert_eq!(reply.headers["content-type"], "application/zip");
    }
    assert_eq!(h.sim.calls_to(&format!("/v2/extract/{id}/download")), 2);
}

#[tokio::test]
async fn a_download_redirect_passes_through_as_it_is() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let target = "https://cdn.exabase.io/zips/abc.zip?X-Amz-Signature=feedbeef";
    h.sim.set_download_redirect(Some(target.to_string()));
    let reply = h.get(&format!("/v2/extract/{id}/download")).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers["location"], target);
    assert_eq!(reply.cache(), "bypass");
}
