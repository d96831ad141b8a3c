//! The cache on disk (`state.dir`), so a lone gateway's restart is warm.
//!
//! Written when the gateway drains and every `state.snapshot_interval`, atomically
//! (a temporary file, flushed, then renamed over the old one), readable by its owner
//! only (bodies are the account's data). Read back at start: entries still true come
//! back as hits with their age and expiry; expired ones are dropped. A file of another
//! format, of another upstream or key, of another `server.public_url` (the bodies' links
//! point at it), or one that does not check out (truncated, corrupt) is reported in one
//! log line and the gateway starts cold: it never fails to start over its own cache.
//!
//! Layout: `XGS1` | header length u32 | header (JSON: upstream fingerprint, public URL) |
//! records | SHA-256 of everything before it. A record: key kind u8 (0 job, 1 chunks) |
//! scope kind u8 (0 workspace, 1 base, 2 legacy) | scope id (16 bytes, zero for the
//! workspace) | job id (16) | window length u16 | window | envelope length u32 |
//! envelope ([`Envelope`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::envelope::{now_ms, Envelope};
use super::{Answer, CacheKey, CacheStore, JobKey, Scope};

const MAGIC: &[u8; 4] = b"XGS1";

/// The file's name in `state.dir`.
pub const FILE: &str = "cache.snapshot";

/// What the snapshot must match to be used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Fingerprint of (upstream URL, API key), hex: another account's answers are not
    /// this gateway's.
    pub upstream: String,
    /// The public URL the stored bodies' links point at.
    pub public_url: String,
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file: the first start.
    #[error("no snapshot")]
    Missing,
    /// Unreadable.
    #[error("cannot read {0}")]
    Io(String),
    /// Not this format, or damaged.
    #[error("{0}")]
    Invalid(&'static str),
    /// Of another upstream, key or public URL.
    #[error("written for another upstream, key or server.public_url")]
    Foreign,
}

/// Writes every entry of `store` still true to `dir`, atomically. Returns how many.
pub async fn write(store: &CacheStore, dir: &Path, identity: &Identity) -> std::io::Result<usize> {
    store.run_pending_tasks().await;
    let entries = store.entries();
    let header = serde_json::to_vec(identity).map_err(std::io::Error::other)?;
    let dir = dir.to_path_buf();
    // All of it off the runtime's threads: entries held compressed are decompressed
    // (the snapshot keeps identity bodies), tens of microseconds each, seconds for a
    // full cache, which a request's thread must not wait behind.
    tokio::task::spawn_blocking(move || {
        let (now, wall) = (Instant::now(), now_ms());
        let mut out = BytesMut::with_capacity(64 * 1024);
        out.put_slice(MAGIC);
        out.put_u32(u32::try_from(header.len()).unwrap_or(u32::MAX));
        out.put_slice(&header);
        let mut count = 0;
        for (key, answer) in entries {
            let Some(envelope) = answer.envelope(now, wall) else {
                continue;
            };
            put_key(&mut out, &key);
            let bytes = envelope.encode();
            out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
            out.put_slice(&bytes);
            count += 1;
        }
        let digest = crate::auth::sha256(&out);
        out.put_slice(&digest);
        replace(&dir, &out).map(|()| count)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The file, written beside and renamed over the old one.
fn replace(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    // The rename itself reaches the disk with the directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the snapshot in `dir` into `store`. Returns (loaded, expired) counts.
pub async fn load(
    store: &CacheStore,
    dir: &Path,
    identity: &Identity,
) -> Result<(usize, usize), LoadError> {
    let path = dir.join(FILE);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Io(format!("{}: {e}", path.display()))),
    };
    let records = parse(&bytes, identity)?;
    let wall = now_ms();
    let compress = store.compresses();
    let (mut loaded, mut expired) = (0, 0);
    let mut records = records.into_iter();
    loop {
        // Compressed off the runtime's threads, a batch at a time (tens of microseconds
        // an entry; a batch bounds what is held twice meanwhile).
        let batch: Vec<_> = records.by_ref().take(LOAD_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let answers = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(key, envelope)| {
                    let answer = Answer::restored(&envelope, envelope.body.clone(), wall);
                    let answer = match (answer, compress) {
                        (Some(answer), true) => Some(answer.compressed().unwrap_or(answer)),
                        (answer, _) => answer,
                    };
                    (key, answer)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| LoadError::Io(format!("restoring the snapshot: {e}")))?;
        for (key, answer) in answers {
            match answer {
                Some(answer) => {
                    let epoch = store.epoch(key.job().job);
                    if store.insert(key, Arc::new(answer), epoch).await.is_some() {
                        loaded += 1;
                    }
                }
                None => expired += 1,
            }
        }
    }
    Ok((loaded, expired))
}

/// Snapshot records rebuilt (and compressed) per blocking task.
const LOAD_BATCH: usize = 1024;

/// The records of a snapshot whose header is `identity`'s.
fn parse(bytes: &Bytes, identity: &Identity) -> Result<Vec<(CacheKey, Envelope)>, LoadError> {
    const DIGEST: usize = 32;
    if bytes.len() < MAGIC.len() + 4 + DIGEST || &bytes[..4] != MAGIC {
        return Err(LoadError::Invalid("not a snapshot of this format"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
    if crate::auth::sha256(body) != digest {
        return Err(LoadError::Invalid("damaged (its checksum does not match)"));
    }
    let mut rest = bytes.slice(4..bytes.len() - DIGEST);
    let header_len = usize::try_from(rest.get_u32()).unwrap_or(usize::MAX);
    if rest.len() < header_len {
        return Err(LoadError::Invalid("damaged (header)"));
    }
    let header: Identity = serde_json::from_slice(&rest.split_to(header_len))
        .map_err(|_| LoadError::Invalid("damaged (header)"))?;
    if header != *identity {
        return Err(LoadError::Foreign);
    }
    let mut records = Vec::new();
    while rest.has_remaining() {
        let key = take_key(&mut rest).ok_or(LoadError::Invalid("damaged (a record's key)"))?;
        if rest.remaining() < 4 {
            return Err(LoadError::Invalid("damaged (a record)"));
        }
        let len = usize::try_from(rest.get_u32()).unwrap_or(usize::MAX);
        if rest.remaining() < len {
            return Err(LoadError::Invalid("damaged (a record)"));
        }
        let envelope = Envelope::decode(&rest.split_to(len))
            .ok_or(LoadError::Invalid("damaged (an answer)"))?;
        records.push((key, envelope));
    }
    Ok(records)
}

fn put_key(out: &mut BytesMut, key: &CacheKey) {
    let (kind, window) = match key {
        CacheKey::Job(_) => (0u8, ""),
        CacheKey::Chunks(_, window) => (1u8, &**window),
    };
    let job = key.job();
    let (scope, id) = match job.scope {
        Scope::Workspace => (0u8, Uuid::nil()),
        Scope::Base(id) => (1, id),
        Scope::Legacy(id) => (2, id),
    };
    out.put_u8(kind);
    out.put_u8(scope);
    out.put_slice(id.as_bytes());
    out.put_slice(job.job.as_bytes());
    let window = &window.as_bytes()[..window.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(window.len()).unwrap_or(u16::MAX));
    out.put_slice(window);
}

fn take_key(rest: &mut Bytes) -> Option<CacheKey> {
    if rest.remaining() < 2 + 16 + 16 + 2 {
        return None;
    }
    let kind = rest.get_u8();
    let scope_kind = rest.get_u8();
    let mut id = [0u8; 16];
    rest.copy_to_slice(&mut id);
    let mut job = [0u8; 16];
    rest.copy_to_slice(&mut job);
    let len = usize::from(rest.get_u16());
    if rest.remaining() < len {
        return None;
    }
    let window = std::str::from_utf8(&rest.split_to(len)).ok()?.to_owned();
    let scope = match scope_kind {
        0 => Scope::Workspace,
        1 => Scope::Base(Uuid::from_bytes(id)),
        2 => Scope::Legacy(Uuid::from_bytes(id)),
        _ => return None,
    };
    let job = JobKey {
        scope,
        job: Uuid::from_bytes(job),
    };
    match kind {
        0 => Some(CacheKey::Job(job)),
        1 => Some(CacheKey::Chunks(job, window.into())),
        _ => None,
    }
}
