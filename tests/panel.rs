//! The gateway's local panel in the gateway lab: its password, its
//! certificate's pin, and HTTPS requests to it from inside a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ferry_lab::Netns;

pub use crate::gateway_lab::{PANEL_PORT, panel_addr};
const T: Duration = Duration::from_secs(5);

/// An answer: the status, the headers (names in lower case), the body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 request over TLS from inside `ns`, trusting only the
/// certificate with fingerprint `pin`. A connection that fails is an error.
pub fn https(
    ns: &Netns,
    addr: SocketAddr,
    pin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Result<Answer, String> {
    let (pin, method, path) = (pin.to_string(), method.to_string(), path.to_string());
    let headers: Vec<(String, String)> =
        headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let form = form.map(str::to_string);
    ns.run_in(move || -> Result<_, String> {
        let tcp = TcpStream::connect_timeout(&addr, T).map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let config = ferry_cloud::tls::pinned_client_config(&pin).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let connection = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let body = form.unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
        stream.write_all(body.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(format!("{method} {path}: {e}")),
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not HTTP: {text:?}"))?;
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((status.ok_or("no status")?, headers, rest.to_string()))
    })
    .map_err(|e| e.to_string())?
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}
