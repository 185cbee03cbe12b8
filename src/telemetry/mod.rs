//! Logging: one JSON object per line on stdout (`LOG_FORMAT=json`, the
//! default) with the event's fields at the top level, or a human format
//! (`pretty`). A panic anywhere becomes one `error` event through the same
//! subscriber instead of the default multi-line stderr output.
//!
//! Runtime threads never write to stdout themselves: a line goes into a
//! bounded in-memory buffer ([`LOG_BUFFER_LINES`]) that one dedicated thread
//! writes out, so a slow or blocked stdout (a full pipe, a stalled log
//! collector) cannot stall request handling or delivery. When the buffer is
//! full a line is dropped rather than waited for, and counted in
//! `email_service_log_lines_dropped_total` on `/metrics`.

mod json;

use std::io::Write;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;

use crate::config::{Config, LogFormat};

/// Lines the log buffer holds before new ones are dropped.
pub const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Installs the global subscriber and the panic hook. Call once, from `main`,
/// and keep the returned guard until the process exits: dropping it writes
/// out what is still buffered (the last lines of a shutdown).
#[must_use = "dropping the guard stops the log writer"]
pub fn init(config: &Config) -> WorkerGuard {
    // tokio-postgres logs server NOTICEs at info ("relation already
    // exists, skipping"): noise unless asked for by name.
    let mut directives = config.rust_log.clone();
    if !directives.contains("tokio_postgres") {
        directives.push_str(",tokio_postgres=warn");
    }
    // `RUST_LOG` was validated with the configuration; adding a valid
    // directive to it keeps it valid.
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = non_blocking(std::io::stdout(), LOG_BUFFER_LINES);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson)
            .init(),
        LogFormat::Pretty => builder.pretty().init(),
    }
    install_panic_hook();
    guard
}

/// A writer that hands lines to a thread writing them to `out`, holding at
/// most `lines` of them; beyond that a line is dropped, and counted where
/// `/metrics` reads it ([`crate::metrics::count_dropped_log_lines`]).
pub fn non_blocking<W: Write + Send + 'static>(out: W, lines: usize) -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(true)
        .thread_name("log-writer")
        .finish(out);
    let dropped = writer.error_counter();
    crate::metrics::count_dropped_log_lines(move || dropped.dropped_lines() as u64);
    (writer, guard)
}

/// Replaces the default hook: one structured line, with where it happened.
/// ractor still catches the unwind and reports `ActorFailed` to the
/// supervisor; this only changes how the panic is written.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(target: "panic", panic = %payload, %location, "panic");
    }));
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A stdout that takes one line and then blocks until released, as a
    /// full pipe would; records what it was given.
    struct BlockedOut {
        release: Arc<Mutex<mpsc::Receiver<()>>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for BlockedOut {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.release.lock().unwrap().recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn dropped_in_metrics() -> u64 {
        let text = crate::metrics::Metrics::new().encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("email_service_log_lines_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_full_log_buffer_drops_lines_without_blocking_and_metrics_count_them() {
        let (release, released) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = BlockedOut {
            release: Arc::new(Mutex::new(released)),
            written: written.clone(),
        };
        let (mut writer, guard) = non_blocking(out, 2);
        let started = std::time::Instant::now();
        const LINES: usize = 50;
        for n in 0..LINES {
            writer.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "writing to a blocked stdout must not block the caller"
        );
        let dropped = dropped_in_metrics();
        // The writer thread holds at most one line, the buffer two.
        assert!(
            dropped >= (LINES - 3) as u64,
            "{dropped} of {LINES} lines counted as dropped"
        );
        // Unblock stdout: what was kept is written out on drop of the guard,
        // and every line is either written or counted.
        for _ in 0..LINES {
            let _ = release.send(());
        }
        drop(writer);
        drop(guard);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let kept = text.lines().count() as u64;
        assert!(kept >= 1, "the lines in the buffer are written: {text:?}");
        assert!(text.starts_with("line 0\n"), "{text:?}");
        assert_eq!(kept + dropped_in_metrics(), LINES as u64, "{text:?}");
    }
}
