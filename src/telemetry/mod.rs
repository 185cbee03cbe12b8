//! Logging: one JSON object per line on stdout (`LOG_FORMAT=json`, the
//! default) with the event's fields at the top level, or a human format
//! (`pretty`). A panic anywhere becomes one `error` event through the same
//! subscriber instead of the default multi-line stderr output.

mod json;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber and the panic hook. Call once, from `main`.
pub fn init(config: &Config) {
    // tokio-postgres logs server NOTICEs at info ("relation already
    // exists, skipping"): noise unless asked for by name.
    let mut directives = config.rust_log.clone();
    if !directives.contains("tokio_postgres") {
        directives.push_str(",tokio_postgres=warn");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match config.log_format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson)
            .init(),
        LogFormat::Pretty => builder.pretty().init(),
    }
    install_panic_hook();
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
