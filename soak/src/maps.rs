//! The gateway's eBPF maps as the kernel holds them, for the end-of-run
//! leak check: the maps are found through the daemon's own descriptors
//! (`/proc/PID/fdinfo` names each map's id; the gateway pins nothing) and
//! read with `bpftool`, so the check sees what the programs see, not the
//! daemon's bookkeeping of it.

use std::collections::BTreeMap;

use serde_json::Value;

/// The gateway's maps that must hold nothing once every session ended: the
/// whitelist (peers and target entries) and both halves of the flow table
/// (flows of ended sessions are deleted with them), and the uplink guard's
/// session indices.
pub const GATEWAY_EMPTY_AT_END: [&str; 5] =
    ["GW_PEERS", "GW_TARGETS", "GW_CT_FWD", "GW_CT_REV", "GUARD_INDICES"];

/// Entries of each map named in `names` that process `pid` holds open,
/// summed over the maps of that name: the gateway loads its object twice
/// (the forwarder, the uplink guard), so each name is there twice, one
/// copy in use and one empty. A name the process holds no map of is
/// missing from the answer.
pub fn entries(pid: u32, names: &[&str]) -> Result<BTreeMap<String, usize>, String> {
    let mut counts = BTreeMap::new();
    for id in map_ids(pid)? {
        let show = bpftool(&["map", "show", "id", &id.to_string()])?;
        let Some(name) = show["name"].as_str() else { continue };
        if !names.contains(&name) {
            continue;
        }
        let dump = bpftool(&["map", "dump", "id", &id.to_string()])?;
        *counts.entry(name.to_string()).or_default() += dump.as_array().map_or(0, Vec::len);
    }
    Ok(counts)
}

/// The ids of the eBPF maps open in `pid`, from its descriptors' fdinfo.
fn map_ids(pid: u32) -> Result<Vec<u32>, String> {
    let dir = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut ids = Vec::new();
    for fd in fds.flatten() {
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn bpftool(args: &[&str]) -> Result<Value, String> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!("bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bpftool {}: not JSON: {e}", args.join(" ")))
}
