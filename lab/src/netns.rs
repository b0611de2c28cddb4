//! Namespaces and veth links.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex, OnceLock},
};

use nix::sched::{CloneFlags, setns};

use crate::{
    Error, Process, Result,
    names::{self, netns_name},
};

/// A set of namespaces and everything in them, removed on drop.
pub struct Lab {
    inner: Arc<LabInner>,
}

pub(crate) struct LabInner {
    namespaces: Mutex<Vec<String>>,
    /// Interface names handed out by [`Lab::ifname`], whose wireguard-go
    /// control sockets live outside any namespace.
    ifnames: Mutex<Vec<String>>,
    /// Holds the output files of processes started in the lab.
    pub(crate) dir: tempfile::TempDir,
}

/// A network namespace of a [`Lab`]. Cheap to clone; the lab deletes it.
#[derive(Clone)]
pub struct Netns {
    name: Arc<str>,
    pub(crate) lab: Arc<LabInner>,
}

/// The two ends of a veth pair: `a` lives in the first namespace, `b` in the
/// second.
#[derive(Clone, Debug)]
pub struct Veth {
    pub a: String,
    pub b: String,
}

impl Lab {
    /// Starts an empty lab. The first lab of a process sweeps what dead runs
    /// left behind.
    pub fn new() -> Result<Lab> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        static SWEEP: OnceLock<()> = OnceLock::new();
        SWEEP.get_or_init(|| {
            for object in names::sweep_stale() {
                eprintln!("ferry-lab: removed stale {object}");
            }
        });
        let dir = tempfile::Builder::new()
            .prefix(&names::dir_prefix())
            .tempdir()
            .map_err(|e| Error::Setup(format!("creating the lab folder: {e}")))?;
        Ok(Lab {
            inner: Arc::new(LabInner {
                namespaces: Mutex::new(Vec::new()),
                ifnames: Mutex::new(Vec::new()),
                dir,
            }),
        })
    }

    /// Creates a namespace with loopback up. `label` only makes the name
    /// readable.
    pub fn netns(&self, label: &str) -> Result<Netns> {
        let name = netns_name(label);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.inner.namespaces.lock().expect("lab lock").push(name.clone());
        let netns = Netns { name: name.into(), lab: Arc::clone(&self.inner) };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Joins `a` and `b` with a veth pair, both ends up, no addresses.
    pub fn veth(&self, a: &Netns, b: &Netns) -> Result<Veth> {
        a.veth_to(b)
    }

    /// Joins `a` and `b` with a veth pair and gives each end its addresses
    /// (CIDR notation, IPv4 or IPv6).
    pub fn wire(&self, a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> Result<Veth> {
        let veth = a.veth_to(b)?;
        for addr in a_addrs {
            a.add_addr(&veth.a, addr)?;
        }
        for addr in b_addrs {
            b.add_addr(&veth.b, addr)?;
        }
        Ok(veth)
    }

    /// The folder that holds process output; removed with the lab.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// A machine-wide unique interface name ending in `suffix` (at most 5
    /// bytes), for interfaces a test creates itself (TUN, WireGuard).
    pub fn ifname(&self, suffix: &str) -> String {
        let name = names::ifname(suffix);
        self.inner.ifnames.lock().expect("lab lock").push(name.clone());
        name
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut *self.inner.namespaces.lock().expect("lab lock"));
        for name in namespaces.iter().rev() {
            delete_netns(name);
        }
        // wireguard-go leaves its control socket behind when it is killed.
        for ifname in self.inner.ifnames.lock().expect("lab lock").drain(..) {
            let _ = std::fs::remove_file(Path::new(names::WIREGUARD_SOCKETS).join(format!("{ifname}.sock")));
        }
    }
}

/// Kills every process in the namespace, then deletes it (which also removes
/// its interfaces and the far ends of its veth pairs).
pub(crate) fn delete_netns(name: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&*self.name).args(args))
    }

    /// The Ethernet address of `ifname` (for frames built by hand).
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let brief = self.ip(&["-br", "link", "show", "dev", ifname])?;
        let text = brief.split_whitespace().nth(2).unwrap_or_default();
        let bytes: Option<Vec<u8>> = text.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect();
        bytes
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .ok_or_else(|| crate::Error::Setup(format!("no Ethernet address for {ifname} in `{brief}`")))
    }

    /// Adds an address (CIDR) to `ifname`. IPv6 addresses skip duplicate
    /// address detection so they are usable at once.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Sets a sysctl, for example `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", setting]).map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward=1")?;
        self.sysctl("net.ipv6.conf.all.forwarding=1")
    }

    /// A command that runs `program` inside the namespace (through `ip netns
    /// exec`, which also gives it the namespace's /sys), with no Ferry
    /// configuration of the host's ([`crate::without_host_config`]). Add
    /// arguments as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        crate::without_host_config(&mut cmd);
        cmd
    }

    /// Runs `program args` in the namespace to completion and returns its
    /// stdout; a non-zero exit is an error that carries stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs a command to completion and returns its whole output, whatever its
    /// exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output().map_err(|source| Error::Spawn { command: describe(&cmd), source })
    }

    /// Starts a long-running process in the namespace. Its stdout and stderr go
    /// to files in the lab folder; it is killed when the handle drops.
    pub fn spawn(&self, mut cmd: Command) -> Result<Process> {
        Process::spawn(&mut cmd, self.lab.dir.path())
    }

    /// Starts `program args` in the namespace; see [`Netns::spawn`].
    pub fn spawn_program(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Process> {
        let mut cmd = self.command(program);
        cmd.args(args);
        self.spawn(cmd)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created in
    /// `f` stay in the namespace after it returns, so a test can open them here
    /// and use them anywhere.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = self.path();
        let name = self.name.to_string();
        std::thread::spawn(move || -> Result<T> {
            let file = File::open(&path).map_err(|source| Error::Enter { netns: name.clone(), source })?;
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|errno| Error::Enter { netns: name, source: errno.into() })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The bind mount that keeps the namespace alive (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&*self.name)
    }

    /// Creates a veth pair from this namespace to `other`, both ends up.
    pub fn veth_to(&self, other: &Netns) -> Result<Veth> {
        let veth = Veth { a: names::ifname("a"), b: names::ifname("b") };
        run(Command::new("ip").args([
            "link",
            "add",
            &veth.a,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &veth.b,
            "netns",
            &other.name,
        ]))?;
        self.ip(&["link", "set", &veth.a, "up"])?;
        other.ip(&["link", "set", &veth.b, "up"])?;
        Ok(veth)
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name).finish()
    }
}

/// Runs a command to completion; non-zero exit becomes an error with stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { command: describe(cmd), source })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
