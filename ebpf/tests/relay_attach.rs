//! Attaching the relay forwarder to interfaces of a lab namespace: several at
//! once, replaced, detached one by one, refused on non-Ethernet links, and
//! gone when the forwarder is dropped. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use ferry_ebpf::{AttachMode, Error, relay::RelayForwarder};
use ferry_lab::{Lab, Netns};

fn xdp_attached(netns: &Netns, iface: &str) -> bool {
    let details = netns.ip(&["-d", "link", "show", "dev", iface]).unwrap();
    details.contains("prog/xdp")
}

#[test]
fn attaches_to_several_interfaces_and_detaches_on_drop() {
    let lab = Lab::new().expect("a lab (run as root)");
    let netns = lab.netns("relay").unwrap();
    let far = lab.netns("far").unwrap();
    let first = lab.veth(&netns, &far).unwrap().a;
    let second = lab.veth(&netns, &far).unwrap().a;

    let inside = netns.clone();
    let (a, b) = (first.clone(), second.clone());
    netns
        .run_in(move || {
            let mut f = RelayForwarder::load(16, 16).expect("loading the relay forwarder");
            assert_eq!(f.attach(&a, AttachMode::Native).unwrap(), "native");
            assert_eq!(f.attach(&b, AttachMode::Generic).unwrap(), "generic");
            assert!(xdp_attached(&inside, &a) && xdp_attached(&inside, &b));
            let mut attached: Vec<_> = f.attachments().collect();
            attached.sort();
            let mut expected = vec![(a.as_str(), "native"), (b.as_str(), "generic")];
            expected.sort();
            assert_eq!(attached, expected);

            // Again on the same interface: replaced, not doubled.
            assert_eq!(f.attach(&b, AttachMode::Auto).unwrap(), "native");
            assert_eq!(f.attachments().count(), 2);

            assert!(f.detach(&a).unwrap());
            assert!(!f.detach(&a).unwrap(), "detached twice");
            assert!(!xdp_attached(&inside, &a));
            assert!(xdp_attached(&inside, &b));

            // Raw links and missing interfaces are refused, and change nothing.
            match f.attach("lo", AttachMode::Auto) {
                Err(Error::NotEthernet { iface, .. }) => assert_eq!(iface, "lo"),
                other => panic!("attaching to lo: {other:?}"),
            }
            assert!(matches!(f.attach("fy-missing0", AttachMode::Auto), Err(Error::UnknownInterface(_))));
            assert_eq!(f.attachments().count(), 1);

            f.attach(&a, AttachMode::Auto).unwrap();
            f.detach_all().unwrap();
            assert_eq!(f.attachments().count(), 0);
            assert!(!xdp_attached(&inside, &a) && !xdp_attached(&inside, &b));

            f.attach(&a, AttachMode::Auto).unwrap();
            f.attach(&b, AttachMode::Auto).unwrap();
            drop(f);
        })
        .unwrap();
    assert!(!xdp_attached(&netns, &first), "still attached after drop");
    assert!(!xdp_attached(&netns, &second), "still attached after drop");
}
