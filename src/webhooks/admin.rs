//! The relay's admin routes (on the admin listener):
//!
//! - `GET /webhooks/subscribers`: each subscriber, its state and its queue;
//! - `GET /webhooks/deliveries?status=pending|delivered|failed&subscriber=NAME`;
//! - `POST /webhooks/deliveries/{id}/retry`: due now, whatever its status;
//! - `POST /webhooks/subscribers/{name}/enable`: after a `410` disabled it.
//!
//! The changes need the admin token, as purging does.

use http::{Method, StatusCode};

use super::outbox::{RetryRefused, Status};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;

/// Most deliveries one listing returns (newest first).
const PAGE: usize = 500;

/// What a route under `/webhooks/` answers: `Ok((status, JSON))`, or `None` when the path
/// is not one of these routes. `authorized` is the admin token's check, run only for
/// the routes that change something.
pub async fn answer(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: &str,
    authorized: impl FnOnce() -> Result<(), GatewayError>,
) -> Option<Result<(StatusCode, serde_json::Value), GatewayError>> {
    let live = gw.live();
    let relay = &gw.webhooks.relay;
    let rest = path.strip_prefix("/webhooks/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let result = match (method, segments.as_slice()) {
        (&Method::GET, ["subscribers"]) => {
            let subscribers = live
                .webhooks
                .as_ref()
                .map_or(&[][..], |h| &h.subscribers[..]);
            let mut items = Vec::new();
            for s in subscribers {
                let counts = relay.counts(Some(&s.name)).await;
                let disabled = relay.is_disabled(&s.name).await;
                items.push(serde_json::json!({
                    "name": s.name,
                    "url": s.shown_url(),
                    "state": if disabled { "disabled" } else { "active" },
                    "pending": counts[0].1,
                    "delivered": counts[1].1,
                    "failed": counts[2].1,
                }));
            }
            Ok((StatusCode::OK, serde_json::json!({ "items": items })))
        }
        (&Method::GET, ["deliveries"]) => {
            let mut status = None;
            let mut subscriber = None;
            for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
                match name {
                    "status" => {
                        status = Some(match value {
                            "pending" => Status::Pending,
                            "delivered" => Status::Delivered,
                            "failed" => Status::Failed,
                            _ => {
                                return Some(Err(GatewayError::new(
                                    ErrorKind::BadRequest,
                                    "status must be pending, delivered or failed",
                                )))
                            }
                        })
                    }
                    "subscriber" => subscriber = Some(value.to_owned()),
                    _ => {}
                }
            }
            let items: Vec<_> = relay
                .list(status, subscriber.as_deref())
                .await
                .into_iter()
                .take(PAGE)
                .map(|d| {
                    serde_json::json!({
                        "id": d.id,
                        "subscriber": d.subscriber,
                        "event": d.event,
                        "kind": d.kind,
                        "job": d.job,
                        "status": d.status.as_str(),
                        "attempts": d.attempts,
                        "created_at_ms": d.created_at,
                        "next_at_ms": d.next_at,
                        "give_up_at_ms": d.give_up_at,
                        "last_outcome": d.last_outcome,
                    })
                })
                .collect();
            Ok((StatusCode::OK, serde_json::json!({ "items": items })))
        }
        (&Method::POST, ["deliveries", id, "retry"]) => match authorized() {
            Err(e) => Err(e),
            Ok(()) => match relay
                .retry_now(
                    id,
                    query
                        .split('&')
                        .any(|p| p == "replay=1" || p == "replay=true"),
                )
                .await
            {
                Ok(d) => {
                    tracing::info!(delivery = %d.id, subscriber = %d.subscriber, "webhook delivery retried by an operator");
                    Ok((
                        StatusCode::OK,
                        serde_json::json!({ "id": d.id, "status": d.status.as_str() }),
                    ))
                }
                // Not returned by the relay (a due one is answered as retried).
                Err(RetryRefused::Due(d)) => Ok((
                    StatusCode::OK,
                    serde_json::json!({ "id": d.id, "status": d.status.as_str() }),
                )),
                Err(RetryRefused::Unknown) => {
                    Err(GatewayError::new(ErrorKind::NotFound, "no such delivery"))
                }
                Err(RetryRefused::Delivered) => Err(GatewayError::new(
                    ErrorKind::AlreadyDelivered,
                    "this delivery was delivered: add ?replay=1 to send it again",
                )),
            },
        },
        (&Method::POST, ["subscribers", name, "enable"]) => match authorized() {
            Err(e) => Err(e),
            Ok(()) => {
                let known = live
                    .webhooks
                    .as_ref()
                    .is_some_and(|h| h.subscribers.iter().any(|s| s.name == *name));
                if known {
                    relay.set_disabled(name, false).await;
                    relay.nudge();
                    tracing::info!(subscriber = %name, "webhook subscriber enabled by an operator");
                    Ok((
                        StatusCode::OK,
                        serde_json::json!({ "name": name, "state": "active" }),
                    ))
                } else {
                    Err(GatewayError::new(ErrorKind::NotFound, "no such subscriber"))
                }
            }
        },
        (_, ["subscribers"] | ["deliveries"]) => Err(GatewayError::method_not_allowed("GET")),
        (_, ["deliveries", _, "retry"] | ["subscribers", _, "enable"]) => {
            Err(GatewayError::method_not_allowed("POST"))
        }
        _ => return None,
    };
    Some(result)
}
