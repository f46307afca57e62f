//! Logging: journald under systemd (structured `F_*` fields), readable stderr otherwise.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Install the global subscriber. `filter` is the configured level (e.g. `"info"`); `RUST_LOG`
/// overrides it for debugging. Journald is used only when systemd connected our stderr to the
/// journal (`JOURNAL_STREAM`), so a daemon started by hand or in tests logs to its terminal.
pub fn init(identifier: &str, filter: &str) -> Sink {
    let env_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier(identifier.to_string()))
    } else {
        None
    };
    match journald {
        Some(layer) => {
            let _ = tracing_subscriber::registry()
                .with(layer.with_filter(env_filter))
                .try_init();
            Sink::Journald
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false);
            let _ = tracing_subscriber::registry()
                .with(fmt.with_filter(env_filter))
                .try_init();
            Sink::Stderr
        }
    }
}
