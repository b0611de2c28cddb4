use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sends tracing output to stderr; stdout stays free for command output.
/// `filter` falls back to `default` (for example "info").
pub fn init(filter: Option<&str>, default: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter.unwrap_or(default)).unwrap_or_else(|err| {
        eprintln!("warning: ignoring bad log filter ({err}); using `{default}`");
        EnvFilter::new(default)
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
