use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the network lab needs root (it creates network namespaces); run the tests with `cargo xtask test` as root"
    )]
    NotRoot,
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command { command: String, status: ExitStatus, stderr: String },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "timed out after {seconds:.1}s waiting for {what}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )]
    Timeout { what: String, seconds: f64, stdout: String, stderr: String },
    #[error("{0}")]
    Setup(String),
    #[error("entering network namespace {netns}: {source}")]
    Enter {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}
