//! `ferry-gateway sessions`: what is active, who is connected, bytes moved.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use ferry_control::gateway::Protocol;
use ferry_ebpf::gateway::GatewayForwarder;
use ferry_tunnel::PublicKey;

use super::{engine::Engine, policy::Plan};
use crate::local::protocol::{PeerReport, SessionReport, TargetReport};

/// `cloud_now`: the cloud's time, if known, for each session's time left.
pub fn sessions(
    plan: &Plan,
    engine: &Engine,
    forwarder: &GatewayForwarder,
    cloud_now: Option<u64>,
) -> Vec<SessionReport> {
    let status: BTreeMap<PublicKey, _> = engine.status().into_iter().map(|s| (s.public_key, s)).collect();
    let now = Instant::now();
    plan.sessions
        .iter()
        .map(|s| {
            let peers = s
                .state
                .peers
                .iter()
                .map(|p| {
                    let key = PublicKey(p.public_key.0);
                    let live = s.live_peers.iter().any(|l| l.public_key == p.public_key);
                    let st = status.get(&key).filter(|_| live);
                    let path = engine.path_of(&key).filter(|_| live);
                    PeerReport {
                        user: p.user.clone(),
                        public_key: p.public_key.to_string(),
                        tunnel_address: p.tunnel_address.to_string(),
                        endpoint: st.and_then(|st| st.endpoint).map(|e| e.to_string()),
                        transport: path.as_ref().map_or("none", |p| p.path.label()).to_string(),
                        path_why: path.as_ref().map(|p| p.why.to_string()),
                        rtt_us: path.as_ref().and_then(|p| p.rtt).map(|rtt| rtt.as_micros() as u64),
                        last_handshake_s_ago: st
                            .and_then(|st| st.last_handshake)
                            .map(|at| now.duration_since(at).as_secs()),
                        rx_bytes: st.map_or(0, |st| st.rx_bytes),
                        tx_bytes: st.map_or(0, |st| st.tx_bytes),
                    }
                })
                .collect();
            let targets = s
                .state
                .targets
                .iter()
                .map(|t| {
                    let traffic = match t.proxy_address {
                        IpAddr::V4(proxy) => forwarder.traffic(s.state.session_id.0, proxy).ok().flatten(),
                        IpAddr::V6(_) => None,
                    };
                    TargetReport {
                        name: t.name.clone(),
                        proxy_address: t.proxy_address.to_string(),
                        address: t.address.to_string(),
                        protocol: match t.protocol {
                            Protocol::Tcp => "tcp",
                            Protocol::Udp => "udp",
                            Protocol::Icmp => "icmp",
                            Protocol::Any => "any",
                        }
                        .to_string(),
                        ports: if t.ports.is_empty() {
                            "all".to_string()
                        } else {
                            t.ports
                                .iter()
                                .map(|r| {
                                    if r.first == r.last {
                                        r.first.to_string()
                                    } else {
                                        format!("{}-{}", r.first, r.last)
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                        to_target_bytes: traffic.map_or(0, |t| t.to_target_bytes),
                        from_target_bytes: traffic.map_or(0, |t| t.from_target_bytes),
                    }
                })
                .collect();
            SessionReport {
                id: s.state.session_id.0,
                name: s.state.name.clone(),
                started_by: s.state.started_by.clone(),
                max_duration_s: s.state.max_duration_s,
                state: s.status.label().to_string(),
                expires_ms: s.state.expires_ms,
                left_ms: cloud_now.map(|now| s.state.expires_ms.saturating_sub(now)),
                approval_required: s.state.approval_required,
                peers,
                targets,
            }
        })
        .collect()
}
