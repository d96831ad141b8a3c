//! The Grafana dashboard and the Prometheus rules under `deploy/` name only metrics the
//! gateway exports, each in the form its type gives it (`_total` for a counter,
//! `_bucket`/`_sum`/`_count` for a histogram), and every alert has unit tests. The rules
//! themselves are checked by Prometheus's own `promtool` in CI (`.ci/run`).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use common::Harness;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    let path = Path::new(ROOT).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one document");
    docs.remove(0)
}

/// Every `exagate_*` metric name in a PromQL expression (or series selector).
fn names_in(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("exagate_") {
        let start = i + at;
        // Not the tail of a longer identifier.
        let inside =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !inside {
            into.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

/// The query strings of a Grafana dashboard: panel targets' `expr`, variables' queries.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The sample names the gateway's `/metrics` can carry, from its `# TYPE` lines.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            // The 0.0.4 text format names a counter's family with its `_total`.
            "counter" if name.ends_with("_total") => {
                names.insert(name.to_string());
            }
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn rules(doc: &Yaml) -> Vec<&Yaml> {
    doc["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").iter())
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_the_rules_name_only_exported_metrics() {
    if !common::redis::installed() {
        return;
    }
    // With [shared] on a real Redis, so the shared tier's series exist too.
    let redis = common::redis::RedisServer::start().await;
    let shared = redis.config();
    // And with [webhooks] relaying to a subscriber that is down, so the relay's series
    // exist too.
    let dir = common::tempdir();
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "dashboards-webhook-secret-0123456789abcdef").expect("secret");
    std::env::set_var(
        "EXAGATE_TEST_DASHBOARD_WHSEC",
        "whsec_ZGFzaGJvYXJkcy1zaWduaW5nLWtleS0xMjM0NTY=",
    );
    let hooks: exagate::config::WebhooksConfig = toml::from_str(&format!(
        "secret_file = {:?}\npublic_url = \"http://127.0.0.1:1\"\nretry_schedule = [\"100ms\"]\n\
         [[subscribers]]\nname = \"app\"\nurl = \"http://127.0.0.1:{}/hooks\"\nsecret_env = \"EXAGATE_TEST_DASHBOARD_WHSEC\"\n",
        secret.display().to_string(),
        common::free_port()
    ))
    .expect("webhooks");
    let h = Harness::with(move |c| {
        c.webhooks = Some(hooks);
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.shared = Some(shared);
        c.upstream.rate_limit = Some(exagate::config::Rate {
            count: 100,
            per: std::time::Duration::from_secs(3600),
        });
    })
    .await;
    let tier = h.gateway.gateway.shared.as_ref().expect("shared");
    for _ in 0..200 {
        if tier.usable() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // Series with an open label (the upstream's status, a Redis result) exist once a
    // call was made.
    let id = h.sim.add_completed(None);
    assert_eq!(
        h.get(&common::job_path(id)).await.status,
        http::StatusCode::OK
    );
    assert_eq!(h.get(&common::job_path(id)).await.cache(), "hit");
    // A failed job is an event; its delivery fails (nobody listens) and is retried.
    let failed = h
        .sim
        .add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    h.get(&common::job_path(failed)).await;
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&h.admin_get("/metrics").await.body).to_string();
        if text.contains("exagate_webhook_relayed_total{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let scraped = h.admin_get("/metrics").await;
    let text = String::from_utf8(scraped.body.to_vec()).expect("utf8");
    let exported = exported(&text);
    assert!(exported.len() > 15, "{exported:?}");

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/exagate.json")).expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let mut in_dashboard = BTreeSet::new();
    queries.iter().for_each(|q| names_in(q, &mut in_dashboard));

    let alerts = yaml("deploy/prometheus/alerts.yaml");
    let mut in_rules = BTreeSet::new();
    for rule in rules(&alerts) {
        names_in(rule["expr"].as_str().expect("expr"), &mut in_rules);
    }
    let tests = yaml("deploy/prometheus/alerts_test.yaml");
    let mut in_tests = BTreeSet::new();
    for case in tests["tests"].as_vec().expect("tests") {
        for series in case["input_series"].as_vec().into_iter().flatten() {
            names_in(series["series"].as_str().expect("series"), &mut in_tests);
        }
    }

    for (what, names) in [
        ("the dashboard", &in_dashboard),
        ("the alerting rules", &in_rules),
        ("the rules' unit tests", &in_tests),
    ] {
        let unknown: Vec<_> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} names metrics the gateway does not export: {unknown:?}"
        );
    }
    // What the issue asks the dashboard to show is there.
    for needed in [
        "exagate_requests_total",
        "exagate_upstream_requests_total",
        "exagate_quota_tokens",
        "exagate_upstream_calls_saved_total",
        "exagate_upstream_cooldown_seconds",
        "exagate_guard_refusals_total",
        "exagate_cache_entries",
        "exagate_cache_bytes",
        "exagate_cache_evictions_total",
        "exagate_upstream_duration_seconds_bucket",
        "exagate_config_reloads_total",
        "exagate_ready",
        "exagate_webhook_deliveries_received_total",
        "exagate_webhook_relayed_total",
        "exagate_webhook_queue_depth",
        "exagate_longpoll_waiters",
    ] {
        assert!(
            in_dashboard.contains(needed),
            "the dashboard lacks {needed}"
        );
    }
}

#[test]
fn every_alert_has_unit_tests_and_the_alerts_asked_for_exist() {
    let alerts = yaml("deploy/prometheus/alerts.yaml");
    let names: BTreeSet<String> = rules(&alerts)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    for needed in [
        "ExagateQuotaNearlySpent",
        "ExagateUpstreamErrors",
        "ExagateUpstreamTimeouts",
        "ExagateCooldownActive",
        "ExagateNotReady",
        "ExagateReloadFailing",
        "ExagateCacheEvictingBySize",
        "ExagateBadGatewayAnswers",
        "ExagateSharedModeLost",
        "ExagateWebhookRelayFailing",
        "ExagateWebhookBacklog",
        "ExagateWebhookReceiverRefusing",
    ] {
        assert!(names.contains(needed), "no alert {needed} in {names:?}");
    }
    for rule in rules(&alerts) {
        let name = rule["alert"].as_str().unwrap_or("?");
        assert!(rule["for"].as_str().is_some(), "{name}: no `for`");
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name}: no severity"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{name}: no summary"
        );
    }
    let tests = yaml("deploy/prometheus/alerts_test.yaml");
    let mut tested = BTreeSet::new();
    let mut fires = BTreeSet::new();
    for case in tests["tests"].as_vec().expect("tests") {
        for check in case["alert_rule_test"].as_vec().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            if check["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()) {
                fires.insert(name.clone());
            }
            tested.insert(name);
        }
    }
    for name in &names {
        assert!(fires.contains(name), "no unit test in which {name} fires");
    }
    assert_eq!(
        tested, names,
        "unit tests for alerts that do not exist, or none"
    );
}
