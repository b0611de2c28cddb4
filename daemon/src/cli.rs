use std::path::PathBuf;

use clap::Args;

use crate::logging::LogFormat;

/// Options every Ferry daemon accepts.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// TOML configuration file. Flags override what it says. Without this flag
    /// the daemon reads its default file if that exists.
    #[arg(long, short = 'c', global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// directive such as `info,ferry_ebpf=debug`.
    #[arg(long, global = true, env = "FERRY_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
