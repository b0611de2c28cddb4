//! The console's own script and style sheet, compiled into the binary and
//! served under names that carry a hash of their content: a browser may
//! keep them for a year, and a new build's pages name new files.

use std::sync::OnceLock;

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

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

pub struct Asset {
    /// `/static/<stem>.<hash>.<ext>`
    pub path: String,
    etag: String,
    content_type: &'static str,
    body: &'static str,
}

impl Asset {
    fn new(stem: &str, ext: &str, content_type: &'static str, body: &'static str) -> Asset {
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        let short = &digest[..16];
        Asset {
            path: format!("/static/{stem}.{short}.{ext}"),
            etag: format!("\"{short}\""),
            content_type,
            body,
        }
    }
}

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
    let Some(asset) =
        [&assets.script, &assets.style].into_iter().find(|a| a.path.strip_prefix("/static/") == Some(&name))
    else {
        return (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], "no such file")
            .into_response();
    };
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::ETAG, HeaderValue::from_str(&asset.etag).unwrap_or(HeaderValue::from_static("\"\""))),
    ];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body)
        .into_response()
}
