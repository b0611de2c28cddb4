//! What Ferry's web faces share (the cloud's API and console, the gateway's
//! local panel): one accept loop for HTTP with or without TLS
//! ([`server`]) and its limits per client address ([`sources`]), the security headers every answer carries ([`headers`]),
//! the script and style files compiled into the binary ([`assets`]), and
//! the same-origin check of state-changing requests ([`same_origin`]).

pub mod assets;
pub mod headers;
pub mod server;
pub mod sources;

use axum::http::{HeaderMap, header};

/// Whether a request comes from a page of the server's own origin: by
/// `Sec-Fetch-Site` (browsers send it on every request to a secure
/// origin) and by `Origin` (sent on every state-changing fetch and form
/// post), whichever are present; at least one must be. The error says why
/// not, for the audit log.
///
/// A form post from a page whose referrer policy is `no-referrer` (ours)
/// carries `Origin: null`; with `Sec-Fetch-Site: same-origin`, which no
/// page can forge, that is the server's own page. Without it, `null` is
/// refused: it is also what a sandboxed frame of another site sends.
pub fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let site = text("sec-fetch-site");
    if let Some(site) = &site
        && site != "same-origin"
    {
        return Err(format!("the request came from another site (Sec-Fetch-Site: {site})"));
    }
    let origin = text("origin").filter(|origin| !(origin == "null" && site.is_some()));
    let Some(origin) = origin else {
        return match site {
            Some(_) => Ok(()),
            None => Err("the request names no origin (neither Origin nor Sec-Fetch-Site)".into()),
        };
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match authority {
        Some(authority) if !host.is_empty() && authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(format!("the request came from another origin ({origin})")),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn same_origin_wants_a_matching_origin_or_a_same_origin_fetch() {
        let host = ("host", "192.168.0.2:8443");
        assert!(same_origin(&headers(&[host, ("origin", "https://192.168.0.2:8443")])).is_ok());
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        // A form post under `Referrer-Policy: no-referrer`.
        assert!(
            same_origin(&headers(&[host, ("sec-fetch-site", "same-origin"), ("origin", "null")])).is_ok()
        );
        let cases = [
            headers(&[host]),
            headers(&[host, ("origin", "https://evil.example")]),
            headers(&[host, ("origin", "null")]),
            headers(&[host, ("origin", "null"), ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "cross-site"), ("origin", "https://192.168.0.2:8443")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[("origin", "https://192.168.0.2:8443")]),
        ];
        for case in cases {
            assert!(same_origin(&case).is_err(), "{case:?}");
        }
    }
}
