//! exagate: a caching reverse proxy gateway for the Exabase Extract API.
//!
//! Apps call the gateway without a key; it injects the team's key, answers repeated
//! lookups of jobs from memory for as long as each job's state says the answer stays
//! true, folds concurrent misses into one upstream call, and rewrites job links so that
//! following them comes back through it.
//!
//! [`start`] runs a whole gateway in-process on a listener you bind, which is how the
//! tests and the demo use it; the binary (`src/main.rs`) only parses arguments.

pub mod auth;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod guard;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::Config;
pub use error::BoxError;
pub use gateway::Gateway;
pub use secret::ApiKey;

/// A gateway serving in the background.
pub struct RunningGateway {
    /// The address it accepts on.
    pub addr: SocketAddr,
    /// Its shared state (cache, upstream client), for inspection.
    pub gateway: Arc<Gateway>,
    /// Fires the shutdown.
    stop: Option<oneshot::Sender<()>>,
    /// The serving task.
    task: JoinHandle<()>,
}

impl RunningGateway {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (within the configured grace), and
    /// waits until it has.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts a gateway on an already bound listener.
pub fn start(
    config: &Config,
    key: ApiKey,
    listener: TcpListener,
) -> Result<RunningGateway, BoxError> {
    let addr = listener.local_addr()?;
    let gateway = Gateway::new(config, key)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls::TlsTerminator::new)
        .transpose()?
        .map(Arc::new);
    let task = tokio::spawn(server::serve(
        Arc::clone(&gateway),
        listener,
        tls,
        server::ServerLimits::from_config(&config.server),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(RunningGateway {
        addr,
        gateway,
        stop: Some(stop),
        task,
    })
}

/// Binds `server.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: &Config,
    key: ApiKey,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let gateway = Gateway::new(config, key)?;
    if config.clients.is_empty() && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.server.listen,
            "no [[clients]] configured: anyone who can reach this address can spend the team's quota"
        );
    }
    tracing::info!(
        listen = %config.server.listen,
        upstream = %config.upstream.url,
        public_url = %config.server.public_url,
        "exagate serving"
    );
    let tls = config
        .server
        .tls
        .as_ref()
        .map(tls::TlsTerminator::new)
        .transpose()?
        .map(Arc::new);
    server::serve(
        gateway,
        listener,
        tls,
        server::ServerLimits::from_config(&config.server),
        shutdown,
    )
    .await;
    Ok(())
}
