//! Calls to the cloud's HTTP API, over plain HTTP or over HTTPS that trusts
//! exactly the cloud's own self-signed certificate.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Where the API is and how to reach it. Cheap to clone into a closure that
/// runs inside a namespace.
#[derive(Clone, Debug)]
pub struct Api {
    pub addr: SocketAddr,
    tls: Option<TlsConfig>,
}

impl Api {
    /// Plain HTTP (`ferry-cloud serve --no-tls`).
    pub fn plain(addr: SocketAddr) -> Api {
        Api { addr, tls: None }
    }

    /// HTTPS that accepts only `cert_pem`, the cloud's self-signed
    /// certificate (read from its data folder), as its own root: the same
    /// trust as a pin on its fingerprint. The certificate must name the
    /// address called.
    pub fn https(addr: SocketAddr, cert_pem: &[u8]) -> Result<Api, String> {
        let cert = Certificate::from_pem(cert_pem).map_err(|e| format!("the cloud's certificate: {e}"))?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        Ok(Api { addr, tls: Some(tls) })
    }

    /// The same API at another address (the cloud's port 443).
    pub fn at(&self, addr: SocketAddr) -> Api {
        Api { addr, tls: self.tls.clone() }
    }

    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// `http(s)://addr`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.is_https() { "https" } else { "http" }, self.addr)
    }

    /// One JSON request; a status as an answer, transport failures as
    /// errors. A body that is not JSON reads as `null`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(u16, Value), ureq::Error> {
        let (status, text) = self.raw(method, path, token, &body)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A request whose answer body comes back as text, whatever it is.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, String), ureq::Error> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if let Some(tls) = &self.tls {
            config = config.tls_config(tls.clone());
        }
        let agent: ureq::Agent = config.build().into();
        let mut request =
            ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.base_url()));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let request =
            request.header("Content-Type", "application/json").body(body.to_string().into_bytes())?;
        let mut response = agent.run(request)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, text))
    }
}

/// [`Api::call`] over plain HTTP.
pub fn try_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value), ureq::Error> {
    Api::plain(addr).call(method, path, token, body)
}

/// [`Api::raw`] over plain HTTP.
pub fn raw_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<(u16, String), ureq::Error> {
    Api::plain(addr).raw(method, path, token, body)
}
