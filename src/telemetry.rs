use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written (`--log-format`, `MINICRM_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; colour codes only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's
    /// fields, `target`, and `span` (the call's `method`) when in a call.
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`: one line per call).
///
/// No log line at any level carries a request's personal data (phones,
/// emails, names) or a token: calls log their method, code and latency, and
/// database errors only their primary message, which names a constraint,
/// never a value (diesel leaves out PostgreSQL's DETAIL).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => {
            builder
                .json()
                .with_ansi(false)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .init();
            // A panic is logged as one JSON line too, not as plain text.
            std::panic::set_hook(Box::new(|panic| {
                tracing::error!(%panic, "panic");
            }));
        }
    }
}
