//! The admin listener: metrics, health, readiness and purging, for operators only.
//!
//! It listens on its own address (`admin.listen`), never the public port, so exposing
//! the gateway to apps never exposes these routes.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::auth::sha256;
use crate::body::Body;
use crate::cache::JobKey;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::proxy::route::{parse_job_id, parse_scope};
use crate::server::Handler;

/// The admin routes, over the gateway they report on.
pub struct Admin {
    /// The gateway whose cache, metrics and readiness these routes expose.
    pub gateway: Arc<Gateway>,
}

impl Handler for Admin {
    async fn call(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> Response<Body> {
        self.answer(request).await
    }
}

impl Admin {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let gw = &self.gateway;
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/metrics") => {
                let text = gw.render_metrics().await;
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(text),
                )
            }
            (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
            (&Method::GET, "/readyz") if gw.is_ready() => {
                json(StatusCode::OK, r#"{"status":"ready"}"#)
            }
            (&Method::GET, "/readyz") => {
                json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
            }
            (&Method::DELETE, "/cache") => match self.authorize(&request) {
                Ok(()) => {
                    gw.purge_all().await;
                    tracing::info!("cache purged (everything)");
                    json(StatusCode::OK, r#"{"purged":"all"}"#)
                }
                Err(e) => e.to_response("bypass"),
            },
            (&Method::DELETE, p) if p.starts_with("/cache/") => {
                let purge = self.authorize(&request).and_then(|()| {
                    let job = parse_job_id(&p["/cache/".len()..])?;
                    let scope = parse_scope(request.headers())?;
                    Ok(JobKey { scope, job })
                });
                match purge {
                    Ok(key) => {
                        gw.purge_job(key, false).await;
                        tracing::info!(job = %key, "cache purged (one job)");
                        let body = serde_json::json!({ "purged": key.job.to_string() });
                        json(StatusCode::OK, &body.to_string())
                    }
                    Err(e) => e.to_response("bypass"),
                }
            }
            (method, p) if p.starts_with("/webhooks/") => {
                let query = request.uri().query().unwrap_or("");
                let answer = crate::webhooks::admin::answer(gw, method, p, query, || {
                    self.authorize(&request)
                })
                .await;
                match answer {
                    Some(Ok((status, body))) => json(status, &body.to_string()),
                    Some(Err(e)) => e.to_response("bypass"),
                    None => GatewayError::new(ErrorKind::NotFound, "no such admin route")
                        .to_response("bypass"),
                }
            }
            (_, "/metrics" | "/healthz" | "/readyz") => {
                GatewayError::method_not_allowed("GET").to_response("bypass")
            }
            (_, "/cache") => GatewayError::method_not_allowed("DELETE").to_response("bypass"),
            _ => {
                GatewayError::new(ErrorKind::NotFound, "no such admin route").to_response("bypass")
            }
        }
    }

    /// Purging needs `Authorization: Bearer <token>`, the token from `admin.token_env`;
    /// without that variable set, purging is off.
    fn authorize(&self, request: &Request<Incoming>) -> Result<(), GatewayError> {
        let live = self.gateway.live();
        let Some(expected) = live.admin_token.as_ref() else {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                "purging is off: set the variable named by admin.token_env",
            ));
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| sha256(token.trim().as_bytes()));
        match presented {
            Some(digest) if bool::from(digest.ct_eq(expected)) => Ok(()),
            _ => Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "this admin route needs Authorization: Bearer <admin token>",
            )),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    respond(
        status,
        "application/json",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}
