//! Micro-benchmarks of the gateway's hot path, in-process (no sockets):
//!
//! - `route_and_key`: what every job lookup does before it touches the cache: route the
//!   method and path, read `X-Exabase-Base-Id`, build the `CacheKey`;
//! - `hit/*`: a cache hit end to end through `proxy::handler::handle`, the body collected,
//!   with no tracing subscriber (the access-log line is then nearly free) and with a text
//!   subscriber writing to a sink (the cost of formatting that line);
//! - `rewrite_job/*`: link rewriting of a 2 KB and a 2 MB job as the simulator serves them
//!   (padded to the byte), the work a miss does once before storing;
//! - `packed/*`: a 2 KB and an 8 KB job compressed at gzip levels 1 and 6 (what a fill
//!   stores) and decompressed (what an identity hit outside the front table's copies
//!   costs); each prints the size it compresses to.
//!
//! Run with `cargo bench --bench hot_path`. For the load comparison against a bare hyper
//! server and nginx, see `benches/load.rs`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use exagate::cache::{CacheKey, JobKey};
use exagate::proxy::rewrite::LinkRewriter;
use exagate::proxy::route::{self, Route};
use exagate::secret::{ApiKey, KeySource};
use exagate::sim::{SimOptions, Simulator};
use exagate::{Config, Gateway};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};

/// The key the simulator accepts and the gateway injects.
const KEY: &str = "bench-key";

/// A completed job body exactly as the simulator serves it, padded to `size` bytes, read
/// through the gateway's own upstream client (so untouched: its links still point at the
/// simulator, and rewriting them has real work to do).
async fn sim_job_body(size: usize) -> Bytes {
    let (sim, gw) = sim_and_gateway(size).await;
    let job = sim.add_completed(None);
    let fetched = gw
        .live()
        .upstream
        .get_buffered(
            "job",
            &format!("/v2/extract/{job}"),
            exagate::cache::Scope::Workspace,
            None,
            gw.live().upstream.deadline(),
        )
        .await
        .expect("the simulator answers");
    assert_eq!(fetched.status, 200, "fetching the job body");
    sim.shutdown().await;
    fetched.body
}

fn route_and_key(c: &mut Criterion) {
    let path = "/v2/extract/123e4567-e89b-12d3-a456-426614174000";
    let mut headers = http::HeaderMap::new();
    headers.insert(
        route::BASE_HEADER,
        http::HeaderValue::from_static("0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172"),
    );
    let no_base = http::HeaderMap::new();
    let mut group = c.benchmark_group("route_and_key");
    for (name, headers) in [("workspace", &no_base), ("with_base", &headers)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let route =
                    route::route(&Method::GET, std::hint::black_box(path)).expect("a job route");
                let scope = route::parse_scope(std::hint::black_box(headers)).expect("scope");
                match route {
                    Route::Job(job) => CacheKey::Job(JobKey { scope, job }),
                    other => panic!("not a job route: {other:?}"),
                }
            })
        });
    }
    group.finish();
}

/// A simulator padding its jobs to `padding` bytes, and a gateway in front of it.
async fn sim_and_gateway(padding: usize) -> (Simulator, Arc<Gateway>) {
    let sim = Simulator::start(SimOptions {
        api_key: KEY.to_string(),
        ..SimOptions::default()
    })
    .await
    .expect("simulator");
    sim.set_padding(padding);
    let mut config = Config::defaults();
    config.upstream.url = sim.url();
    config.admin.listen = None;
    config.validate().expect("valid config");
    let key = ApiKey::from_secret(KEY, KeySource::Env("(bench)".to_string())).expect("key");
    let gw = Gateway::new(&config, key).expect("gateway");
    (sim, gw)
}

/// A simulator with `jobs` padded completed jobs and a gateway in front of it, each job
/// already fetched once so every benched request is a hit.
async fn warm_gateway(padding: usize, jobs: usize) -> (Simulator, Arc<Gateway>, Vec<String>) {
    let (sim, gw) = sim_and_gateway(padding).await;
    let mut paths = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let job = sim.add_completed(None);
        let path = format!("/v2/extract/{job}");
        let first = exagate::proxy::handler::handle(gw.clone(), get(&path)).await;
        assert_eq!(first.status(), 200, "warming the job");
        let _ = first.into_body().collect().await;
        paths.push(path);
    }
    (sim, gw, paths)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .body(Empty::new())
        .expect("a valid request")
}

/// One request through the handler, body collected; returns the body length so the
/// work cannot be optimised away.
async fn one_hit(gw: &Arc<Gateway>, path: &str) -> usize {
    let response = exagate::proxy::handler::handle(gw.clone(), get(path)).await;
    debug_assert_eq!(
        response.headers().get("x-cache").map(|v| v.as_bytes()),
        Some(&b"hit"[..])
    );
    let body = response.into_body().collect().await.expect("body");
    body.to_bytes().len()
}

fn hit(c: &mut Criterion) {
    // Current-thread: the benched future runs on this thread, so a thread-local tracing
    // default (below) sees the access-log events.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sim, gw, paths) = rt.block_on(warm_gateway(2048, 1));
    let path = &paths[0];
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("no_subscriber", |b| {
        b.to_async(&rt).iter(|| one_hit(&gw, path))
    });
    {
        // The text format the binary uses, written to a sink: formatting the line is the
        // cost, not the disk.
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(std::io::sink)
            .with_env_filter("info")
            .event_format(exagate::telemetry::plain::Plain::new(
                tracing_subscriber::fmt::format(),
            ))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        group.bench_function("access_log_to_sink", |b| {
            b.to_async(&rt).iter(|| one_hit(&gw, path))
        });
    }
    rt.block_on(sim.shutdown());
    // As the load harness reads them: thousands of jobs in turn, so each hit finds its
    // entry, its slot and its body cold in the CPU's caches, as a busy gateway does.
    let (sim, gw, paths) = rt.block_on(warm_gateway(2048, 3000));
    let next = std::cell::Cell::new(0usize);
    group.bench_function("3000_jobs", |b| {
        b.to_async(&rt).iter(|| {
            let i = next.get();
            next.set((i + 1) % paths.len());
            one_hit(&gw, &paths[i])
        })
    });
    group.finish();
    rt.block_on(sim.shutdown());
}

fn rewrite_job(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rewriter = LinkRewriter::new("http://127.0.0.1:8080");
    let mut group = c.benchmark_group("rewrite_job");
    for (name, size) in [("2KB", 2 * 1024), ("2MB", 2 * 1024 * 1024)] {
        let body = rt.block_on(sim_job_body(size));
        assert_eq!(body.len(), size, "the simulator pads to the byte");
        let (out, facts) = rewriter.rewrite_job(&body).expect("a job");
        assert!(facts.id.is_some(), "the sample has an id");
        assert_ne!(out, body, "the sample's links are rewritten");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || body.clone(),
                |body| rewriter.rewrite_job(body).expect("a job"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn packed(c: &mut Criterion) {
    use exagate::cache::packed;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("packed");
    for (name, size) in [("2KB", 2 * 1024), ("8KB", 8 * 1024)] {
        let body = rt.block_on(sim_job_body(size));
        group.throughput(Throughput::Bytes(body.len() as u64));
        for level in [1, packed::LEVEL] {
            let form = packed::pack_at(&body, level).expect("a job compresses");
            println!(
                "packed/{name}: level {level} keeps {} of {} bytes ({:.2}x)",
                form.len(),
                body.len(),
                body.len() as f64 / form.len() as f64
            );
            group.bench_function(format!("pack_{name}_level{level}"), |b| {
                b.iter(|| packed::pack_at(&body, level).expect("compresses"))
            });
        }
        let form = packed::pack(&body).expect("a job compresses");
        group.bench_function(format!("unpack_{name}"), |b| {
            b.iter(|| packed::unpack(&form, body.len()).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, route_and_key, hit, rewrite_job, packed);
criterion_main!(benches);
