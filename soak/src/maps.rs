//! The gateway's eBPF maps as the kernel holds them, for the end-of-run
//! leak check: the maps are found through the daemon's own descriptors
//! (`/proc/PID/fdinfo` names each map's id; the gateway pins nothing) and
//! read with `bpftool`, so the check sees what the programs see, not the
//! daemon's bookkeeping of it.

use std::collections::BTreeMap;

use serde_json::Value;

/// The gateway's maps that must hold nothing once every session ended: the
/// whitelist (peers and target entries), both halves of the flow table
/// (flows of ended sessions are deleted with them), the NAT slots' writer
/// claims, and the uplink guard's session indices.
pub const GATEWAY_EMPTY_AT_END: [&str; 6] =
    ["GW_PEERS", "GW_TARGETS", "GW_CT_FWD", NAT_SLOTS, "GW_NAT_CLAIMS", "GUARD_INDICES"];

/// The reply half of the flow table: an array, so every slot is always
/// there, and an entry counts only while a flow holds it.
const NAT_SLOTS: &str = "GW_NAT_SLOTS";

/// Where a `FlowReverse` (ebpf-common) holds `generation.path`, which is
/// zero exactly when its slot is free (`FlowReverse::in_use`).
const SLOT_PATH: std::ops::Range<usize> = 64..72;

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
        let held = match dump.as_array() {
            None => 0,
            Some(entries) if name == NAT_SLOTS => slots_in_use(entries)?,
            Some(entries) => entries.len(),
        };
        *counts.entry(name.to_string()).or_default() += held;
    }
    Ok(counts)
}

/// How many NAT slots of a dump hold a flow: those whose path generation
/// is not zero. bpftool shows a map without type information as arrays of
/// hex bytes.
fn slots_in_use(entries: &[Value]) -> Result<usize, String> {
    let mut used = 0;
    for entry in entries {
        let bytes = entry["value"]
            .as_array()
            .ok_or_else(|| format!("{NAT_SLOTS}: an entry without a byte array as its value: {entry}"))?;
        let path =
            bytes.get(SLOT_PATH).ok_or_else(|| format!("{NAT_SLOTS}: a value of {} bytes", bytes.len()))?;
        let mut free = true;
        for byte in path {
            let text =
                byte.as_str().ok_or_else(|| format!("{NAT_SLOTS}: a value byte that is not text: {byte}"))?;
            let value = u8::from_str_radix(text.trim_start_matches("0x"), 16)
                .map_err(|e| format!("{NAT_SLOTS}: value byte {text:?}: {e}"))?;
            free &= value == 0;
        }
        used += usize::from(!free);
    }
    Ok(used)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slot(path_byte: &str) -> Value {
        let mut value = vec!["0x00"; 72];
        value[SLOT_PATH.start + 3] = path_byte;
        json!({ "key": ["0x00", "0x00", "0x00", "0x00"], "value": value })
    }

    #[test]
    fn a_slot_counts_only_while_its_path_generation_is_set() {
        let mut busy = slot("0x00");
        // Every other field set: a slot is free by its path generation alone.
        busy["value"] = json!(vec!["0xff"; 64].into_iter().chain(vec!["0x00"; 8]).collect::<Vec<_>>());
        assert_eq!(slots_in_use(&[slot("0x00"), busy]).unwrap(), 0);
        assert_eq!(slots_in_use(&[slot("0x01"), slot("0x00"), slot("0x80")]).unwrap(), 2);
    }

    #[test]
    fn a_dump_it_cannot_read_is_an_error_not_a_clean_map() {
        assert!(slots_in_use(&[json!({ "key": 0, "value": { "formatted": {} } })]).is_err());
        assert!(slots_in_use(&[json!({ "key": [], "value": vec!["0x00"; 8] })]).is_err());
        assert!(slots_in_use(&[json!({ "key": [], "value": vec!["zz"; 72] })]).is_err());
    }
}
