//! The reference: a bare hyper server answering the same job bodies from a `HashMap` in
//! memory, by path. Same stack as the gateway (hyper 1, hyper-util `auto`, tokio
//! multi-thread, `TCP_NODELAY`), none of its work (routing, cache, rewriting): the
//! ceiling a Rust proxy on this machine can hope for.
//!
//! Run by the harness as `load --serve-bare ADDR BODIES [--log]`; with `--log` it writes
//! one tracing line per request to stderr, through the same non-blocking writer as the
//! gateway's access log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing_appender::non_blocking::NonBlockingBuilder;

use crate::BoxError;

/// Writes `(path, body)` pairs for [`load_bodies`]: a path line, a length line, the
/// body bytes, a newline.
pub fn save_bodies(file: &Path, bodies: &[(String, Bytes)]) -> Result<(), BoxError> {
    let mut out = std::io::BufWriter::new(fs::File::create(file)?);
    for (path, body) in bodies {
        writeln!(out, "{path}")?;
        writeln!(out, "{}", body.len())?;
        out.write_all(body)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn load_bodies(file: &Path) -> Result<HashMap<String, Bytes>, BoxError> {
    let data = Bytes::from(fs::read(file)?);
    let mut map = HashMap::new();
    let mut at = 0;
    let line = |at: &mut usize| -> Result<String, BoxError> {
        let rest = &data[*at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated bodies file")?;
        *at += end + 1;
        Ok(String::from_utf8(rest[..end].to_vec())?)
    };
    while at < data.len() {
        let path = line(&mut at)?;
        let len: usize = line(&mut at)?.parse()?;
        if at + len > data.len() {
            return Err("truncated bodies file".into());
        }
        map.insert(path, data.slice(at..at + len));
        at += len + 1;
    }
    Ok(map)
}

/// Serves until killed.
pub fn serve(addr: SocketAddr, bodies: &Path, log: bool) -> Result<(), BoxError> {
    let bodies = Arc::new(load_bodies(bodies)?);
    // Logging set up as the gateway's is: lines handed to a writer thread, never lossy,
    // written through a buffer flushed whenever the queue runs empty.
    // Besides being the fair comparison, it keeps a failed write (a full disk) from
    // reaching the request: tracing's synchronous writer reports one with `eprintln!`,
    // which panics when stderr itself is the full file, and every connection then dies.
    let mut _log_worker = None;
    if log {
        let (writer, worker) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("bare-log")
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
        _log_worker = Some(worker);
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(writer)
            .with_env_filter("info")
            .try_init()
            .map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let bodies = Arc::clone(&bodies);
            let service = service_fn(move |request: Request<Incoming>| {
                let bodies = Arc::clone(&bodies);
                async move { Ok::<_, Infallible>(answer(&bodies, &request, log)) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    })
}

fn answer(
    bodies: &HashMap<String, Bytes>,
    request: &Request<Incoming>,
    log: bool,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = request.uri().path();
    let mut response = match bodies.get(path) {
        Some(body) => {
            let mut response = Response::new(Full::new(body.clone()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    // The gateway answers hits with these too; same header bytes on the wire.
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static("hit"));
    response
        .headers_mut()
        .insert(header::AGE, HeaderValue::from_static("0"));
    if log {
        tracing::info!(
            target: "bare::access",
            method = %request.method(),
            path = %path,
            status = response.status().as_u16(),
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
    response
}
