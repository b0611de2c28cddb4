//! `ferry-gateway diagnose`: a plain-text network report a customer can hand
//! to IT. Every check is short (3 s at most) and says OK or FAIL with a
//! reason and how long it took. The exit code is non-zero when the cloud is
//! unreachable.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;
use ferry_connect::stun::{self, QueryError};
use serde::Serialize;
use tokio::net::UdpSocket;

use super::{
    Paths,
    http::{self, CloudUrl, Method},
    now_ms,
};
use crate::{
    local::{Request, Response, client},
    state::{self, Enrollment, RelayInfo, Store},
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Relays answer STUN on this port.
pub const STUN_PORT: u16 = stun::DEFAULT_PORT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Fail,
    Info,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub cloud_reachable: bool,
}

impl Report {
    fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        took: Option<Duration>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            ms: took.map(|d| d.as_millis() as u64),
        });
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ferry-gateway {} network report", env!("CARGO_PKG_VERSION"))?;
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "OK",
                Status::Fail => "FAIL",
                Status::Info => "INFO",
                Status::Skipped => "SKIP",
            };
            let took = check.ms.map(|ms| format!(" ({ms} ms)")).unwrap_or_default();
            writeln!(f, "{status:<4}  {:<width$}  {}{took}", check.name, check.detail)?;
        }
        writeln!(f, "cloud reachable: {}", if self.cloud_reachable { "yes" } else { "NO" })
    }
}

pub fn run(paths: &Paths, json: bool) -> Result<()> {
    let report = collect(paths);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if !report.cloud_reachable {
        anyhow::bail!("the cloud is unreachable");
    }
    Ok(())
}

pub fn collect(paths: &Paths) -> Report {
    let mut report = Report { checks: Vec::new(), cloud_reachable: false };

    let now = now_ms();
    report.push("local clock", Status::Info, format!("{} UTC", format_utc(now / 1000)), None);
    report.push("NTP synchronised", Status::Info, ntp_state(), None);

    // The switch: from the daemon if it runs, else from the stored state.
    // The enrolment and relays: the stored state, or its public mirror while
    // the daemon holds the database.
    let (switch, daemon, enrollment, relays) = match client::call(&paths.socket, &Request::Status) {
        Ok(Response::Switch { on, .. }) => {
            let public = state::read_public(&paths.data_dir).unwrap_or_default();
            (Some(on), "running".to_string(), public.enrollment, public.relays)
        }
        other => {
            let daemon = match other {
                Err(client::ClientError::NotRunning { .. }) => "not running".to_string(),
                Err(e) => format!("unknown ({e})"),
                Ok(answer) => format!("unexpected answer {answer:?}"),
            };
            match Store::open(&paths.data_dir) {
                Ok(store) => (
                    Some(store.switch_on()),
                    daemon,
                    store.enrollment().ok().flatten(),
                    store.relays().unwrap_or_default(),
                ),
                Err(_) => {
                    let public = state::read_public(&paths.data_dir).unwrap_or_default();
                    (None, daemon, public.enrollment, public.relays)
                }
            }
        }
    };
    report.push("daemon", Status::Info, daemon, None);
    report.push(
        "remote maintenance",
        Status::Info,
        match switch {
            Some(true) => "ON",
            Some(false) => "OFF",
            None => "unknown",
        },
        None,
    );
    match &enrollment {
        Some(e) => report.push(
            "enrolment",
            Status::Ok,
            format!("gateway {} ({:?}) with {}", e.gateway_id, e.name, e.cloud_url),
            None,
        ),
        None => report.push("enrolment", Status::Fail, "not enrolled: run `ferry-gateway enroll`", None),
    }
    if let Some(enrollment) = &enrollment {
        let reachable = http::block_on(check_cloud(&mut report, enrollment, now));
        report.cloud_reachable = reachable.unwrap_or_else(|e| {
            report.push("cloud", Status::Fail, format!("{e:#}"), None);
            false
        });
    }
    for relay in &relays {
        check_relay(&mut report, relay);
    }
    if relays.is_empty() {
        report.push("relays", Status::Skipped, "the daemon has not used a relay yet", None);
    }
    report
}

fn ntp_state() -> String {
    let output = Command::new("timedatectl").args(["show", "--property=NTPSynchronized", "--value"]).output();
    match output {
        Ok(out) if out.status.success() => match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => "yes".into(),
            "no" => "no: the clock may drift; tokens and audit times depend on it".into(),
            other => format!("unknown ({other})"),
        },
        _ => "unknown (no timedatectl)".into(),
    }
}

/// Returns whether the cloud answered its health check.
async fn check_cloud(report: &mut Report, enrollment: &Enrollment, local_ms: u64) -> bool {
    let url = match CloudUrl::parse(&enrollment.cloud_url) {
        Ok(url) => url,
        Err(e) => {
            report.push("cloud URL", Status::Fail, e.to_string(), None);
            return false;
        }
    };
    let started = Instant::now();
    let addrs = match http::resolve(&url).await {
        Ok(addrs) => {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            report.push(format!("DNS {}", url.host), Status::Ok, list.join(", "), Some(started.elapsed()));
            addrs
        }
        Err(e) => {
            report.push(format!("DNS {}", url.host), Status::Fail, e.to_string(), Some(started.elapsed()));
            return false;
        }
    };
    let started = Instant::now();
    let stream = match http::connect(&url, &addrs, TIMEOUT).await {
        Ok(stream) => {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            report.push(
                format!("TCP {}", url.port),
                Status::Ok,
                format!("connected to {peer}"),
                Some(started.elapsed()),
            );
            stream
        }
        Err(e) => {
            report.push(format!("TCP {}", url.port), Status::Fail, e.to_string(), Some(started.elapsed()));
            return false;
        }
    };
    let result = if url.https {
        let Some(pin) = enrollment.pin.as_deref().and_then(ferry_control::pin::parse_fingerprint) else {
            report.push("TLS", Status::Fail, "no certificate pin stored: enrol again with --pin", None);
            return false;
        };
        let started = Instant::now();
        let tls = match http::tls(&url, stream, pin, TIMEOUT).await {
            Ok(tls) => {
                report.push("TLS + pin", Status::Ok, "certificate matches the pin", Some(started.elapsed()));
                tls
            }
            Err(e) => {
                report.push("TLS + pin", Status::Fail, e.to_string(), Some(started.elapsed()));
                return false;
            }
        };
        let started = Instant::now();
        (http::exchange(&url, tls, http::request(Method::GET, "/healthz"), TIMEOUT).await, started)
    } else {
        report.push("TLS", Status::Info, "plain http (lab): not encrypted", None);
        let started = Instant::now();
        (http::exchange(&url, stream, http::request(Method::GET, "/healthz"), TIMEOUT).await, started)
    };
    let (response, started) = result;
    let took = started.elapsed();
    match response {
        Ok(response) if response.status == 200 => {
            report.push("cloud /healthz", Status::Ok, "200", Some(took));
            if let Some(server_s) = response.header("date").and_then(parse_http_date) {
                // The Date header has whole seconds; compare to the middle of the exchange.
                let local_s = (local_ms + (took.as_millis() as u64) / 2) as i64 / 1000;
                let skew = local_s - server_s as i64;
                let status = if skew.abs() > 60 { Status::Fail } else { Status::Ok };
                let direction = if skew >= 0 { "ahead of" } else { "behind" };
                report.push(
                    "clock skew",
                    status,
                    format!("local clock {}s {direction} the cloud's (±1 s)", skew.abs()),
                    None,
                );
            }
            true
        }
        Ok(response) => {
            report.push(
                "cloud /healthz",
                Status::Fail,
                format!(
                    "HTTP {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body).chars().take(200).collect::<String>()
                ),
                Some(took),
            );
            // Reached, but unhealthy.
            true
        }
        Err(e) => {
            report.push("cloud /healthz", Status::Fail, e.to_string(), Some(took));
            false
        }
    }
}

fn check_relay(report: &mut Report, relay: &RelayInfo) {
    let ip = relay.udp.ip();
    let stun = SocketAddr::new(ip, STUN_PORT);
    let started = Instant::now();
    match stun_binding(stun, TIMEOUT) {
        Ok(mapped) => report.push(
            format!("relay STUN {stun}"),
            Status::Ok,
            format!("our public address is {mapped}"),
            Some(started.elapsed()),
        ),
        Err(e) => report.push(format!("relay STUN {stun}"), Status::Fail, e, Some(started.elapsed())),
    }
    let name = format!("relay WebSocket {}", relay.websocket_url);
    let ws = relay.websocket_url.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
    let authority_end =
        ws.find("://").map(|i| i + 3).and_then(|start| ws[start..].find('/').map(|i| start + i));
    let base = authority_end.map_or(ws.as_str(), |end| &ws[..end]);
    let started = Instant::now();
    match CloudUrl::parse(base) {
        Err(e) => report.push(name, Status::Fail, e.to_string(), None),
        Ok(url) => match http::block_on(async {
            let addrs = http::resolve(&url).await?;
            let stream = http::connect(&url, &addrs, TIMEOUT).await?;
            Ok::<_, http::HttpError>(stream.peer_addr().map(|a| a.to_string()).unwrap_or_default())
        })
        .and_then(|connected| Ok(connected?))
        {
            Ok(peer) => {
                report.push(name, Status::Ok, format!("TCP connected to {peer}"), Some(started.elapsed()))
            }
            Err(e) => report.push(name, Status::Fail, format!("{e:#}"), Some(started.elapsed())),
        },
    }
}

/// One STUN Binding query from a fresh socket (retransmitted within
/// `timeout`, see `ferry_connect::stun::query`); the server-reflexive address
/// it reports.
pub fn stun_binding(server: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    runtime.block_on(async {
        let local: SocketAddr = match server.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| format!("binding a UDP socket: {e}"))?;
        // Connected, so that an ICMP port unreachable fails it at once.
        socket.connect(server).await.map_err(|e| format!("no route: {e}"))?;
        stun::query(&socket, server, timeout).await.map_err(|e| match e {
            QueryError::Timeout { after, .. } => {
                format!("no answer within {} s (UDP blocked?)", after.as_secs_f32())
            }
            e => e.to_string(),
        })
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 IMF-fixdate) as Unix seconds.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || h > 23 || m > 59 || s > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86400).ok().map(|d| d + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use stun_types::{
        attribute::XorMappedAddress,
        message::{Message, MessageWrite as _, MessageWriteExt as _, MessageWriteVec},
    };

    use super::*;

    #[test]
    fn http_dates_and_utc_round_trip() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(format_utc(784_111_777), "1994-11-06 08:49:37");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT"), Some(1_709_251_199));
        assert_eq!(format_utc(1_709_251_199), "2024-02-29 23:59:59");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn stun_against_a_fake_server() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let request = Message::from_bytes(&buf[..n]).unwrap();
            let mut out = Message::builder_success(&request, MessageWriteVec::new());
            out.add_attribute(&XorMappedAddress::new(from, request.transaction_id())).unwrap();
            server.send_to(&out.finish(), from).unwrap();
        });
        let mapped = stun_binding(addr, Duration::from_secs(2)).unwrap();
        assert_eq!(mapped.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        thread.join().unwrap();
        // Nothing listens: a quick, clear failure.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = stun_binding(closed, Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
