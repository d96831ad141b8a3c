//! (h) Compression: hit throughput of a gateway holding its cache compressed (the
//! default) against one with `cache.compress = false`, measured in the same run,
//! interleaved: for clients that take no gzip (served from the front table's copies, so
//! they must lose nothing), and for clients that take gzip (sent the stored bytes).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::client::{self, Stop};
use crate::procs::{self, Server};
use crate::scenarios::throughput::{self, Throughput};
use crate::scenarios::{CONNS, PADDING};
use crate::{warm, wrk, BoxError, Plan, Tools};

/// What one run measured: the best round of each, and the paired ratio.
pub struct Compression {
    /// Identity throughput, compressed over uncompressed: the median over the rounds of
    /// the two measured back to back (in alternating order), so that the machine's drift
    /// between rounds (several percent here) cancels out.
    pub paired_ratio: f64,
    /// Rounds measured.
    pub rounds: usize,
    /// Identity clients, compressed cache.
    pub identity: Throughput,
    /// Identity clients, `cache.compress = false` (the reference).
    pub reference: Throughput,
    /// gzip clients, compressed cache.
    pub gzip: Throughput,
    /// Bytes per answer sent: identity, gzip.
    pub body_bytes: (f64, f64),
}

pub fn measure(
    plan: &Plan,
    tools: &Tools,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> Result<Compression, BoxError> {
    let sim = procs::start_sim(dir, "sim-compression", plan.hit_jobs, PADDING)?;
    let paths: Arc<Vec<String>> = Arc::new(
        sim.ids
            .iter()
            .map(|id| format!("/v2/extract/{id}"))
            .collect(),
    );
    let packed = procs::start_gateway_compressing(dir, "gateway-gzip", sim.addr, "1GiB", true)?;
    let plain = procs::start_gateway_compressing(dir, "gateway-plain", sim.addr, "1GiB", false)?;
    for gateway in [&packed, &plain] {
        rt.block_on(warm::gateway(gateway.addr, &paths))?;
    }
    let gzip_headers = [("Accept-Encoding", "gzip")];
    let identity_script = wrk::write_script_as(dir, "identity", &paths, &[])?;
    let gzip_script = wrk::write_script_as(dir, "gzip", &paths, &gzip_headers)?;
    // What each kind of client is sent, per answer.
    let sizes = |headers: HeaderMap| {
        rt.block_on(client::closed_loop_with(
            packed.addr,
            Arc::clone(&paths),
            4,
            Stop::EachOnce,
            headers,
        ))
        .map(|r| r.body_bytes as f64 / r.ok.max(1) as f64)
    };
    let mut gzip = HeaderMap::new();
    gzip.insert("accept-encoding", HeaderValue::from_static("gzip"));
    let body_bytes = (sizes(HeaderMap::new())?, sizes(gzip.clone())?);

    let run = |server: &Server, script: &Path, headers: &HeaderMap, duration: Duration| {
        throughput::once(rt, tools, script, &paths, server, CONNS, duration, headers)
    };
    let none = HeaderMap::new();
    if plan.warmup {
        run(&packed, &identity_script, &none, Duration::from_secs(1))?;
        run(&plain, &identity_script, &none, Duration::from_secs(1))?;
        run(&packed, &gzip_script, &gzip, Duration::from_secs(1))?;
    }
    let mut best: [Option<Throughput>; 3] = [None; 3];
    let mut ratios = Vec::new();
    // Twice the other scenarios' rounds: the difference looked for (3%) is smaller than
    // the machine's noise between rounds.
    let rounds = 2 * plan.rounds;
    for round in 0..rounds {
        let (identity, reference) = if round % 2 == 0 {
            let a = run(&packed, &identity_script, &none, plan.duration)?;
            (a, run(&plain, &identity_script, &none, plan.duration)?)
        } else {
            let b = run(&plain, &identity_script, &none, plan.duration)?;
            (run(&packed, &identity_script, &none, plan.duration)?, b)
        };
        ratios.push(identity.rps / reference.rps.max(1.0));
        let measured = [
            identity,
            reference,
            run(&packed, &gzip_script, &gzip, plan.duration)?,
        ];
        let labels = [
            "identity, compressed cache",
            "identity, compress = false",
            "gzip, compressed cache",
        ];
        for (i, t) in measured.into_iter().enumerate() {
            t.keep_best(
                &mut best[i],
                &format!("compression {:<28}", labels[i]),
                round,
            );
        }
    }
    packed.proc.stop();
    plain.proc.stop();
    sim.proc.stop();
    let [Some(identity), Some(reference), Some(gzip)] = best else {
        return Err("compression: no round was measured".into());
    };
    ratios.sort_by(f64::total_cmp);
    let paired_ratio = match ratios.len() {
        0 => 0.0,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    println!("compression: paired identity ratios {ratios:.3?}, median {paired_ratio:.3}");
    Ok(Compression {
        paired_ratio,
        rounds,
        identity,
        reference,
        gzip,
        body_bytes,
    })
}
