//! exagate: a caching reverse proxy gateway for the Exabase Extract API.
//!
//! Apps call the gateway without a key; it injects the team's key, answers repeated
//! lookups of jobs from memory for as long as each job's state says the answer stays
//! true, folds concurrent misses into one upstream call, and rewrites job links so that
//! following them comes back through it.
//!
//! [`start`] runs a whole gateway in-process on listeners you bind, which is how the tests
//! and the demo use it; the binary (`src/main.rs`) only parses arguments and maps OS
//! signals onto [`RunningGateway`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod guard;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod shared;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use config::Config;
pub use error::BoxError;
pub use gateway::Gateway;
use lifecycle::Signal;
pub use secret::ApiKey;

/// What [`start`] needs.
pub struct Launch {
    /// The validated config.
    pub config: Config,
    /// The file it came from, for reloads; `None` for a config built in memory.
    pub config_path: Option<PathBuf>,
    /// Poll the config file (and the key and certificate files) for changes this often;
    /// `None` reloads only on request (SIGHUP).
    pub watch_every: Option<Duration>,
    /// The loaded key.
    pub key: ApiKey,
    /// The public listener, bound by the caller (so tests can use port 0).
    pub public: TcpListener,
    /// The admin listener, if any.
    pub admin: Option<TcpListener>,
}

impl Launch {
    /// A launch for a config built in memory: no file to reload from, no admin listener
    /// (set `admin` to add one).
    pub fn in_memory(config: Config, key: ApiKey, public: TcpListener) -> Launch {
        Launch {
            config,
            config_path: None,
            watch_every: None,
            key,
            public,
            admin: None,
        }
    }
}

/// A gateway serving in the background.
pub struct RunningGateway {
    /// The public address.
    pub addr: SocketAddr,
    /// The admin address, when the admin listener is on.
    pub admin_addr: Option<SocketAddr>,
    /// Its shared state (cache, metrics), for inspection.
    pub gateway: Arc<Gateway>,
    /// Where reload and shutdown requests go.
    signals: mpsc::UnboundedSender<Signal>,
    /// The supervisor task.
    task: JoinHandle<()>,
}

impl RunningGateway {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADMIN_ADDR`, when the admin listener is on.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// Re-reads the config file, as SIGHUP does. `Ok` holds warnings for settings that
    /// need a restart; `Err` says why the new config was refused (the old one stays).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.signals
            .send(Signal::Reload(Some(tx)))
            .map_err(|_| "the gateway has stopped".to_string())?;
        rx.await
            .map_err(|_| "the gateway has stopped".to_string())?
    }

    /// Starts the drain without waiting for it (as SIGTERM does).
    pub fn begin_shutdown(&self) {
        let _ = self.signals.send(Signal::Shutdown);
    }

    /// Drains (see [`lifecycle`]) and waits until everything has stopped.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        let _ = (&mut self.task).await;
    }

    /// Waits until the gateway has stopped (after a shutdown request).
    pub async fn stopped(mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Starts a gateway on already bound listeners.
pub fn start(launch: Launch) -> Result<RunningGateway, BoxError> {
    let Launch {
        config,
        config_path,
        watch_every,
        key,
        public,
        admin,
    } = launch;
    let addr = public.local_addr()?;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let gateway = Gateway::new(&config, key)?;
    if let Some(shared) = &gateway.shared {
        shared.start(Arc::downgrade(&gateway));
    }
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls::TlsTerminator::new)
        .transpose()?
        .map(Arc::new);
    if config.open_without_address_limit() {
        tracing::warn!(
            listen = %config.server.listen,
            "no [[clients]] and no upstream.per_address_rate_limit: anyone who can reach this address can spend the team's whole quota"
        );
    } else if config.open_beyond_loopback() {
        tracing::warn!(
            listen = %config.server.listen,
            "no [[clients]] configured: each address that can reach this one may spend its upstream.per_address_rate_limit"
        );
    }
    let limits = server::ServerLimits::from_config(&config.server);
    let (signals, mut incoming) = mpsc::unbounded_channel();

    let (public_stop, public_stopped) = oneshot::channel::<()>();
    let serve = server::serve(
        Arc::clone(&gateway),
        public,
        tls.clone(),
        limits.clone(),
        async move {
            let _ = public_stopped.await;
        },
    );
    let restoring = Arc::clone(&gateway);
    let public_task = tokio::spawn(async move {
        // The listener is bound: connections wait in its queue while the snapshot is
        // read, so the first requests find the restored cache.
        lifecycle::restore_state(&restoring).await;
        drop(restoring);
        serve.await
    });
    if config.state.dir.is_some() {
        tokio::spawn(lifecycle::snapshot_every(Arc::downgrade(&gateway)));
    }
    // The relay's scheduler: idle (one look at the config every tick) without
    // subscribers, and stops when the gateway is gone.
    tokio::spawn(Arc::clone(&gateway.webhooks.relay).run(Arc::downgrade(&gateway)));
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    let admin_task = admin.map(|listener| {
        let admin = Arc::new(admin::Admin {
            gateway: Arc::clone(&gateway),
        });
        tokio::spawn(server::serve(admin, listener, None, limits, async move {
            let _ = admin_stopped.await;
        }))
    });
    let watcher = match (&config_path, watch_every) {
        (Some(path), Some(every)) => Some(tokio::spawn(lifecycle::watch_files(
            path.clone(),
            Arc::clone(&gateway),
            signals.clone(),
            every,
            lifecycle::stamps(path, &gateway),
        ))),
        _ => None,
    };

    let supervised = Arc::clone(&gateway);
    let task = tokio::spawn(async move {
        let gateway = supervised;
        while let Some(signal) = incoming.recv().await {
            match signal {
                Signal::Reload(reply) => {
                    let result = match &config_path {
                        Some(path) => lifecycle::reload(&gateway, tls.as_deref(), path).await,
                        None => Err("no config file to reload from".to_string()),
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Signal::Shutdown => break,
            }
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        // Drain: unready at once, keep serving while load balancers notice.
        gateway.set_draining();
        let live = gateway.live();
        let delay = live.config.server.drain_delay;
        drop(live);
        tracing::info!(?delay, "draining: /readyz fails, still serving");
        tokio::time::sleep(delay).await;
        let _ = public_stop.send(());
        let _ = public_task.await;
        // Every request is answered: what the cache holds now is what a restart gets back.
        lifecycle::save_state(&gateway, "drain").await;
        let _ = admin_stop.send(());
        if let Some(admin_task) = admin_task {
            let _ = admin_task.await;
        }
        tracing::info!("stopped");
    });
    Ok(RunningGateway {
        addr,
        admin_addr,
        gateway,
        signals,
        task,
    })
}

/// Binds the configured listeners and starts serving.
pub async fn bind_and_start(
    config: Config,
    config_path: Option<PathBuf>,
    key: ApiKey,
) -> Result<RunningGateway, BoxError> {
    let public = TcpListener::bind(config.server.listen).await.map_err(|e| {
        format!(
            "cannot listen on {} (server.listen): {e}",
            config.server.listen
        )
    })?;
    let admin = match config.admin.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (admin.listen): {e}"))?,
        ),
        None => None,
    };
    tracing::info!(
        listen = %config.server.listen,
        admin = ?config.admin.listen,
        upstream = %config.upstream.url,
        public_url = %config.server.public_url,
        "exagate serving"
    );
    start(Launch {
        config,
        watch_every: config_path.as_ref().map(|_| Duration::from_secs(2)),
        config_path,
        key,
        public,
        admin,
    })
}
