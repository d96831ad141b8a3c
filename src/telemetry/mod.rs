//! Logging setup: a tracing subscriber from `[log]`.
//!
//! Lines are handed to a dedicated writer thread (tracing-appender's non-blocking
//! writer): a request never waits on a `write(2)` to a slow disk or pipe, which under
//! load costs throughput and, worse, tail latency. The writer is not lossy: when its
//! queue is full, requests wait rather than lines being dropped, since an access log
//! with holes is worse than a slower gateway.
//!
//! The writer thread writes through a buffer: under load it finds many lines queued at
//! once and writes them with one `write(2)` instead of one each (the log thread's system
//! time was a tenth of the gateway's CPU with the access log on). It flushes whenever
//! the queue runs empty, so a line never waits for later ones.

pub mod plain;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Keeps the log writer thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _worker: Option<WorkerGuard>,
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level` (handy for
/// a one-off debug session without editing the file). Keep the returned guard alive
/// until the process ends.
pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&config.level),
    }
    .map_err(|e| format!("log.level: {e}"))?;
    // Colours only for a person at a terminal; a file or a log shipper gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("exagate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let result = match config.format {
        LogFormat::Text => builder
            .event_format(plain::Plain::new(tracing_subscriber::fmt::format()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    match result {
        Ok(()) => Ok(LogGuard {
            _worker: Some(worker),
        }),
        Err(e) => Err(e.to_string()),
    }
}
