//! `ferry-relay` between two stock WireGuard peers (Debian's wireguard-go),
//! each of which only knows the relay's allocation address, in network
//! namespaces: ping and iperf3 through the relay with XDP and without.

use ferry_tests::{
    relay_lab::{CLIENT_TUN, GW_TUN, RelayLab},
    wg::{iperf3, ping},
};

fn through_the_relay(xdp: &str) -> RelayLab {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let gw = lab.gateway_go(false);
    let client = lab.client_go(false);
    assert!(ping(&lab.client_ns, GW_TUN, 20), "no ping through the relay ({xdp})");
    let up = iperf3(&lab.gw_ns, GW_TUN, &lab.client_ns, 2);
    let down = iperf3(&lab.client_ns, CLIENT_TUN, &lab.gw_ns, 2);
    assert!(up > 1e6 && down > 1e6, "iperf3 through the relay: {up} and {down} bit/s");
    drop((gw, client));
    lab
}

#[test]
fn wireguard_go_to_wireguard_go_with_xdp_off() {
    let lab = through_the_relay("off");
    assert!(lab.metric("ferry_relay_forwarded_packets_total", "path=\"userspace\"") > 1000.0);
    assert_eq!(lab.metric("ferry_relay_forwarded_packets_total", "path=\"xdp\""), 0.0);
}
