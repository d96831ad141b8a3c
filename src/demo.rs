//! `exagate demo`: the simulated Extract API and a gateway in front of it, on loopback,
//! so a newcomer sees the whole thing work with no key and no network.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::secret::{ApiKey, KeySource};
use crate::sim::{SimOptions, Simulator};
use crate::BoxError;

/// The key the demo's simulator requires; the gateway holds it, the user never types it.
const DEMO_KEY: &str = "demo-key-held-by-the-gateway";

/// Runs the demo until `shutdown` resolves.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let sim = Simulator::start(SimOptions {
        api_key: DEMO_KEY.to_string(),
        pending_for: Duration::from_secs(3),
        processing_for: Duration::from_secs(4),
        ..SimOptions::default()
    })
    .await?;
    let finished = sim.add_completed(None);
    let polling = sim.add_progressing(None);

    let mut config = Config::defaults();
    config.server.listen = listen;
    config.server.public_url = format!("http://{listen}");
    config.upstream.url = sim.url();
    config.validate()?;
    // A second `init` (tests calling `run` twice) is harmless; keep the first subscriber.
    let _log = crate::telemetry::init(&config.log);
    let key = ApiKey::from_secret(DEMO_KEY, KeySource::Env("(demo)".to_string()))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e} (try --listen 127.0.0.1:8081)"))?;
    config.admin.listen = None;
    let gateway = crate::start(crate::Launch::in_memory(config, key, listener))?;

    let gw = gateway.url();
    let text = format!(
        "\n\
exagate demo: a simulated Extract API at {sim_url}, and exagate in front of it at {gw}.
The gateway holds the key; you call it with none. Try, in another terminal:

  # a finished job: the first call is a miss (one upstream call), the next ones hits
  curl -si {gw}/v2/extract/{finished} | grep -i '^x-cache'
  curl -si {gw}/v2/extract/{finished} | grep -i '^x-cache'

  # its links now point at the gateway; follow one (cached too, while the job is completed)
  curl -s {gw}/v2/extract/{finished} | grep -o '\"links\":{{[^}}]*}}'
  curl -s '{gw}/v2/extract/{finished}/chunks?start=1&end=20' | head -c 300; echo

  # a job that completes about 7 s after start: poll it like an SDK does
  for i in $(seq 10); do curl -s {gw}/v2/extract/{polling} | grep -o '\"state\":\"[a-z]*\"'; sleep 1; done

  # the download streams through, never cached
  curl -s -o /dev/null -w '%{{size_download}} bytes, x-cache bypass\\n' {gw}/v2/extract/{finished}/download

  # the gateway refuses what is not a job id, without an upstream call
  curl -si {gw}/v2/extract/not-a-job | head -1

Ctrl-C stops both.
",
        sim_url = sim.url(),
    );
    let _ = std::io::stdout().write_all(text.as_bytes());
    let _ = std::io::stdout().flush();

    shutdown.await;
    gateway.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

/// `exagate sim`: only the simulator, with `jobs` completed jobs, for external load tools.
/// Prints its URL, then one job id per line.
pub async fn run_sim(
    listen: SocketAddr,
    api_key: String,
    jobs: usize,
    padding: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    if !listen.ip().is_loopback() {
        return Err("the simulator only listens on loopback addresses".into());
    }
    let sim = Simulator::start(SimOptions {
        api_key,
        addr: listen,
        ..SimOptions::default()
    })
    .await?;
    sim.set_padding(padding);
    let ids = sim.seed_completed(None, jobs);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", sim.url())?;
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    drop(out);
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}
