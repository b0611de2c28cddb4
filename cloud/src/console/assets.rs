//! The console's own script and style sheet, compiled into the binary and
//! served under names that carry a hash of their content
//! (`ferry_daemon::web::assets`, shared with the gateway's panel).

use std::sync::OnceLock;

use axum::{extract::Path, http::HeaderMap, response::Response};
pub use ferry_daemon::web::assets::Asset;

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

pub struct Assets {
    pub script: Asset,
    pub style: Asset,
}

pub fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| Assets {
        script: Asset::new("console", "js", "text/javascript; charset=utf-8", SCRIPT),
        style: Asset::new("console", "css", "text/css; charset=utf-8", STYLE),
    })
}

/// `GET /static/{name}`: the asset of that exact name, or 404 (an old name
/// after an upgrade is gone: the new page names the new file).
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let assets = assets();
    ferry_daemon::web::assets::respond(&[&assets.script, &assets.style], &name, &headers)
}
