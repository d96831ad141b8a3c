//! `[[clients]]`: tokens, bases, the workspace, per-client shares, `exagate hash-token`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{job_path, Harness, KEY};
use exagate::auth::hash_token;
use exagate::config::{ClientConfig, Rate};
use http::{Method, StatusCode};
use uuid::Uuid;

const BASE_A: &str = "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172";
const BASE_B: &str = "9a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d";

async fn harness() -> Harness {
    Harness::with(|c| {
        c.clients = vec![
            ClientConfig {
                name: "billing-app".into(),
                token_sha256: hash_token("billing-secret"),
                bases: Some(vec![BASE_A.parse().expect("uuid")]),
                workspace: None,
                rate_limit: None,
            },
            ClientConfig {
                name: "ops-console".into(),
                token_sha256: hash_token("ops-secret"),
                bases: None,
                workspace: Some(true),
                rate_limit: Some(Rate {
                    count: 20,
                    per: Duration::from_secs(3600),
                }),
            },
        ];
    })
    .await
}

#[tokio::test]
async fn no_or_unknown_token_is_401_with_no_upstream_call() {
    let h = harness().await;
    let id = h.sim.add_completed(None);
    for headers in [
        vec![],
        vec![("x-api-key", "guess")],
        vec![("authorization", "Bearer guess")],
        vec![("authorization", "Basic b3BzLXNlY3JldA==")],
    ] {
        let reply = h
            .send(Method::GET, &job_path(id), &headers, Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.error_code(), "unauthorized");
    }
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn a_token_works_as_x_api_key_or_bearer_and_is_never_forwarded() {
    let h = harness().await;
    let id = h.sim.add_completed(None);
    let via_key = h
        .send(
            Method::GET,
            &job_path(id),
            &[("x-api-key", "ops-secret")],
            Bytes::new(),
        )
        .await;
    assert_eq!(via_key.status, StatusCode::OK);
    let via_bearer = h
        .send(
            Method::GET,
            &job_path(id),
            &[("authorization", "Bearer ops-secret")],
            Bytes::new(),
        )
        .await;
    assert_eq!(via_bearer.status, StatusCode::OK);
    assert_eq!(via_bearer.cache(), "hit");
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-key"], KEY);
}

#[tokio::test]
async fn a_client_limited_to_base_a_is_refused_base_b_and_the_workspace() {
    let h = harness().await;
    let a: Uuid = BASE_A.parse().expect("uuid");
    let in_a = h.sim.add_completed(Some(a));
    let in_ws = h.sim.add_completed(None);
    // Warm the workspace job through another client: a hit must not bypass the rule.
    let warm = h
        .send(
            Method::GET,
            &job_path(in_ws),
            &[("x-api-key", "ops-secret")],
            Bytes::new(),
        )
        .await;
    assert_eq!(warm.status, StatusCode::OK);
    let calls = h.sim.calls();

    let token = [("x-api-key", "billing-secret")];
    let ok = h
        .send(
            Method::GET,
            &job_path(in_a),
            &[token[0], ("x-exabase-base-id", BASE_A)],
            Bytes::new(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let b = h
        .send(
            Method::GET,
            &job_path(in_a),
            &[token[0], ("x-exabase-base-id", BASE_B)],
            Bytes::new(),
        )
        .await;
    assert_eq!(b.status, StatusCode::FORBIDDEN);
    assert_eq!(b.error_code(), "forbidden");
    let ws = h
        .send(Method::GET, &job_path(in_ws), &token, Bytes::new())
        .await;
    assert_eq!(
        ws.status,
        StatusCode::FORBIDDEN,
        "a cached job is no way around it"
    );
    let create = h
        .send(
            Method::POST,
            "/v2/extract",
            &[token[0], ("content-type", "application/json")],
            Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#),
        )
        .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.sim.calls(),
        calls + 1,
        "only the allowed request went upstream"
    );
}

#[tokio::test]
async fn a_client_share_limits_its_own_upstream_calls_but_not_its_hits() {
    let h = harness().await;
    let token = [("x-api-key", "ops-secret")];
    // 20/h: a burst of 2.
    let ids = h.sim.seed_completed(None, 3);
    let mut statuses = Vec::new();
    for id in &ids {
        let reply = h
            .send(Method::GET, &job_path(*id), &token, Bytes::new())
            .await;
        statuses.push(reply.status);
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.error_code(), "quota_exhausted");
            assert!(reply.headers.contains_key("retry-after"));
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Its hits still flow.
    let hit = h
        .send(Method::GET, &job_path(ids[0]), &token, Bytes::new())
        .await;
    assert_eq!(hit.cache(), "hit");
    // Another client's share is its own.
    let a: Uuid = BASE_A.parse().expect("uuid");
    let other = h.sim.add_completed(Some(a));
    let reply = h
        .send(
            Method::GET,
            &job_path(other),
            &[
                ("x-api-key", "billing-secret"),
                ("x-exabase-base-id", BASE_A),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.sim.calls(), 3);
}

#[test]
fn hash_token_prints_the_sha256_ops_paste_into_the_config() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exagate"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"test\n")
        .expect("write");
    let out = child.wait_with_output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}
