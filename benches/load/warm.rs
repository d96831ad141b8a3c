//! Warming the servers before anything is timed, and checking they answer what the
//! scenarios assume: every job cached (a hit, links rewritten) in the gateway and nginx,
//! the bare server answering the bodies it was given, the simulator having rendered every
//! job once.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use crate::client::{self, Conn, Stop};
use crate::procs;
use crate::BoxError;

/// Asks the simulator at `addr` for every path once, one at a time, so neither side of
/// the miss comparison pays for the simulator's own first render.
pub async fn simulator(addr: SocketAddr, paths: &[String]) -> Result<(), BoxError> {
    let mut direct = Conn::open(addr, procs::sim_headers()).await?;
    client::sequential(&mut direct, paths).await?;
    Ok(())
}

/// Fetches every path once through `server` at `addr` (16 connections), each a 200: the
/// misses that fill its cache.
async fn fill(addr: SocketAddr, paths: &Arc<Vec<String>>, server: &str) -> Result<(), BoxError> {
    let fill = client::closed_loop(addr, Arc::clone(paths), 16, Stop::EachOnce).await?;
    if fill.ok != paths.len() as u64 {
        return Err(format!(
            "warming {server}: {} of {} jobs answered 200",
            fill.ok,
            paths.len()
        )
        .into());
    }
    Ok(())
}

/// Fetches every path through the gateway (misses), then again checking each is a hit;
/// returns the bodies of the second pass, for the bare server.
pub async fn gateway(
    addr: SocketAddr,
    paths: &Arc<Vec<String>>,
) -> Result<Vec<(String, Bytes)>, BoxError> {
    fill(addr, paths, "the gateway").await?;
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    let public = format!("http://{addr}/v2/extract/");
    let mut bodies = Vec::with_capacity(paths.len());
    for path in paths.iter() {
        let reply = conn.get(path).await?;
        if reply.status != 200 || reply.header("x-cache") != "hit" {
            return Err(format!(
                "{path}: status {}, x-cache {:?} after warming",
                reply.status,
                reply.header("x-cache")
            )
            .into());
        }
        if !contains(&reply.body, public.as_bytes()) {
            return Err(format!("{path}: the gateway did not rewrite the links").into());
        }
        bodies.push((path.clone(), reply.body));
    }
    Ok(bodies)
}

/// Asks the bare server for every job once (which also logs a line for each when its
/// log is on) and checks it answers the body it was given: a port that accepts
/// connections is not yet a server that answers.
pub async fn check_bare(addr: SocketAddr, bodies: &[(String, Bytes)]) -> Result<(), BoxError> {
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    for (path, body) in bodies {
        let reply = conn
            .get(path)
            .await
            .map_err(|e| format!("bare server, {path}: {e}"))?;
        if reply.status != 200 || reply.body != *body {
            return Err(format!(
                "bare server, {path}: status {}, {} body bytes, not the {} it was given",
                reply.status,
                reply.body.len(),
                body.len()
            )
            .into());
        }
    }
    Ok(())
}

/// Fetches every path through nginx, then again checking each is a cache HIT with its
/// links rewritten to nginx's origin.
pub async fn nginx(
    addr: SocketAddr,
    sim: SocketAddr,
    paths: &Arc<Vec<String>>,
) -> Result<(), BoxError> {
    fill(addr, paths, "nginx").await?;
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    let public = format!("http://{addr}/v2/extract/");
    let upstream = format!("http://{sim}/");
    for path in paths.iter() {
        let reply = conn.get(path).await?;
        if reply.status != 200 || reply.header("x-cache") != "HIT" {
            return Err(format!(
                "nginx {path}: status {}, x-cache {:?} after warming",
                reply.status,
                reply.header("x-cache")
            )
            .into());
        }
        if !contains(&reply.body, public.as_bytes()) || contains(&reply.body, upstream.as_bytes()) {
            return Err(format!("nginx {path}: sub_filter did not rewrite the links").into());
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
