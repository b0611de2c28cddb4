//! The local control socket: how the customer's commands (`ferry-gateway
//! remote on|off`, `approve`, `deny`, `sessions`) reach the running daemon.
//! It is a Unix socket, so it is never reachable from the network.

pub mod client;
pub mod protocol;
pub mod server;

#[allow(unused_imports)]
pub use protocol::{PeerReport, Request, Response, SessionReport, TargetReport};

/// `/run/ferry-gateway/control.sock` (systemd's RuntimeDirectory) for root;
/// for other users, `$XDG_RUNTIME_DIR/ferry-gateway/control.sock`, or the
/// data directory when there is no runtime directory.
pub fn default_socket_path() -> std::path::PathBuf {
    let file = "control.sock";
    if ferry_daemon::paths::is_root() {
        return std::path::PathBuf::from("/run/ferry-gateway").join(file);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir).join("ferry-gateway").join(file),
        _ => ferry_daemon::paths::default_data_dir("gateway").join(file),
    }
}
