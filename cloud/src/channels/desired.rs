//! The full desired state of a gateway or relay, built from the store. It
//! is rebuilt from scratch for every push, so a reconnecting peer gets the
//! same answer as one that never left.

use std::net::SocketAddr;

use ferry_control::{
    AllocationId, ConfigId, RelayId, SessionId, Subnet, Token, WgKey,
    gateway::{self, DesiredState, MAX_CANDIDATES, Peer, RelayBinding, SessionState},
    relay::{Allocation, DesiredAllocations},
};

use crate::{
    gateways::{self, Gateway, Protocol},
    sessions::{self, Session, State, addressing},
    store::{BackendError, Store},
};

fn protocol(p: Protocol) -> gateway::Protocol {
    match p {
        Protocol::Tcp => gateway::Protocol::Tcp,
        Protocol::Udp => gateway::Protocol::Udp,
        Protocol::Icmp => gateway::Protocol::Icmp,
        Protocol::Any => gateway::Protocol::Any,
    }
}

fn session_state(gateway: &Gateway, session: &Session) -> Option<SessionState> {
    let index = session.subnet_index?;
    let subnet = Subnet::new(addressing::subnet(index), 24).ok()?;
    let targets = session
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let t = gateway.targets.iter().find(|t| &t.name == name)?;
            Some(gateway::Target {
                name: t.name.clone(),
                address: t.address,
                proxy_address: addressing::proxy(index, i),
                protocol: protocol(t.protocol),
                ports: t.ports.iter().map(|p| gateway::PortRange { first: p.first, last: p.last }).collect(),
            })
        })
        .collect();
    // Keys only once the customer's approval (if needed) is in.
    let peers = if session.state == State::Active {
        session
            .configs
            .iter()
            .filter_map(|c| {
                Some(Peer {
                    config_id: ConfigId(c.id),
                    user: c.user.clone(),
                    public_key: c.public_key.parse().ok()?,
                    tunnel_address: c.tunnel_address,
                    expires_ms: c.expires_ms,
                    relay: c.relay.as_ref().and_then(|r| {
                        Some(RelayBinding {
                            relay_id: RelayId(r.relay_id),
                            allocation_id: AllocationId(r.allocation_id),
                            udp: r.gateway_endpoint?,
                            websocket_url: r.websocket_url.clone(),
                            websocket_token: Token::new(r.websocket_token.clone()),
                            websocket_pin: r.websocket_pin.clone(),
                        })
                    }),
                    candidates: c.candidates.iter().take(MAX_CANDIDATES).copied().collect(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(SessionState {
        session_id: SessionId(session.id),
        name: session.name.clone(),
        expires_ms: session.expires_ms.unwrap_or(0),
        approval_required: session.approval_required,
        approved: session.state == State::Active,
        subnet,
        gateway_address: addressing::gateway(index),
        targets,
        peers,
        started_by: session.started_by.clone(),
        max_duration_s: Some(session.max_duration_s),
    })
}

/// A gateway's desired state; `stun_servers` are the connected relays'
/// (the hub knows them, the store does not).
pub fn for_gateway(
    store: &Store,
    gateway_id: u64,
    revision: u64,
    stun_servers: Vec<SocketAddr>,
) -> Result<DesiredState, BackendError> {
    let Some(gateway) = gateways::get(store, gateway_id)? else {
        return Ok(DesiredState { revision, sessions: Vec::new(), stun_servers });
    };
    let sessions = sessions::live_for_gateway(store, gateway_id)?
        .iter()
        .filter_map(|s| session_state(&gateway, s))
        .collect();
    Ok(DesiredState { revision, sessions, stun_servers })
}

pub fn for_relay(store: &Store, relay_id: u64, revision: u64) -> Result<DesiredAllocations, BackendError> {
    let mut allocations = Vec::new();
    for session in sessions::all_live(store)? {
        let Some(gateway_key) = gateways::get(store, session.gateway_id)?
            .and_then(|g| g.wg_public_key)
            .and_then(|k| k.parse::<WgKey>().ok())
        else {
            continue;
        };
        for config in &session.configs {
            let Some(relay) = config.relay.as_ref().filter(|r| r.relay_id == relay_id) else { continue };
            let Ok(client_key) = config.public_key.parse::<WgKey>() else { continue };
            allocations.push(Allocation {
                id: AllocationId(relay.allocation_id),
                session_id: SessionId(session.id),
                gateway_key,
                client_key,
                expires_ms: config.expires_ms,
                websocket_token: Token::new(relay.websocket_token.clone()),
            });
        }
    }
    Ok(DesiredAllocations { revision, allocations })
}
