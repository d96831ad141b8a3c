//! The `exagate` command: parse arguments, load the config, start logging, run.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: a cache is many long-lived 2 KB bodies
/// interleaved with short-lived request buffers, the pattern that fragments glibc's heap;
/// measured in the load harness's memory scenario (see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use exagate::{ApiKey, Config};

/// A caching reverse proxy gateway for the Exabase Extract API.
#[derive(Parser)]
#[command(name = "exagate", version, about)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        env = "EXAGATE_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    /// What to do (default: run).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the config file (the default).
    Run,
    /// Validate the config and the API key, print the effective config (key redacted).
    Check,
    /// Start a simulated Extract API and a gateway in front of it; needs no key and no
    /// network.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Exit 0 when the admin listener answers `/healthz` (for container health checks;
    /// needs no key).
    Healthcheck,
    /// Read a client token on stdin, print its SHA-256 for `[[clients]] token_sha256`.
    HashToken,
    /// The account's webhook, which the gateway owns while `[webhooks]` is on.
    Webhooks {
        /// What to do with it.
        #[command(subcommand)]
        action: WebhooksAction,
    },
    /// Run only the simulated Extract API (for load tests with external tools).
    #[command(hide = true)]
    Sim {
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The key it accepts.
        #[arg(long, default_value = "sim-key")]
        key: String,
        /// Completed jobs to create up front; their ids are printed one per line.
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        /// Pad job bodies to about this many bytes (`2048`), or each to its own length
        /// in a range (`1024-8192`).
        #[arg(long, default_value = "0")]
        padding: exagate::sim::Padding,
    },
}

#[derive(Subcommand)]
enum WebhooksAction {
    /// Point the account's webhook URL at this gateway's receiver (`webhooks.public_url`
    /// + the receiver path), with the key; the secret is not printed.
    Register,
    /// Say whether the account's webhook points at this gateway (exit 1 when it does not).
    Status,
    /// Print a new random receiver secret (for `webhooks.secret_env` or `secret_file`).
    Secret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "exagate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(&cli.config).await,
            Command::Check => check(&cli.config),
            Command::HashToken => hash_token(),
            Command::Webhooks { action } => webhooks(&cli.config, action).await,
            Command::Healthcheck => healthcheck(&cli.config).await,
            Command::Demo { listen } => exagate::demo::run(listen, shutdown_signal()).await,
            Command::Sim {
                listen,
                key,
                jobs,
                padding,
            } => exagate::demo::run_sim(listen, key, jobs, padding, shutdown_signal()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`, which panics (exit 101) when stderr is a full disk or a
            // closed pipe: the exit status must still say what happened.
            let _ = writeln!(std::io::stderr(), "exagate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &std::path::Path) -> Result<(), exagate::BoxError> {
    let config = Config::load(path)?;
    let _log = exagate::telemetry::init(&config.log)?;
    let key = ApiKey::load(&config.upstream)?;
    tracing::info!(key_source = %key.source(), "API key loaded");
    let running = exagate::bind_and_start(config, Some(path.to_path_buf()), key).await?;
    // SIGHUP reloads; SIGTERM/SIGINT drain and stop.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by the reload itself.
                    let _ = running.reload().await;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received: draining");
    running.shutdown().await;
    Ok(())
}

async fn healthcheck(path: &std::path::Path) -> Result<(), exagate::BoxError> {
    let config = Config::load(path)?;
    let mut addr = config
        .admin
        .listen
        .ok_or("admin.listen is not set: there is no /healthz to check")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/healthz").parse()?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri))
        .await
        .map_err(|_| "no answer from /healthz within 3s")??;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("/healthz answered {}", response.status()).into())
    }
}

fn check(path: &std::path::Path) -> Result<(), exagate::BoxError> {
    let config = Config::load(path)?;
    let key = ApiKey::load(&config.upstream)?;
    if let Some(shared) = &config.shared {
        // The URL may come from a variable: what `run` would refuse, `check` refuses too
        // (naming the setting, never showing the URL).
        let (url, _) = shared.url()?;
        exagate::config::check_redis_url(&url)
            .map_err(|m| format!("invalid value for `shared.redis_url`: {m}"))?;
    }
    // Written, not `println!`ed: a closed pipe (`exagate check | head`) or a full disk
    // is an error to report, not a panic.
    if let Some(hooks) = &config.webhooks {
        // The secrets `run` reads at start: what it would refuse, `check` refuses too.
        exagate::webhooks::WebhooksLive::new(hooks)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "# {}: valid", path.display())?;
    writeln!(
        out,
        "# API key: loaded from {} (value not shown)",
        key.source()
    )?;
    for line in exagate::config::describe(&config) {
        writeln!(out, "# {line}")?;
    }
    writeln!(out)?;
    write!(out, "{config}")?;
    out.flush()?;
    Ok(())
}

async fn webhooks(path: &std::path::Path, action: WebhooksAction) -> Result<(), exagate::BoxError> {
    use exagate::webhooks::account::{self, Pointing};
    let mut out = std::io::stdout().lock();
    if let WebhooksAction::Secret = action {
        // 256 random bits from the OS (uuid v4 reads getrandom), in path-safe hex.
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        writeln!(out, "{secret}")?;
        return Ok(());
    }
    let config = Config::load(path)?;
    let key = ApiKey::load(&config.upstream)?;
    let receiver = account::shown_receiver(&config).unwrap_or_default();
    let describe = |p: &Pointing| match p {
        Pointing::Here => format!("this gateway ({receiver})"),
        Pointing::Elsewhere(origin) => format!("somewhere else ({origin}/...)"),
        Pointing::Nowhere => "nothing (no webhook set)".to_string(),
    };
    match action {
        WebhooksAction::Register => {
            let before = account::register(&config, &key).await?;
            writeln!(
                out,
                "the account's webhook now points at {receiver} (it pointed at {}); the secret is not shown",
                describe(&before)
            )?;
        }
        WebhooksAction::Status | WebhooksAction::Secret => {
            let now = account::status(&config, &key).await?;
            writeln!(out, "the account's webhook points at {}", describe(&now))?;
            if now != Pointing::Here {
                return Err(
                    "it does not point at this gateway: run `exagate webhooks register`".into(),
                );
            }
        }
    }
    Ok(())
}

fn hash_token() -> Result<(), exagate::BoxError> {
    let mut token = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)?;
    // `echo TOKEN |` adds a newline that is not part of the token.
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err("no token on stdin (try: printf %s \"$TOKEN\" | exagate hash-token)".into());
    }
    writeln!(std::io::stdout(), "{}", exagate::auth::hash_token(token))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
