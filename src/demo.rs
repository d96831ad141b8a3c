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
    // The demo owns the simulated account's webhook: a random receiver secret in a
    // private temporary file, removed when the demo ends.
    let secret_dir = tempfile_dir()?;
    let secret_file = secret_dir.join("webhook-secret");
    write_private(
        &secret_file,
        &format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
    )?;
    config.webhooks = Some(toml::from_str(&format!(
        "secret_file = {:?}\npublic_url = {:?}\n",
        secret_file.display().to_string(),
        config.server.public_url
    ))?);
    config.validate()?;
    // A second `init` (tests calling `run` twice) is harmless; keep the first subscriber.
    let _log = crate::telemetry::init(&config.log);
    let key = ApiKey::from_secret(DEMO_KEY, KeySource::Env("(demo)".to_string()))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e} (try --listen 127.0.0.1:8081)"))?;
    config.admin.listen = None;
    let key_for_account = key.clone();
    let account_config = config.clone();
    let gateway = crate::start(crate::Launch::in_memory(config, key, listener))?;
    crate::webhooks::account::register(&account_config, &key_for_account).await?;

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

  # long-poll: one request, held until the job completes and answered the moment the
  # simulated API's webhook reaches the gateway (the demo runs one itself, below)
  id=$(curl -s -X POST {gw}/v2/extract -H 'content-type: application/json' -d '{{\"url\":\"https://example.com/a.pdf\"}}' | grep -o '\"id\":\"[^\"]*\"' | head -1 | cut -d'\"' -f4)
  time curl -s \"{gw}/v2/extract/$id?wait=30s\" | grep -o '\"state\":\"[a-z]*\"'

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
    let showing = tokio::spawn(show_long_poll(gw.clone(), sim.clone()));

    shutdown.await;
    showing.abort();
    gateway.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&secret_dir);
    Ok(())
}

/// Creates a job through the gateway and long-polls it, printing when the answer came
/// and how many upstream polls it cost (none: the create's answer and the webhook).
async fn show_long_poll(gw: String, sim: Simulator) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let created = http::Request::post(format!("{gw}/v2/extract"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"url":"https://example.com/long-poll.pdf","name":"long-poll"}"#,
        )));
    let Ok(created) = created else { return };
    let Some(job) = json_of(&client, created).await else {
        say("demo long-poll: the create failed".into());
        return;
    };
    let Some(id) = job["id"].as_str().map(str::to_owned) else {
        return;
    };
    let path = format!("/v2/extract/{id}");
    say(format!(
        "demo long-poll: created job {id}; GET {path}?wait=30s is held until it completes..."
    ));
    let started = std::time::Instant::now();
    let poll = http::Request::get(format!("{gw}{path}?wait=30s"))
        .body(http_body_util::Full::new(bytes::Bytes::new()));
    let Ok(poll) = poll else { return };
    let state = json_of(&client, poll)
        .await
        .and_then(|j| j["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(no answer)".into());
    say(format!(
        "demo long-poll: answered \"{state}\" after {:.1} s, the moment the webhook arrived; upstream polls of the job: {}",
        started.elapsed().as_secs_f64(),
        sim.calls_to(&path)
    ));
}

async fn json_of(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Option<serde_json::Value> {
    use http_body_util::BodyExt as _;
    let response = client.request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// A fresh private directory under the system's temporary directory.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("exagate-demo-{}", uuid::Uuid::new_v4().simple()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(&dir)?;
    Ok(dir)
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// `exagate sim`: only the simulator, with `jobs` completed jobs, for external load tools.
/// Prints its URL, then one job id per line.
pub async fn run_sim(
    listen: SocketAddr,
    api_key: String,
    jobs: usize,
    padding: crate::sim::Padding,
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
    sim.set_padding_spread(padding);
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
