//! The `email-service` binary: read the configuration, set up logging, bind
//! the listener, run until SIGTERM or SIGINT. Everything else is the library.

use std::process::ExitCode;

use email_service::config::Config;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck();
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("email-service: {e}");
            return ExitCode::from(1);
        }
    };
    // Dropped last, after the runtime: flushes the log lines still buffered
    // (the end of a shutdown) before the process exits.
    let _log_writer = email_service::telemetry::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the async runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let addr = (config.host, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(host = %config.host, port = config.port, error = %e, "could not listen");
                return ExitCode::from(1);
            }
        };
        match email_service::run(config, listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "email-service stopped with an error");
                ExitCode::from(1)
            }
        }
    })
}

/// Resolves on the first SIGTERM or SIGINT. A second signal exits at once,
/// for an operator who does not want to wait for the drain.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("signal received; a second one exits immediately");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; using Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `email-service healthcheck`: exit 0 when this container's service answers
/// `/livez` with 200. It lets the image's `HEALTHCHECK` work without a shell
/// or curl in the runtime image.
fn healthcheck() -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    // As the service reads it: unset or empty means the default.
    let port = std::env::var("PORT")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "8002".into());
    let addr = format!("127.0.0.1:{}", port.trim());
    let probe = || -> std::io::Result<bool> {
        let addr = addr
            .parse()
            .map_err(|_| std::io::Error::other("bad PORT"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}
