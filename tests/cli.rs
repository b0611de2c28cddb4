//! The binaries' command lines: help, bad input, refused privileges. These
//! check the messages a user sees.

use std::{process::Output, time::Duration};

use ferry_lab::Lab;
use ferry_tests::{bin, bin_path};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_binary_explains_itself() {
    for name in ["ferry-gateway", "ferry-relay", "ferry-cloud"] {
        let output = bin(name).arg("--help").output().unwrap();
        assert!(output.status.success(), "{name} --help: {}", stderr(&output));
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Usage:") && help.contains("--config"), "{name}: {help}");
        let version = bin(name).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn guard_refuses_links_without_ethernet_headers() {
    let lab = Lab::new().unwrap();
    let ns = lab.netns("cli-tun").unwrap();
    let tun = lab.ifname("tun");
    ns.ip(&["tuntap", "add", "dev", &tun, "mode", "tun"]).unwrap();
    ns.ip(&["link", "set", &tun, "up"]).unwrap();
    for iface in [tun.as_str(), "lo"] {
        let output = ns
            .output(
                bin_path("ferry-gateway").to_str().unwrap(),
                &["guard", "--iface", iface, "--port", "51820"],
            )
            .unwrap();
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("is not an Ethernet interface"), "{iface}: {err}");
    }
}

#[test]
fn guard_names_a_missing_interface() {
    let lab = Lab::new().unwrap();
    let ns = lab.netns("cli").unwrap();
    let output = ns
        .output(
            bin_path("ferry-gateway").to_str().unwrap(),
            &["guard", "--iface", "nosuch0", "--port", "51820"],
        )
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("nosuch0") && err.contains("does not exist"), "{err}");
}

#[test]
fn guard_without_privileges_says_what_it_needs() {
    // The nobody user, no capabilities: loading BPF must be refused cleanly.
    let output = ferry_lab::without_host_config(&mut std::process::Command::new("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(bin_path("ferry-gateway"))
        .args(["guard", "--iface", "lo", "--port", "51820"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    // The context says what is needed; the cause is the kernel's refusal.
    assert!(err.contains("needs root or CAP_BPF"), "{err}");
    assert!(err.contains("Operation not permitted") || err.contains("Permission denied"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_and_config_are_refused_with_the_reason() {
    let output = bin("ferry-gateway").args(["guard", "--iface", "lo", "--port", "0"]).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--port"), "{}", stderr(&output));

    let output = bin("ferry-gateway").args(["guard", "--iface", "lo", "--mode", "turbo"]).output().unwrap();
    assert!(stderr(&output).contains("unknown XDP mode `turbo`"), "{}", stderr(&output));

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, "[uplink]\nwireguard_prot = 1\n").unwrap();
    let output = bin("ferry-gateway").args(["--config", config.to_str().unwrap(), "guard"]).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("wireguard_prot"), "{}", stderr(&output));

    std::fs::write(&config, "[uplink]\nwireguard_port = 0\n").unwrap();
    let output = bin("ferry-gateway").args(["--config", config.to_str().unwrap(), "guard"]).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nonzero"), "{}", stderr(&output));

    let output = bin("ferry-gateway")
        .args(["--config", dir.join("absent.toml").to_str().unwrap(), "guard"])
        .output()
        .unwrap();
    assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
}

#[test]
fn guard_takes_interface_and_port_from_the_config_file() {
    let lab = Lab::new().unwrap();
    let a = lab.netns("cfg-a").unwrap();
    let b = lab.netns("cfg-b").unwrap();
    let link = lab.veth(&a, &b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[uplink]\ninterface = \"{}\"\nwireguard_port = 41641\nxdp_mode = \"generic\"\n", link.b),
    )
    .unwrap();
    let mut guard =
        b.spawn_program(bin_path("ferry-gateway"), &["--config", config.to_str().unwrap(), "guard"]).unwrap();
    // The end of the stdout line: the same words come first in the log on
    // stderr, and a wait for them could read stdout before the line is there.
    guard.wait_for_output("SIGINT detaches", Duration::from_secs(20)).unwrap();
    let line = guard.stdout();
    assert!(line.contains(&link.b) && line.contains("generic") && line.contains("41641"), "{line}");
}
