//! The console's own script and style sheet, compiled into the binary and
//! served under names that carry a hash of their content
//! (`ferry_daemon::web::assets`, shared with the gateway's panel).

use std::sync::OnceLock;

use axum::{extract::Path, http::HeaderMap, response::Response};
pub use ferry_daemon::web::assets::Bundle;

/// The script: one file served, written as a few (the shared helpers
/// first, then one per page), so that each page's code stays small.
const SCRIPT: &str = concat!(
    include_str!("static/app.js"),
    include_str!("static/login.js"),
    include_str!("static/account.js"),
    include_str!("static/users.js"),
    include_str!("static/gateways.js"),
    include_str!("static/sessions.js"),
    include_str!("static/session.js"),
    include_str!("static/audit.js"),
    include_str!("static/relays.js"),
);

const STYLE: &str = include_str!("static/console.css");

pub fn assets() -> &'static Bundle {
    static ASSETS: OnceLock<Bundle> = OnceLock::new();
    ASSETS.get_or_init(|| Bundle::new("console", SCRIPT, STYLE))
}

/// `GET /static/{name}`: the asset of that exact name, or 404 (an old name
/// after an upgrade is gone: the new page names the new file).
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    assets().respond(&name, &headers)
}
