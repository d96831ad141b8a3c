//! Webhooks, sent as the real API sends them: when a job reaches `completed`
//! (and on `POST /v2/extract/{id}/webhook/trigger`), its body is POSTed to the
//! webhook URL of its scope, retried on failure, and every attempt is logged
//! for [`super::Simulator::webhooks`].
//!
//! One background task does it all: a ticker notices completions (job states
//! change lazily, by time, so nothing else would), a queue takes the triggers
//! from request handlers (which must never wait on a receiver), and each
//! delivery, retries included, runs as a task of its own in a `JoinSet` the
//! task owns, so that shutdown stops every pending retry at once.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::Scheme;
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::store::new_uuid;
use super::{lock, Inner, MAX_RECORDED_WEBHOOKS};

/// How often the ticker looks for jobs that have reached `completed`: short
/// enough that tests waiting for a webhook barely notice it, and the scan only
/// visits jobs still on their way to completion.
const TICK: Duration = Duration::from_millis(50);

/// One try at delivering a webhook, as [`super::Simulator::webhooks`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// The job whose body was sent.
    pub job: Uuid,
    /// The webhook URL, as configured.
    pub url: String,
    /// The `X-Trace-Id` sent (fresh for every attempt; the first attempt of a
    /// trigger uses the `traceId` the trigger answered).
    pub trace_id: String,
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    /// The receiver's status, or `None` for a connection error, a timeout
    /// ([`super::SimOptions::webhook_timeout`]) or a refused URL.
    pub outcome: Option<u16>,
    /// When the attempt ended (its answer's head arrived, or it failed): what a
    /// benchmark measures the receiver's reaction from.
    pub at: std::time::Instant,
    /// The URL was not contacted at all: not plain `http://` to `127.0.0.1`,
    /// `localhost` or `[::1]`. Refused deliveries are not retried.
    pub refused: bool,
}

/// One delivery to make (with its retries).
pub(super) struct Delivery {
    job: Uuid,
    url: String,
    /// Rendered once, when the delivery is decided: every retry sends the
    /// same bytes, as a resend of the same event should.
    body: Bytes,
    /// The first attempt's `X-Trace-Id`.
    trace_id: String,
}

/// Retry and timeout settings, from [`super::SimOptions`].
pub(super) struct Policy {
    pub(super) timeout: Duration,
    /// The pause before each retry; its length is the number of retries.
    pub(super) retry: Vec<Duration>,
}

#[derive(Default)]
struct Log {
    recent: VecDeque<WebhookAttempt>,
    acked: usize,
}

/// The simulator's webhook state: the queue to the sender task and the log.
pub(super) struct Webhooks {
    /// `None` when webhooks are off ([`super::SimOptions::send_webhooks`]).
    queue: Option<mpsc::UnboundedSender<Delivery>>,
    log: Mutex<Log>,
}

impl Webhooks {
    /// The state, and the receiving end of its queue for [`run`] when `enabled`.
    pub(super) fn new(enabled: bool) -> (Webhooks, Option<mpsc::UnboundedReceiver<Delivery>>) {
        let (queue, rx) = if enabled {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let hooks = Webhooks {
            queue,
            log: Mutex::new(Log::default()),
        };
        (hooks, rx)
    }

    /// The attempts so far, oldest first (at most the last [`MAX_RECORDED_WEBHOOKS`]).
    pub(super) fn attempts(&self) -> Vec<WebhookAttempt> {
        lock(&self.log).recent.iter().cloned().collect()
    }

    /// How many attempts were answered 2xx.
    pub(super) fn acked(&self) -> usize {
        lock(&self.log).acked
    }

    fn record(&self, attempt: WebhookAttempt) {
        let mut log = lock(&self.log);
        if attempt.outcome.is_some_and(is_success) {
            log.acked += 1;
        }
        if log.recent.len() >= MAX_RECORDED_WEBHOOKS {
            log.recent.pop_front();
        }
        log.recent.push_back(attempt);
    }
}

/// Queues one delivery of job `id`'s current body (as `GET` in `scope` renders
/// it) to its scope's webhook URL, with `trace_id` for the first attempt.
/// Does nothing when webhooks are off, the job is not in `scope`, or no URL
/// applies. Never waits: request handlers call it.
pub(super) fn trigger(inner: &Inner, scope: Option<Uuid>, id: Uuid, trace_id: String) {
    let Some(queue) = &inner.webhooks.queue else {
        return;
    };
    if let Some(delivery) = delivery(inner, scope, id, trace_id) {
        // Fails only once the sender task is gone (shut down): nothing to send then.
        let _ = queue.send(delivery);
    }
}

/// What to send for job `id`: its body and the URL of its scope, falling back
/// to the workspace's (the real API's settings are per base, with the
/// workspace's as the default).
fn delivery(inner: &Inner, scope: Option<Uuid>, id: Uuid, trace_id: String) -> Option<Delivery> {
    let url = inner
        .jobs
        .webhook(scope)
        .or_else(|| inner.jobs.webhook(None))?;
    let body = inner.jobs.body(scope, id)?;
    Some(Delivery {
        job: id,
        url,
        body,
        trace_id,
    })
}

/// The sender task: ticks for completions, takes queued triggers, runs
/// deliveries, until shutdown, which aborts every delivery still running or
/// waiting for a retry.
pub(super) async fn run(
    inner: Arc<Inner>,
    mut queue: mpsc::UnboundedReceiver<Delivery>,
    policy: Policy,
) {
    let mut connector = HttpConnector::new();
    // Refuses https:// URLs too, should one ever get past `loopback_target`.
    connector.enforce_http(true);
    // No pooling: a delivery is an event, not a session, and a receiver that
    // closes after each request must not make the next attempt fail on a
    // stale connection.
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let sender = Arc::new(Sender {
        inner: inner.clone(),
        client,
        policy,
    });
    let mut deliveries = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = inner.shutdown_requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                for (id, scope) in inner.jobs.take_completed() {
                    // No URL now means no webhook for this completion, even if
                    // one is set later: the real API does not send old events.
                    if let Some(d) = delivery(&inner, scope, id, new_uuid().to_string()) {
                        deliveries.spawn(sender.clone().deliver(d));
                    }
                }
            }
            Some(d) = queue.recv() => {
                deliveries.spawn(sender.clone().deliver(d));
            }
            // Reaps finished deliveries so the set does not grow.
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
        }
    }
    deliveries.shutdown().await;
}

/// What every delivery task shares.
struct Sender {
    inner: Arc<Inner>,
    client: Client<HttpConnector, Full<Bytes>>,
    policy: Policy,
}

impl Sender {
    /// Sends `d`, retrying on the policy's schedule until a 2xx or the
    /// schedule runs out; a refused URL is logged once and never contacted.
    async fn deliver(self: Arc<Self>, d: Delivery) {
        let mut attempt = WebhookAttempt {
            job: d.job,
            url: d.url,
            trace_id: d.trace_id,
            attempt: 1,
            outcome: None,
            refused: false,
            at: std::time::Instant::now(),
        };
        let Some(target) = loopback_target(&attempt.url) else {
            attempt.refused = true;
            self.inner.webhooks.record(attempt);
            return;
        };
        let mut pauses = self.policy.retry.iter();
        loop {
            attempt.outcome = self.post(&target, &d.body, &attempt.trace_id).await;
            attempt.at = std::time::Instant::now();
            let acked = attempt.outcome.is_some_and(is_success);
            self.inner.webhooks.record(attempt.clone());
            if acked {
                return;
            }
            let Some(pause) = pauses.next() else {
                return;
            };
            tokio::time::sleep(*pause).await;
            attempt.attempt += 1;
            attempt.trace_id = new_uuid().to_string();
        }
    }

    /// One POST; the status, or `None` when there was no answer in time.
    async fn post(&self, target: &Target, body: &Bytes, trace_id: &str) -> Option<u16> {
        let req = Request::post(target.uri.clone())
            .header(HOST, target.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-trace-id", trace_id)
            .body(Full::new(body.clone()))
            .ok()?;
        // The answer's head is the acknowledgement; its body is not read.
        let resp = tokio::time::timeout(self.policy.timeout, self.client.request(req))
            .await
            .ok()?
            .ok()?;
        Some(resp.status().as_u16())
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Where a loopback webhook URL is sent.
#[derive(Debug, PartialEq)]
struct Target {
    /// The URL with its host replaced by the loopback address itself.
    uri: Uri,
    /// The `Host` header the URL implies.
    host: HeaderValue,
}

/// The target of `url` if the simulator may contact it: plain `http://` to
/// `127.0.0.1`, `localhost` or `[::1]`, nothing else. The simulator runs on
/// developer machines and CI, and a webhook URL is test input: it must never
/// make the simulator reach another machine. `localhost` is taken to mean
/// 127.0.0.1 rather than looked up, so that no resolver configuration can
/// point it elsewhere.
fn loopback_target(url: &str) -> Option<Target> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return None;
    }
    let authority = uri.authority()?;
    let host = authority.host();
    let ip = if host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if host == "[::1]" {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        return None;
    };
    let addr = SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host_header = match authority.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Some(Target {
        uri: format!("http://{addr}{path}").parse().ok()?,
        host: HeaderValue::from_str(&host_header).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_loopback_is_contacted() {
        let t = loopback_target("http://localhost:8080/hook?x=1").expect("localhost");
        assert_eq!(t.uri, "http://127.0.0.1:8080/hook?x=1");
        assert_eq!(t.host, "localhost:8080");
        let t = loopback_target("http://[::1]:9/h").expect("::1");
        assert_eq!(t.uri, "http://[::1]:9/h");
        assert_eq!(t.host, "[::1]:9");
        let t = loopback_target("http://127.0.0.1").expect("default port");
        assert_eq!(t.uri, "http://127.0.0.1:80/");
        for refused in [
            "http://192.0.2.1/x",
            "https://127.0.0.1:8080/x",
            "http://2130706433:8080/x",
            "http://127.0.0.2/x",
            "http://localhost.example.com/x",
            "http://user@example.com/x",
            "ftp://127.0.0.1/x",
            "/relative",
            "not a url",
            "",
        ] {
            assert_eq!(loopback_target(refused), None, "{refused}");
        }
    }
}
