//! The process's life after startup: reloads and the drain.
//!
//! One supervisor task owns both listeners and takes [`Signal`]s: from the binary (SIGHUP,
//! SIGTERM), from the file watcher, or from a test through [`crate::RunningGateway`].
//! Reload is parse, validate, swap: a bad file is refused whole and the running config
//! keeps serving. Drain is: fail `/readyz` at once, keep serving for
//! `server.drain_delay` so load balancers notice, then stop accepting and let in-flight
//! requests finish within `server.shutdown_timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::ResultLabels;
use crate::secret::ApiKey;
use crate::tls::TlsTerminator;

/// What the supervisor is asked to do.
pub enum Signal {
    /// Re-read the config file (and the key, tokens, certificates); the reply says how
    /// it went: warnings on success, the reason on refusal.
    Reload(Option<oneshot::Sender<Result<Vec<String>, String>>>),
    /// Drain and stop.
    Shutdown,
}

/// Reads the config file and everything it points at, and swaps it in.
pub async fn reload(
    gateway: &Gateway,
    tls: Option<&TlsTerminator>,
    path: &Path,
) -> Result<Vec<String>, String> {
    let result = async {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let key = ApiKey::load(&config.upstream).map_err(|e| e.to_string())?;
        if let (Some(tls), Some(files)) = (tls, config.server.tls.as_ref()) {
            tls.reload(files).map_err(|e| e.to_string())?;
        }
        gateway.reload(config, key).await.map_err(|e| e.to_string())
    }
    .await;
    let label = if result.is_ok() { "ok" } else { "error" };
    gateway
        .metrics
        .reloads
        .get_or_create(&ResultLabels { result: label })
        .inc();
    match &result {
        Ok(warnings) => {
            tracing::info!(config = %path.display(), "configuration reloaded");
            for warning in warnings {
                tracing::warn!("{warning}");
            }
        }
        Err(why) => tracing::error!(
            config = %path.display(),
            error = %why,
            "configuration reload refused; the running configuration stays in force"
        ),
    }
    result
}

/// The files whose change triggers a reload: the config, and the key and certificates
/// it names (a rotated Kubernetes Secret or a renewed certificate is picked up too).
fn watched_files(config_path: &Path, gateway: &Gateway) -> Vec<PathBuf> {
    let live = gateway.live();
    let mut files = vec![config_path.to_path_buf()];
    files.extend(live.config.upstream.api_key_file.clone());
    if let Some(tls) = &live.config.server.tls {
        files.push(tls.cert_file.clone());
        files.push(tls.key_file.clone());
    }
    if let Some(hooks) = &live.config.webhooks {
        files.extend(hooks.secret_file.clone());
    }
    files
}

/// What identifies a version of a file: modification time and length (following
/// symlinks, which is how Kubernetes swaps ConfigMap and Secret files).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The current stamps of the watched files.
pub fn stamps(config_path: &Path, gateway: &Gateway) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    watched_files(config_path, gateway)
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// Polls the config (and the files it names) and asks for a reload when one changes.
/// Polling rather than inotify: it sees through the symlink swaps of mounted ConfigMaps
/// and works the same on every filesystem. `known` is taken by the caller at startup,
/// so a change made right after startup is not mistaken for the original.
pub async fn watch_files(
    config_path: PathBuf,
    gateway: Arc<Gateway>,
    signals: mpsc::UnboundedSender<Signal>,
    every: Duration,
    mut known: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
) {
    loop {
        tokio::time::sleep(every).await;
        let changed = known.iter().any(|(p, s)| stamp(p) != *s);
        if changed {
            // Stamp before reloading: a write during the reload is seen next round.
            known = stamps(&config_path, &gateway);
            tracing::info!("a watched file changed; reloading");
            let (tx, rx) = oneshot::channel();
            if signals.send(Signal::Reload(Some(tx))).is_err() {
                return;
            }
            let _ = rx.await;
            // The reload may have named other files (a new key file).
            let named = stamps(&config_path, &gateway);
            for (path, stamp) in named {
                if !known.iter().any(|(p, _)| *p == path) {
                    known.push((path, stamp));
                }
            }
        }
    }
}

/// Reads the cache back from `state.dir` at start (when set). One log line says how it
/// went; nothing here stops the gateway from starting.
pub async fn restore_state(gateway: &Gateway) {
    let live = gateway.live();
    let Some(dir) = live.config.state.dir.clone() else {
        return;
    };
    use crate::cache::snapshot::{load, LoadError};
    match load(&gateway.cache, &dir, &live.identity).await {
        Ok((loaded, expired)) => {
            tracing::info!(
                loaded,
                expired,
                dir = %dir.display(),
                "cache restored from state.dir (expired entries dropped)"
            );
            // A restored job was seen in its scope: a webhook for it primes it there.
            for (key, answer) in gateway.cache.entries() {
                if let (crate::cache::CacheKey::Job(job), Some(_)) = (&key, answer.job_state) {
                    gateway.record_scope(&live, *job);
                }
            }
        }
        Err(LoadError::Missing) => {
            tracing::info!(dir = %dir.display(), "no cache snapshot in state.dir: starting cold")
        }
        Err(e) => tracing::warn!(
            dir = %dir.display(),
            reason = %e,
            "the cache snapshot in state.dir is not usable: starting cold"
        ),
    }
}

/// Writes the cache to `state.dir` (when set), saying why in the log line.
pub async fn save_state(gateway: &Gateway, why: &'static str) {
    let live = gateway.live();
    let Some(dir) = live.config.state.dir.clone() else {
        return;
    };
    match crate::cache::snapshot::write(&gateway.cache, &dir, &live.identity).await {
        Ok(entries) => {
            tracing::info!(entries, why, dir = %dir.display(), "cache written to state.dir")
        }
        Err(e) => {
            tracing::warn!(why, dir = %dir.display(), error = %e, "could not write the cache to state.dir")
        }
    }
}

/// Writes the cache every `state.snapshot_interval`, for as long as the gateway runs.
pub async fn snapshot_every(gateway: std::sync::Weak<Gateway>) {
    loop {
        let every = match gateway.upgrade() {
            Some(gw) => gw.live().config.state.snapshot_interval,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(gw) = gateway.upgrade() else { return };
        if gw.is_ready() {
            save_state(&gw, "interval").await;
        }
    }
}
