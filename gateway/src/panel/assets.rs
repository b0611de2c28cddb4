//! The panel's own script and style sheet, compiled into the binary and
//! served under names that carry a hash of their content
//! (`ferry_daemon::web::assets`, shared with the cloud's console).

use std::sync::OnceLock;

use axum::{extract::Path, http::HeaderMap, response::Response};
use ferry_daemon::web::assets::Asset;

const SCRIPT: &str = include_str!("static/panel.js");
const STYLE: &str = include_str!("static/panel.css");

pub struct Assets {
    pub script: Asset,
    pub style: Asset,
}

pub fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| Assets {
        script: Asset::new("panel", "js", "text/javascript; charset=utf-8", SCRIPT),
        style: Asset::new("panel", "css", "text/css; charset=utf-8", STYLE),
    })
}

/// `GET /static/{name}`.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let assets = assets();
    ferry_daemon::web::assets::respond(&[&assets.script, &assets.style], &name, &headers)
}
