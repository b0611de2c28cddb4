//! The panel's own script and style sheet, compiled into the binary and
//! served under names that carry a hash of their content
//! (`ferry_daemon::web::assets`, shared with the cloud's console).

use std::sync::OnceLock;

use axum::{extract::Path, http::HeaderMap, response::Response};
use ferry_daemon::web::assets::Bundle;

const SCRIPT: &str = include_str!("static/panel.js");
const STYLE: &str = include_str!("static/panel.css");

pub fn assets() -> &'static Bundle {
    static ASSETS: OnceLock<Bundle> = OnceLock::new();
    ASSETS.get_or_init(|| Bundle::new("panel", SCRIPT, STYLE))
}

/// `GET /static/{name}`.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    assets().respond(&name, &headers)
}
