//! Memory the cache holds against what it weighs: `cache.max_size` bounds the sum of
//! `Answer::weight`, so an entry must not keep alive much more than it weighs.
//!
//! Its own test binary, so that the heap it counts is this test's alone.

mod common;
#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::task::JoinSet;

use common::{client, start_gateway, test_config, KEY};

/// Counts the live heap: what this file measures.
#[global_allocator]
static ALLOC: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A regression test for a bug the soak run found: a cached answer kept the upstream's
/// `content-type` value and (for bodies not rewritten: chunks, 404s) the body `Bytes` as
/// hyper handed them over, slices of the connection's read buffer, so each entry kept a
/// whole read buffer (8 KiB and up) alive while weighing only its own length; 32 MiB of
/// weight came with 250 MiB more heap. Stored answers now own exactly what they weigh.
///
/// The test fills the cache with job and chunk answers and compares the growth of the
/// live heap (counted by `counting_alloc`) with the growth of the cache's weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_is_what_it_weighs() {
    const JOBS: usize = 2_000;
    let sim = common::start_sim(false).await;
    let mut config = test_config();
    config.cache.max_size = 256 * 1024 * 1024; // nothing evicted
    let gateway = start_gateway(&sim, config).await;
    let http = client();
    let ids = sim.seed_completed(None, JOBS + 50);
    // Render every job in the simulator first, so its memory is not counted below.
    for id in &ids {
        let url = format!("{}/v2/extract/{id}", sim.url());
        let reply = common::send(
            &http,
            Method::GET,
            &url,
            &[("x-api-key", KEY)],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let (warm_up, measured) = ids.split_at(50);
    // Open the gateway's connections and fill its pools before measuring.
    for id in warm_up {
        let _ = common::send(
            &http,
            Method::GET,
            &format!("{}/v2/extract/{id}", gateway.url()),
            &[],
            Bytes::new(),
        )
        .await;
    }
    let cache = &gateway.gateway.cache;
    cache.run_pending_tasks().await;
    sim.reset_counters(); // its request log holds request heads, and so buffers, too
    let heap_before = counting_alloc::live();
    let weight_before = cache.weighted_size();

    let mut set = JoinSet::new();
    for chunk in measured.chunks(JOBS / 8) {
        let chunk = chunk.to_vec();
        let (http, url) = (http.clone(), gateway.url());
        set.spawn(async move {
            for id in chunk {
                for path in [
                    format!("/v2/extract/{id}"),
                    format!("/v2/extract/{id}/chunks?start=1&end=20"),
                ] {
                    let reply = common::send(
                        &http,
                        Method::GET,
                        &format!("{url}{path}"),
                        &[],
                        Bytes::new(),
                    )
                    .await;
                    assert_eq!(reply.status, StatusCode::OK, "{path}");
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("client task");
    }
    cache.run_pending_tasks().await;
    sim.reset_counters();
    let heap_growth = counting_alloc::live().saturating_sub(heap_before);
    let weight_growth = cache.weighted_size() - weight_before;
    let entries = cache.entry_count();
    println!(
        "{entries} entries: weight +{}, live heap +{} ({:.1}x)",
        mib(weight_growth),
        mib(heap_growth),
        heap_growth as f64 / weight_growth.max(1) as f64
    );
    // What an entry costs beyond its body (moka's nodes, the Arc, the key's hash slot) is
    // charged as ENTRY_OVERHEAD; allow a quarter more than the weight and 4 MiB besides.
    assert!(
        heap_growth <= weight_growth + weight_growth / 4 + 4 * 1024 * 1024,
        "the cache weighs {} but holds {} more heap: entries pin buffers they do not weigh",
        mib(weight_growth),
        mib(heap_growth)
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}
