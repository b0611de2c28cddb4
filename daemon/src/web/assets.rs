//! Static files compiled into a binary (the console's and the panel's
//! script and style sheet), served under names that carry a hash of their
//! content: a browser may keep them for a year, and a new build's pages
//! name new files.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest as _, Sha256};

pub struct Asset {
    /// `/static/<stem>.<hash>.<ext>`
    pub path: String,
    etag: String,
    content_type: &'static str,
    body: &'static str,
}

impl Asset {
    pub fn new(stem: &str, ext: &str, content_type: &'static str, body: &'static str) -> Asset {
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

/// The answer to `GET /static/{name}`: the asset of that exact name (or
/// 304 when the browser has it), else 404 (an old name after an upgrade is
/// gone: the new page names the new file).
pub fn respond(assets: &[&Asset], name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = assets.iter().find(|a| a.path.strip_prefix("/static/") == Some(name)) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hash_and_a_known_etag_is_not_sent_again() {
        let js = Asset::new("app", "js", "text/javascript", "let x = 1;");
        assert!(js.path.starts_with("/static/app.") && js.path.ends_with(".js"), "{}", js.path);
        let name = js.path.trim_start_matches("/static/").to_string();
        let ok = respond(&[&js], &name, &HeaderMap::new());
        assert_eq!(ok.status(), StatusCode::OK);
        let etag = ok.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(respond(&[&js], &name, &again).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(respond(&[&js], "app.0000.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }
}
