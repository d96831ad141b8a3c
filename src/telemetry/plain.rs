//! The text format's access lines, written without tracing-subscriber's general
//! machinery: byte for byte the line its default formatter writes with colours off, at a
//! fraction of the cost.
//!
//! One access line is written per request, and formatting it through the default
//! formatter cost more than the rest of a cache hit (3.3 µs against 1.7 µs in the
//! `hit/*` benchmarks): every field goes through two style wrappers (no-ops without
//! colours, but still `Display` calls), and every number through `fmt`'s padding logic.
//! Here the fields are written as they are recorded, numbers through `itoa`. Every
//! other line (warnings, errors, debug output, anything inside a span, and every line
//! when colours are on) goes to the default formatter unchanged.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of the access log's events.
pub const ACCESS_TARGET: &str = "exagate::access";

/// Writes access lines itself and hands every other event to `inner`.
pub struct Plain<F> {
    inner: F,
}

impl<F> Plain<F> {
    /// Access lines written here, the rest by `inner` (the default text format).
    pub fn new(inner: F) -> Plain<F> {
        Plain { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for Plain<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET
            || writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
        {
            return self.inner.format_event(ctx, writer, event);
        }
        // As the default formatter: the time (or a placeholder, a failed clock being no
        // reason to lose the line), the level padded to five, the target.
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// Writes an event's fields as `name=value`, space-separated, the message bare.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes the separator and `name=`; `false` when the field is not written at all.
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        // What the `log` bridge adds is metadata, not fields (the default skips them).
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        if !std::mem::replace(&mut self.first, false) {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }

    fn number(&mut self, field: &Field, text: &str) {
        if self.name(field) {
            self.result = self.writer.write_str(text);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.name(field) {
            return;
        }
        self.result = if field.name() == "message" && self.writer.sanitizes_ansi_escapes() {
            // A message could carry terminal control sequences: escaped, as the default
            // formatter escapes them.
            write!(Escaping(&mut *self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

/// Writes through, with the characters a terminal would act on spelled out instead:
/// ESC, BEL, BS, FF and DEL as `\xNN`, the C1 controls as `\u{NN}`.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, ch) in text.char_indices() {
            let escaped = match ch {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => true,
                ch => (0x80..=0x9f).contains(&u32::from(ch)),
            };
            if !escaped {
                continue;
            }
            self.0.write_str(&text[plain..at])?;
            if u32::from(ch) < 0x80 {
                write!(self.0, "\\x{:02x}", u32::from(ch))?;
            } else {
                write!(self.0, "\\u{{{:x}}}", u32::from(ch))?;
            }
            plain = at + ch.len_utf8();
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use http::{Method, StatusCode};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::cache::answer::XCache;
    use crate::proxy::access_log::AccessRecord;
    use crate::proxy::exchange::Exchange;

    /// A writer keeping what it is given.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            held.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// What `emit` logs, through the default text format or through [`Plain`].
    fn written(plain: bool, emit: &dyn Fn()) -> String {
        let lines = Lines::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("trace")
            .with_writer(lines.clone());
        if plain {
            let subscriber = builder
                .event_format(Plain::new(tracing_subscriber::fmt::format()))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let held = lines.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(held.clone()).expect("text")
    }

    /// Access records of every shape: a hit, a miss with its upstream call, a request
    /// that joined another's, a refusal, a client that went away.
    fn records() -> Vec<AccessRecord> {
        let record = |method: Method, path: &str, status: u16, exchange: Exchange| AccessRecord {
            started: Instant::now(),
            method,
            path: path.to_string(),
            status,
            exchange,
        };
        vec![
            record(
                Method::GET,
                "/v2/extract/123e4567-e89b-12d3-a456-426614174000",
                200,
                Exchange {
                    route: "job",
                    cache: XCache::Hit,
                    ..Exchange::default()
                },
            ),
            record(
                Method::HEAD,
                "/v2/extract/123e4567-e89b-12d3-a456-426614174000/chunks",
                200,
                Exchange {
                    route: "chunks",
                    cache: XCache::Miss,
                    upstream_status: Some(StatusCode::OK),
                    upstream_time: Some(Duration::from_micros(12_345)),
                    ..Exchange::default()
                },
            ),
            record(
                Method::GET,
                "/v2/extract/x",
                502,
                Exchange {
                    route: "job",
                    cache: XCache::Miss,
                    coalesced: true,
                    error: Some("upstream_timeout"),
                    ..Exchange::default()
                },
            ),
            record(Method::POST, "/", 499, Exchange::default()),
        ]
    }

    #[test]
    fn access_lines_are_the_default_formatters_byte_for_byte() {
        let emit = || {
            for record in records() {
                record.emit(2048, true);
                record.emit(0, false);
            }
            // Fields of every kind the visitor takes, and a message to escape.
            tracing::info!(
                target: ACCESS_TARGET,
                client = tracing::field::display("team-a"),
                text = "a \"quoted\" value\n",
                r#type = "raw",
                negative = -42i64,
                ratio = 0.5f64,
                debug = ?vec![1, 2],
                "escape \x1b[31m, \x07 and \u{85}, keep é"
            );
            tracing::info!(target: ACCESS_TARGET, only = 1u64);
            tracing::warn!(target: ACCESS_TARGET, "a warning on the access target");
            // Not access lines: the default formatter writes them either way.
            tracing::warn!(reason = "x", n = 3, "not an access line: \x1b[31m");
            tracing::error!("plain error");
        };
        let (default, plain) = (written(false, &emit), written(true, &emit));
        // Same lines but for their timestamps and durations (taken a moment apart).
        let untimed = |text: &str| -> Vec<String> {
            text.lines()
                .map(|line| {
                    let rest = line.split_once(' ').map_or("", |(_, rest)| rest);
                    rest.split(' ')
                        .map(|word| match word.starts_with("duration_us=") {
                            true => "duration_us=_",
                            false => word,
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(default.lines().count(), 13, "{default}");
        assert_eq!(untimed(&plain), untimed(&default));
        for line in plain.lines() {
            let (time, _) = line.split_once(' ').expect("a timestamp");
            assert!(time.ends_with('Z') && time.len() == 27, "{line}");
        }
        assert!(
            plain.contains("escape \\x1b[31m, \\x07 and \\u{85}, keep é"),
            "{plain}"
        );
    }
}
