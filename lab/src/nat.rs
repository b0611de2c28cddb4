//! Routers with real netfilter NAT between lab namespaces.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::{Error, Lab, Netns, Result, names, netns::describe};

/// The NAT behaviour of a router, as consumer routers and firewalls show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// MASQUERADE that keeps the source port where it can: one external port
    /// per internal socket whatever the destination (endpoint-independent
    /// mapping), inbound only for established flows. Hole punching works.
    Cone,
    /// MASQUERADE with fully random source ports: a new external port for each
    /// destination (endpoint-dependent mapping), as in carrier-grade NAT.
    /// Hole punching fails; a relay is needed.
    Symmetric,
    /// A site firewall that lets nothing out but TCP to port 443.
    TcpOnly443,
}

/// A NAT router: a namespace with a WAN link to an upstream namespace and a LAN
/// bridge that hosts are attached to.
pub struct Router {
    pub ns: Netns,
    /// The WAN interface in the router namespace.
    pub wan_if: String,
    /// The router's WAN address (no prefix length).
    pub wan_addr: String,
    /// The LAN bridge in the router namespace.
    pub lan_if: String,
    /// The router's LAN address (no prefix length), the hosts' default gateway.
    pub lan_addr: String,
    pub nat: Nat,
}

impl Lab {
    /// Creates a NAT router below `upstream`. The WAN link gets `upstream_addr`
    /// on the upstream side and `wan_addr` on the router; the LAN bridge gets
    /// `lan_addr`. All in CIDR notation, IPv4. The router's default route points
    /// upstream, and the upstream namespace forwards.
    pub fn nat_router(
        &self,
        label: &str,
        nat: Nat,
        upstream: &Netns,
        upstream_addr: &str,
        wan_addr: &str,
        lan_addr: &str,
    ) -> Result<Router> {
        let ns = self.netns(label)?;
        ns.enable_forwarding()?;
        upstream.enable_forwarding()?;
        let link = self.wire(upstream, &[upstream_addr], &ns, &[wan_addr])?;
        let lan_if = names::ifname("br");
        ns.ip(&["link", "add", &lan_if, "type", "bridge"])?;
        ns.ip(&["link", "set", &lan_if, "up"])?;
        ns.add_addr(&lan_if, lan_addr)?;
        // Hosts on the LAN reach each other as through a home switch. With
        // br_netfilter loaded, bridged frames would otherwise meet the
        // forward chain's drop policy; the setting is per namespace and
        // absent without the module (nothing to turn off then).
        let _ = ns.sysctl("net.bridge.bridge-nf-call-iptables=0");
        ns.ip(&["route", "add", "default", "via", strip_prefix_len(upstream_addr)])?;
        let router = Router {
            wan_if: link.b,
            wan_addr: strip_prefix_len(wan_addr).to_string(),
            lan_addr: strip_prefix_len(lan_addr).to_string(),
            lan_if,
            nat,
            ns,
        };
        router.install_rules()?;
        Ok(router)
    }
}

impl Router {
    /// Plugs `host` into the LAN with `host_addr` (CIDR) and makes the router
    /// its default gateway. Returns the host's interface name.
    pub fn attach(&self, host: &Netns, host_addr: &str) -> Result<String> {
        let veth = self.ns.veth_to(host)?;
        self.ns.ip(&["link", "set", &veth.a, "master", &self.lan_if])?;
        host.add_addr(&veth.b, host_addr)?;
        host.ip(&["route", "add", "default", "via", &self.lan_addr])?;
        Ok(veth.b)
    }

    /// The nftables ruleset this router runs, for test failure messages.
    pub fn ruleset(&self) -> Result<String> {
        self.ns.exec("nft", &["list", "ruleset"])
    }

    fn install_rules(&self) -> Result<()> {
        let wan = &self.wan_if;
        let lan = &self.lan_if;
        let masquerade = match self.nat {
            Nat::Cone | Nat::TcpOnly443 => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        };
        let outbound = match self.nat {
            Nat::Cone | Nat::Symmetric => format!("iifname \"{lan}\" oifname \"{wan}\" accept"),
            Nat::TcpOnly443 => format!("iifname \"{lan}\" oifname \"{wan}\" tcp dport 443 accept"),
        };
        // Inbound traffic is only ever a reply: there are no port forwards, as
        // on a site whose firewall admits nothing from the internet. That
        // holds for the router itself too: an unsolicited datagram to its WAN
        // address is dropped, not answered, so that it leaves no connection
        // behind whose port a later outbound mapping would have to avoid (a
        // peer's hole-punching probe that arrives before ours went out would
        // otherwise move our mapping to another port).
        let rules = format!(
            "table ip ferry_lab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{wan}\" {masquerade}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{wan}\" ct state established,related accept
    iifname \"{wan}\" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {outbound}
  }}
}}
"
        );
        let mut cmd = self.ns.command("nft");
        cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        nft_apply(cmd, &rules)
    }
}

fn nft_apply(mut cmd: Command, rules: &str) -> Result<()> {
    let command = describe(&cmd);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    let output =
        child.wait_with_output().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            status: output.status,
            stderr: format!("{}\nruleset:\n{rules}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(())
}

fn strip_prefix_len(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}
