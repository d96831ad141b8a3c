//! The simulator's jobs: scopes, states and their schedule, and job JSON.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::Padding;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::lock;

/// Number of chunks of every completed simulated job.
pub(super) const CHUNK_COUNT: u64 = 45;
/// Chunks per simulated page (45 chunks make 9 pages).
pub(super) const CHUNKS_PER_PAGE: u64 = 5;

/// A random (version 4) UUID.
///
/// The crate's `uuid` dependency has no `v4` feature (and so no RNG), so this
/// mixes a per-process random seed, taken from std's randomly keyed hasher,
/// with a counter through splitmix64. Not cryptographic; unique within a
/// process because the first half is a bijection of the counter.
pub(super) fn new_uuid() -> Uuid {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (s1, s2) = *SEED.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        let a = h.finish();
        (a, splitmix64(a ^ 0xA076_1D64_78BD_642F))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = splitmix64(s1.wrapping_add(n));
    let lo = splitmix64(s2 ^ n.rotate_left(17));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Parses a job or base id the way the upstream documents it: hyphenated,
/// hex in either case (`Uuid::try_parse` alone also takes braces, URNs and
/// the 32-digit form, which the API does not).
pub(super) fn parse_id(s: &str) -> Option<Uuid> {
    let b = s.as_bytes();
    let hyphens_ok = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
    if !hyphens_ok {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// `createdAt` as the API writes it: RFC 3339, UTC, milliseconds, `Z`.
pub(super) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    // Only fails for years beyond 9999; fall back to the library's RFC 3339.
    t.format(fmt)
        .or_else(|_| t.format(&time::format_description::well_known::Rfc3339))
        .unwrap_or_default()
}

/// When a progressing job changes state.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    pub(super) pending_for: Duration,
    pub(super) processing_for: Duration,
}

/// What is the same in every job body of one simulator.
#[derive(Debug)]
pub(super) struct RenderCtx {
    /// `http://127.0.0.1:PORT`, for `links`.
    pub(super) origin: String,
    pub(super) workspace_id: String,
    pub(super) user_id: String,
    /// Sign CDN links (S3 SigV4 style) for this long from each render; `None`: links
    /// that say no expiry.
    pub(super) link_lifetime: Option<Duration>,
}

/// How a job's state is decided.
#[derive(Clone, Debug)]
pub(super) enum JobState {
    /// Always this (`None` is JSON `null`).
    Fixed(Option<String>),
    /// `pending`, then `processing`, then `completed`, counted from `since`.
    Progressing { since: Instant },
}

impl JobState {
    /// Whether it reads `completed` at `now`; [`JobState::current`] without
    /// the allocation, for the webhook ticker's scan.
    fn is_completed(&self, schedule: &Schedule, now: Instant) -> bool {
        match self {
            JobState::Fixed(s) => s.as_deref() == Some("completed"),
            JobState::Progressing { since } => {
                now.saturating_duration_since(*since)
                    >= schedule.pending_for + schedule.processing_for
            }
        }
    }

    fn current(&self, schedule: &Schedule, now: Instant) -> Option<String> {
        match self {
            JobState::Fixed(s) => s.clone(),
            JobState::Progressing { since } => {
                let elapsed = now.saturating_duration_since(*since);
                let s = if elapsed < schedule.pending_for {
                    "pending"
                } else if elapsed < schedule.pending_for + schedule.processing_for {
                    "processing"
                } else {
                    "completed"
                };
                Some(s.to_owned())
            }
        }
    }
}

/// A body given verbatim by [`super::Simulator::add_job_with_body`].
struct RawBody {
    body: Bytes,
    /// Whether it may be embedded in a list response.
    is_json: bool,
}

/// A rendered body, valid while the job's state and the padding are unchanged.
struct Cached {
    state: Option<String>,
    padding_gen: u64,
    body: Bytes,
}

struct Job {
    scope: Option<Uuid>,
    /// Insertion order, to order jobs with equal `createdAt`.
    seq: u64,
    created_at: OffsetDateTime,
    name: Option<String>,
    url: Option<String>,
    kind: String,
    state: JobState,
    raw: Option<RawBody>,
    cache: Option<Cached>,
}

/// The mutable part of [`Jobs`].
#[derive(Default)]
struct Store {
    jobs: HashMap<Uuid, Job>,
    next_seq: u64,
    padding: Padding,
    /// Bumped by every padding change, invalidating every cached body.
    padding_gen: u64,
    redirect: Option<String>,
    webhooks: HashMap<Option<Uuid>, String>,
    /// Jobs on their way to `completed` (progressing, or just set to it) whose
    /// completion has not been noticed yet: the webhook ticker only scans
    /// these, and removing an id when it is noticed is what makes the
    /// notification once per completion. Empty when webhooks are off.
    armed: HashSet<Uuid>,
}

/// Everything a job body is rendered from, copied out of the lock so that
/// rendering a large (padded) body does not block other requests.
struct JobView {
    id: Uuid,
    created_at: OffsetDateTime,
    name: Option<String>,
    url: Option<String>,
    kind: String,
    state: Option<String>,
}

/// Outcome of a reprocess request.
pub(super) enum Reprocess {
    NotFound,
    NotFailed,
    Done,
}

/// All jobs of one simulator, with their scopes and states.
pub(super) struct Jobs {
    ctx: Arc<RenderCtx>,
    schedule: Schedule,
    /// Whether completions are tracked for webhooks; off, nothing is armed,
    /// so a simulator without webhooks keeps no set that nobody drains.
    notify: bool,
    store: Mutex<Store>,
}

impl Jobs {
    pub(super) fn new(ctx: RenderCtx, schedule: Schedule, notify: bool) -> Jobs {
        Jobs {
            ctx: Arc::new(ctx),
            schedule,
            notify,
            store: Mutex::new(Store::default()),
        }
    }

    /// Takes the armed jobs that now read `completed`, with their scopes:
    /// each completion is returned once.
    pub(super) fn take_completed(&self) -> Vec<(Uuid, Option<Uuid>)> {
        let mut st = lock(&self.store);
        let Store { jobs, armed, .. } = &mut *st;
        if armed.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut done = Vec::new();
        armed.retain(|id| match jobs.get(id) {
            Some(job) if job.state.is_completed(&self.schedule, now) => {
                done.push((*id, job.scope));
                false
            }
            Some(_) => true,
            None => false,
        });
        done
    }

    fn insert(
        &self,
        id: Uuid,
        scope: Option<Uuid>,
        state: JobState,
        created_at: OffsetDateTime,
        name: Option<String>,
        url: Option<String>,
    ) {
        let mut st = lock(&self.store);
        let seq = st.next_seq;
        st.next_seq += 1;
        // A job born completed (`add_completed`) never became completed, so
        // only progressing ones are watched.
        if self.notify && matches!(state, JobState::Progressing { .. }) {
            st.armed.insert(id);
        }
        st.jobs.insert(
            id,
            Job {
                scope,
                seq,
                created_at,
                name,
                url,
                kind: "document".to_owned(),
                state,
                raw: None,
                cache: None,
            },
        );
    }

    /// Adds a job with a generated id and name.
    pub(super) fn add(
        &self,
        scope: Option<Uuid>,
        state: JobState,
        created_at: OffsetDateTime,
    ) -> Uuid {
        let id = new_uuid();
        let simple = id.simple().to_string();
        let name = format!("sim-document-{}.pdf", &simple[..8]);
        self.insert(id, scope, state, created_at, Some(name), None);
        id
    }

    /// Adds a job as `POST /v2/extract` does: created now, progressing.
    pub(super) fn create(
        &self,
        scope: Option<Uuid>,
        name: Option<String>,
        url: Option<String>,
    ) -> Uuid {
        let id = new_uuid();
        let state = JobState::Progressing {
            since: Instant::now(),
        };
        self.insert(id, scope, state, OffsetDateTime::now_utc(), name, url);
        id
    }

    /// Adds (or replaces) a job served with exactly `body`.
    pub(super) fn add_raw(&self, scope: Option<Uuid>, id: Uuid, body: Bytes) {
        // Best effort: take the state and kind from the body so that chunks,
        // downloads and list filters treat the job consistently with it.
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let is_json = parsed.is_some();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let state = field("state");
        let kind = field("kind").unwrap_or_else(|| "document".to_owned());
        let mut st = lock(&self.store);
        let seq = st.next_seq;
        st.next_seq += 1;
        // It may replace a job that was on its way to completion.
        st.armed.remove(&id);
        st.jobs.insert(
            id,
            Job {
                scope,
                seq,
                created_at: OffsetDateTime::now_utc(),
                name: None,
                url: None,
                kind,
                state: JobState::Fixed(state),
                raw: Some(RawBody { body, is_json }),
                cache: None,
            },
        );
    }

    /// Fixes a job's state; also drops an odd body given by `add_raw`.
    ///
    /// Setting `completed` on a job that did not read `completed` arms it for
    /// the webhook ticker; any other state disarms it (it will not complete).
    pub(super) fn set_state(&self, id: Uuid, state: Option<String>) {
        let mut st = lock(&self.store);
        let Store { jobs, armed, .. } = &mut *st;
        if let Some(job) = jobs.get_mut(&id) {
            let was_completed = job.state.is_completed(&self.schedule, Instant::now());
            let completes = state.as_deref() == Some("completed");
            job.state = JobState::Fixed(state);
            job.raw = None;
            job.cache = None;
            if !completes {
                armed.remove(&id);
            } else if self.notify && !was_completed {
                armed.insert(id);
            }
        }
    }

    pub(super) fn set_padding(&self, padding: Padding) {
        let mut st = lock(&self.store);
        st.padding = padding;
        st.padding_gen += 1;
    }

    pub(super) fn set_redirect(&self, to: Option<String>) {
        lock(&self.store).redirect = to;
    }

    pub(super) fn redirect(&self) -> Option<String> {
        lock(&self.store).redirect.clone()
    }

    pub(super) fn webhook(&self, scope: Option<Uuid>) -> Option<String> {
        lock(&self.store).webhooks.get(&scope).cloned()
    }

    pub(super) fn set_webhook(&self, scope: Option<Uuid>, url: Option<String>) {
        let mut st = lock(&self.store);
        match url {
            Some(u) => st.webhooks.insert(scope, u),
            None => st.webhooks.remove(&scope),
        };
    }

    /// The current state of job `id` if it exists in `scope`
    /// (`Some(None)` is a job whose state is `null`).
    pub(super) fn state(&self, scope: Option<Uuid>, id: Uuid) -> Option<Option<String>> {
        let st = lock(&self.store);
        let job = st.jobs.get(&id).filter(|j| j.scope == scope)?;
        Some(job.state.current(&self.schedule, Instant::now()))
    }

    /// Turns a failed job back into a progressing one.
    pub(super) fn reprocess(&self, scope: Option<Uuid>, id: Uuid) -> Reprocess {
        let mut st = lock(&self.store);
        let Some(job) = st.jobs.get_mut(&id).filter(|j| j.scope == scope) else {
            return Reprocess::NotFound;
        };
        let current = job.state.current(&self.schedule, Instant::now());
        if current.as_deref() != Some("failed") {
            return Reprocess::NotFailed;
        }
        job.state = JobState::Progressing {
            since: Instant::now(),
        };
        job.raw = None;
        job.cache = None;
        // It will complete again, and that completion is notified again.
        if self.notify {
            st.armed.insert(id);
        }
        Reprocess::Done
    }

    /// The GET body of job `id` if it exists in `scope`.
    pub(super) fn body(&self, scope: Option<Uuid>, id: Uuid) -> Option<Bytes> {
        let (view, padding, padding_gen) = {
            let st = lock(&self.store);
            let job = st.jobs.get(&id).filter(|j| j.scope == scope)?;
            if let Some(raw) = &job.raw {
                return Some(raw.body.clone());
            }
            let state = job.state.current(&self.schedule, Instant::now());
            // Signed links are signed at each render: nothing rendered is reused then.
            if let Some(c) = job
                .cache
                .as_ref()
                .filter(|_| self.ctx.link_lifetime.is_none())
            {
                if c.state == state && c.padding_gen == st.padding_gen {
                    return Some(c.body.clone());
                }
            }
            let view = JobView {
                id,
                created_at: job.created_at,
                name: job.name.clone(),
                url: job.url.clone(),
                kind: job.kind.clone(),
                state,
            };
            (view, st.padding, st.padding_gen)
        };
        let body = render(&view, &self.ctx, padding);
        let mut st = lock(&self.store);
        if let Some(job) = st.jobs.get_mut(&id) {
            // Keyed by the inputs it was rendered from, so a concurrent state
            // or padding change can never make a stale entry look current.
            job.cache = Some(Cached {
                state: view.state,
                padding_gen,
                body: body.clone(),
            });
        }
        Some(body)
    }

    /// A completed job body for an id that need not exist (the truncated
    /// fault's payload).
    pub(super) fn synthetic_body(&self, id: Uuid) -> Bytes {
        let padding = lock(&self.store).padding;
        let view = JobView {
            id,
            created_at: OffsetDateTime::now_utc() - time::Duration::minutes(1),
            name: Some("sim-document.pdf".to_owned()),
            url: None,
            kind: "document".to_owned(),
            state: Some("completed".to_owned()),
        };
        render(&view, &self.ctx, padding)
    }

    /// Ids of the jobs of `scope`, newest first, optionally filtered by
    /// current state and kind. Odd bodies that are not JSON are left out,
    /// since they cannot be embedded in the list.
    pub(super) fn list(
        &self,
        scope: Option<Uuid>,
        state: Option<&str>,
        kind: Option<&str>,
    ) -> Vec<Uuid> {
        let st = lock(&self.store);
        let now = Instant::now();
        let mut found: Vec<(&Uuid, &Job)> = st
            .jobs
            .iter()
            .filter(|(_, j)| j.scope == scope)
            .filter(|(_, j)| j.raw.as_ref().is_none_or(|r| r.is_json))
            .filter(|(_, j)| kind.is_none_or(|k| j.kind == k))
            .filter(|(_, j)| {
                state.is_none_or(|s| j.state.current(&self.schedule, now).as_deref() == Some(s))
            })
            .collect();
        found.sort_by_key(|(_, j)| std::cmp::Reverse((j.created_at, j.seq)));
        found.into_iter().map(|(id, _)| *id).collect()
    }
}

/// Serializes a value whose serialization cannot fail (plain structs, string
/// keys); the fallback only exists so that this can never panic.
pub(super) fn to_json(v: &impl Serialize) -> Bytes {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"null"))
}

/// Renders a job body, padded to about its share of `padding` when it has an
/// extraction.
fn render(view: &JobView, ctx: &RenderCtx, padding: Padding) -> Bytes {
    let plain = to_json(&job_json(view, ctx, ""));
    let seed = {
        let id = view.id.as_u128();
        (id as u64) ^ ((id >> 64) as u64)
    };
    let target = super::text::spread(seed, padding.min, padding.max);
    if target <= plain.len() || !has_extraction(view.state.as_deref()) {
        return plain;
    }
    // The filler is plain ASCII, which JSON does not escape, so the body grows by
    // exactly its length; it leads with a space, after the caption's full stop.
    let filler = format!(" {}", super::text::prose(seed, target - plain.len() - 1));
    to_json(&job_json(view, ctx, &filler))
}

/// Only finished jobs carry an extraction and links (`cleaned` ones keep
/// theirs; the CDN URLs in it are simply dead by then).
fn has_extraction(state: Option<&str>) -> bool {
    matches!(state, Some("completed") | Some("cleaned"))
}

fn job_json<'a>(view: &'a JobView, ctx: &'a RenderCtx, pad: &str) -> JobJson<'a> {
    let id = view.id.hyphenated().to_string();
    let created_at = format_time(view.created_at);
    let done = has_extraction(view.state.as_deref());
    let signed_at = OffsetDateTime::now_utc();
    let cdn = |file: &str| {
        match ctx.link_lifetime {
        None => format!(
            "https://cdn.exabase.io/{id}/{file}?X-Amz-Signature=abc123&X-Amz-Expires=86400"
        ),
        // Signed at each render, as a presigning API does on every GET.
        Some(lifetime) => format!(
            "https://cdn.exabase.io/{id}/{file}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={:04}{:02}{:02}T{:02}{:02}{:02}Z&X-Amz-Expires={}&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123",
            signed_at.year(),
            u8::from(signed_at.month()),
            signed_at.day(),
            signed_at.hour(),
            signed_at.minute(),
            signed_at.second(),
            lifetime.as_secs()
        ),
    }
    };
    let extraction = done.then(|| Extraction {
        common: Common {
            mime_type: "application/pdf",
            size: 482_133,
            infected: false,
            caption: format!("A simulated document for exagate tests.{pad}"),
            keywords: ["simulation", "exabase", "exagate"],
            thumbnail: cdn("thumbnail.png"),
            chunk_count: CHUNK_COUNT,
        },
        media: Media {
            width: None,
            height: None,
            duration: None,
            codec: None,
            bit_rate: None,
            frame_rate: None,
            sample_rate: None,
            channels: None,
            color: serde_json::json!({"profile": null, "space": null, "alphaChannel": null, "pixelFormat": null}),
            location: serde_json::json!({"latitude": null, "longitude": null}),
            device: serde_json::json!({"maker": null, "model": null, "software": null}),
            dominant_colors: Vec::new(),
            ocr: None,
            screenshot: Some(Asset {
                url: cdn("screenshot.png"),
                width: Some(1240),
                height: Some(1754),
                mime: Some("image/png"),
                size: None,
            }),
            transcript: None,
        },
        document: Document {
            pages: CHUNK_COUNT.div_ceil(CHUNKS_PER_PAGE),
            author: "Exabase Simulator",
            title: view.name.as_deref().unwrap_or("Simulated document"),
            subject: "Simulation",
            creator: "exagate",
            producer: "exagate sim",
            security: false,
            version: "1.7",
            creation_date: created_at.clone(),
            modification_date: created_at.clone(),
            pdf_render: Asset {
                url: cdn("render.pdf"),
                width: None,
                height: None,
                mime: Some("application/pdf"),
                size: Some(482_133),
            },
        },
        web: None,
    });
    let links = done.then(|| Links {
        chunks: format!("{}/v2/extract/{id}/chunks?start=1&end=20", ctx.origin),
        download: format!("{}/v2/extract/{id}/download", ctx.origin),
    });
    JobJson {
        id,
        workspace_id: &ctx.workspace_id,
        user_id: &ctx.user_id,
        kind: &view.kind,
        name: view.name.as_deref(),
        url: view.url.as_deref(),
        state: view.state.as_deref(),
        created_at,
        extraction,
        links,
    }
}

// The shapes below follow samples/job-reference-sample.json, field order included.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobJson<'a> {
    id: String,
    workspace_id: &'a str,
    user_id: &'a str,
    kind: &'a str,
    name: Option<&'a str>,
    url: Option<&'a str>,
    state: Option<&'a str>,
    created_at: String,
    extraction: Option<Extraction<'a>>,
    links: Option<Links>,
}

#[derive(Serialize)]
struct Extraction<'a> {
    common: Common,
    media: Media,
    document: Document<'a>,
    web: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Common {
    mime_type: &'static str,
    size: u64,
    infected: bool,
    caption: String,
    keywords: [&'static str; 3],
    thumbnail: String,
    chunk_count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Media {
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<f64>,
    codec: Option<&'static str>,
    bit_rate: Option<u64>,
    frame_rate: Option<f64>,
    sample_rate: Option<u32>,
    channels: Option<u32>,
    color: Value,
    location: Value,
    device: Value,
    dominant_colors: Vec<Value>,
    ocr: Option<&'static str>,
    screenshot: Option<Asset>,
    transcript: Option<Asset>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    pages: u64,
    author: &'static str,
    title: &'a str,
    subject: &'static str,
    creator: &'static str,
    producer: &'static str,
    security: bool,
    version: &'static str,
    creation_date: String,
    modification_date: String,
    pdf_render: Asset,
}

/// A CDN file reference (`screenshot`, `pdfRender`, ...).
#[derive(Serialize)]
struct Asset {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    mime: Option<&'static str>,
}

#[derive(Serialize)]
struct Links {
    chunks: String,
    download: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Jobs {
        let ctx = RenderCtx {
            origin: "http://127.0.0.1:1".to_owned(),
            workspace_id: new_uuid().to_string(),
            user_id: new_uuid().to_string(),
            link_lifetime: None,
        };
        let schedule = Schedule {
            pending_for: Duration::from_secs(60),
            processing_for: Duration::from_secs(60),
        };
        Jobs::new(ctx, schedule, true)
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        let b = new_uuid();
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
    }

    #[test]
    fn parse_id_is_strict_but_case_insensitive() {
        let id = new_uuid();
        assert_eq!(parse_id(&id.to_string().to_uppercase()), Some(id));
        assert_eq!(parse_id(&id.simple().to_string()), None);
        assert_eq!(parse_id(&format!("{{{id}}}")), None);
        assert_eq!(parse_id("not-a-uuid"), None);
    }

    #[test]
    fn time_has_millis_and_z() {
        let t = time::macros::datetime!(2026-05-28 14:02:02.644 +02:00);
        assert_eq!(format_time(t), "2026-05-28T12:02:02.644Z");
    }

    #[test]
    fn padding_reaches_the_requested_size() {
        let j = jobs();
        let id = j.add(
            None,
            JobState::Fixed(Some("completed".into())),
            OffsetDateTime::now_utc(),
        );
        j.set_padding(Padding::fixed(2048));
        assert_eq!(j.body(None, id).map(|b| b.len()), Some(2048));
        j.set_padding(Padding::default());
        assert!(j.body(None, id).is_some_and(|b| b.len() < 2048));
    }

    #[test]
    fn each_completion_is_taken_once() {
        let ctx = RenderCtx {
            origin: "http://127.0.0.1:1".to_owned(),
            workspace_id: new_uuid().to_string(),
            user_id: new_uuid().to_string(),
            link_lifetime: None,
        };
        let instant = Schedule {
            pending_for: Duration::ZERO,
            processing_for: Duration::ZERO,
        };
        let j = Jobs::new(ctx, instant, true);
        let base = new_uuid();
        let born_done = j.add(
            None,
            JobState::Fixed(Some("completed".into())),
            OffsetDateTime::now_utc(),
        );
        let progressing = j.create(Some(base), None, None);
        assert_eq!(j.take_completed(), vec![(progressing, Some(base))]);
        assert!(j.take_completed().is_empty());
        // Already completed: setting it again is no new completion.
        j.set_state(born_done, Some("completed".into()));
        assert!(j.take_completed().is_empty());
        j.set_state(born_done, Some("failed".into()));
        assert!(matches!(j.reprocess(None, born_done), Reprocess::Done));
        assert_eq!(j.take_completed(), vec![(born_done, None)]);
        // Disarmed by a state that is not completed.
        let pending = j.add(
            None,
            JobState::Fixed(Some("pending".into())),
            OffsetDateTime::now_utc(),
        );
        j.set_state(pending, Some("completed".into()));
        j.set_state(pending, Some("failed".into()));
        assert!(j.take_completed().is_empty());
    }

    #[test]
    fn scopes_are_separate() {
        let j = jobs();
        let base = new_uuid();
        let id = j.add(Some(base), JobState::Fixed(None), OffsetDateTime::now_utc());
        assert!(j.body(None, id).is_none());
        assert!(j.body(Some(base), id).is_some());
        assert_eq!(j.list(Some(base), None, None), vec![id]);
        assert!(j.list(None, None, None).is_empty());
    }
}
