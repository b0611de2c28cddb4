use ferry_ebpf::relay::RelayForwarder;

#[test]
fn loads() {
    let f = RelayForwarder::load(16, 16).unwrap();
    assert_eq!(f.capacity(), 16);
}
