//! The technician's client `ferry` in the gateway lab: its service started
//! in a namespace, several local users of the technician's machine (uids
//! without a passwd entry, so nothing of the host's is touched) driving it
//! with the CLI or its socket protocol, traffic made as one of them (the
//! tunnel routes only its owner's packets), and the technician's laptop
//! leaving its home network for another one (roaming).
//!
//! Used by `client.rs` (the service with stock peers and a stand-in
//! gateway) and `client_paths.rs` (the real gateway: direct paths, the
//! WebSocket relay, roaming).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use ferry_lab::{Nat, Netns, Process, Router};
use serde_json::Value;

use crate::{bin_path, gateway_lab::GatewayLab};

const T: Duration = Duration::from_secs(5);

/// The group whose members may use the service, by number (no group
/// database entry is needed for `--group-id`).
pub const GROUP: u32 = 64010;

/// A local user of the technician's machine.
#[derive(Clone, Copy, Debug)]
pub struct LocalUser {
    pub uid: u32,
    pub groups: &'static [u32],
}

/// The technician: a member of the group.
pub const TECH: LocalUser = LocalUser { uid: 64001, groups: &[GROUP] };
/// Another member of the group, on the same machine.
pub const COLLEAGUE: LocalUser = LocalUser { uid: 64002, groups: &[GROUP] };
/// A local user who is not in the group.
pub const OUTSIDER: LocalUser = LocalUser { uid: 64003, groups: &[] };

/// Makes this thread `user`: effective uid and gid and the supplementary
/// groups. Raw system calls, because glibc's wrappers change every thread of
/// the process; these change only the calling one. Sockets the thread makes
/// then belong to `user` (routing by uid looks at that) and its connections
/// to Unix sockets carry `user` (SO_PEERCRED).
pub fn become_on_this_thread(user: LocalUser) {
    let groups: Vec<nix::libc::gid_t> = user.groups.to_vec();
    let keep = -1i64 as nix::libc::c_long;
    // SAFETY: plain system calls on this thread's credentials.
    unsafe {
        assert_eq!(nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()), 0);
        assert_eq!(
            nix::libc::syscall(nix::libc::SYS_setresgid, keep, user.uid as nix::libc::c_long, keep),
            0
        );
        assert_eq!(
            nix::libc::syscall(nix::libc::SYS_setresuid, keep, user.uid as nix::libc::c_long, keep),
            0
        );
    }
}

/// Runs `f` as `user` on a thread inside `ns`.
pub fn as_user<R: Send + 'static>(ns: &Netns, user: LocalUser, f: impl FnOnce() -> R + Send + 'static) -> R {
    ns.run_in(move || {
        become_on_this_thread(user);
        f()
    })
    .unwrap()
}

/// One request of the service's protocol, as `user`.
pub fn ask(ns: &Netns, user: LocalUser, socket: &Path, request: Value) -> Value {
    let socket = socket.to_path_buf();
    as_user(ns, user, move || {
        let mut stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{user:?} connecting: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        stream.write_all(&line).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
    })
}

/// An HTTP GET as `user` from `ns`: the body, or what went wrong.
pub fn get_as(ns: &Netns, user: LocalUser, ip: &str, port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    as_user(ns, user, move || {
        let mut stream = TcpStream::connect_timeout(&addr, T).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
        write!(stream, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(|e| format!("read from {addr}: {e}"))?;
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).ok_or(text)
    })
}

/// The service, started as root in the technician's namespace.
pub struct Service {
    pub process: Process,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    pub fn start(ns: &Netns) -> Service {
        // Reachable by everyone, as /run/ferry is; the socket's own mode
        // and group decide who gets in.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run").join("client.sock");
        let process = Self::spawn(ns, &socket);
        Service { process, socket, _dir: dir }
    }

    pub fn spawn(ns: &Netns, socket: &Path) -> Process {
        let mut cmd = ns.command(bin_path("ferry"));
        cmd.args(["service", "--socket", socket.to_str().unwrap(), "--group-id", &GROUP.to_string()]);
        cmd.env("FERRY_LOG", "info,ferry=debug");
        let mut process = ns.spawn(cmd).unwrap();
        process.wait_for_output("ferry service ready", Duration::from_secs(20)).unwrap();
        process
    }

    pub fn log(&self) -> String {
        format!("--- service log ---\n{}", self.process.stderr())
    }
}

/// `program` as `user` (uid, gid and groups), in `ns` when given. The file
/// returned holds the namespace open: keep it until the command is spawned.
pub fn command_as(
    user: LocalUser,
    ns: Option<&Netns>,
    program: impl AsRef<std::ffi::OsStr>,
) -> (Command, Option<std::fs::File>) {
    let mut cmd = Command::new(program);
    ferry_lab::without_host_config(&mut cmd);
    let netns = ns.map(|ns| std::fs::File::open(ns.path()).unwrap());
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    // SAFETY: only system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns_fd {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )?;
            }
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(user.uid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(user.uid))?;
            Ok(())
        });
    }
    (cmd, netns)
}

/// A command of `ferry` as `user`, in `ns` when given (for the cloud), with
/// its own configuration folder and the service's socket.
pub fn ferry_as(
    user: LocalUser,
    ns: Option<&Netns>,
    home: &Path,
    socket: &Path,
    args: &[&str],
    stdin: &str,
) -> Output {
    let (mut cmd, netns) = command_as(user, ns, bin_path("ferry"));
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("HOME", home)
        .env("FERRY_SOCKET", socket)
        .env_remove("FERRY_API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(netns);
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A home folder for `user` that only `user` can enter.
pub fn home_of(root: &Path, user: LocalUser) -> PathBuf {
    let home = root.join(user.uid.to_string());
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.uid)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    home
}

/// Our policy rules (priority 5210) in `ns`.
pub fn ferry_rules(ns: &Netns) -> Vec<String> {
    ns.ip(&["rule", "show"]).unwrap().lines().filter(|l| l.starts_with("5210:")).map(str::to_string).collect()
}

/// A TCP connection from `ns` made by `user`'s socket: routed as that
/// user's traffic (through their tunnel).
pub fn connect_as(ns: &Netns, user: LocalUser, ip: &str, port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(ip.parse().map_err(|e| format!("{ip}: {e}"))?, port);
    as_user(ns, user, move || {
        TcpStream::connect_timeout(&addr, T).map_err(|e| format!("connect {addr}: {e}"))
    })
}

/// One ICMP echo from `ns` as `user` (an ICMP datagram socket, which the
/// namespace allows every group: `ping_group_range`); whether it was answered.
pub fn ping_as(ns: &Netns, user: LocalUser, ip: &str) -> Result<(), String> {
    let (mut cmd, netns) = command_as(user, Some(ns), "ping");
    cmd.args(["-n", "-c", "1", "-W", "2", ip]);
    let out = cmd.output().map_err(|e| e.to_string())?;
    drop(netns);
    if out.status.success() { Ok(()) } else { Err(format!("ping {ip}: {}", text(&out))) }
}

/// A technician at their machine: a local user with a home of their own,
/// running `ferry` in the machine's namespace against its service.
pub struct FerryUser {
    pub user: LocalUser,
    pub ns: Netns,
    pub home: PathBuf,
    pub socket: PathBuf,
    _homes: tempfile::TempDir,
}

impl FerryUser {
    pub fn new(ns: &Netns, user: LocalUser, service: &Service) -> FerryUser {
        let homes = tempfile::tempdir().unwrap();
        std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = home_of(homes.path(), user);
        FerryUser { user, ns: ns.clone(), home, socket: service.socket.clone(), _homes: homes }
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        ferry_as(self.user, Some(&self.ns), &self.home, &self.socket, args, "")
    }

    /// `ferry login` with a password; panics unless it works.
    pub fn login(&self, cloud_url: &str, name: &str, password: &str) {
        let args = ["login", "--cloud", cloud_url, "--user", name, "--password-stdin"];
        let out =
            ferry_as(self.user, Some(&self.ns), &self.home, &self.socket, &args, &format!("{password}\n"));
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `ferry connect SESSION --json` with `--wait` seconds; the tunnel, or
    /// the whole output when it failed.
    pub fn connect(&self, session: u64, wait_s: u64) -> Result<Value, Output> {
        let out = self.ferry(&["connect", &session.to_string(), "--wait", &wait_s.to_string(), "--json"]);
        if !out.status.success() {
            return Err(out);
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out))))
    }

    /// `ferry status --json`.
    pub fn status(&self) -> Vec<Value> {
        let out = self.ferry(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// The tunnel of configuration `config_id` in `ferry status`, or null.
    pub fn tunnel(&self, config_id: &Value) -> Value {
        self.status().into_iter().find(|t| &t["config_id"] == config_id).unwrap_or_default()
    }
}

/// The technician's laptop after it left its home network for another one:
/// unplugged from the home router (the world's
/// `Technician::BehindNat`), plugged into a new NAT router on the internet
/// with WAN 203.0.113.18 and LAN 10.30.0.0/24, at 10.30.0.2 with a new
/// default route. The home router stays, without the laptop.
pub struct AwayNetwork {
    pub router: Router,
    /// The new router's public address, which the gateway sees.
    pub wan_ip: String,
    /// The laptop's address on the new LAN.
    pub lan_ip: String,
}

impl AwayNetwork {
    pub fn roam(world: &GatewayLab, nat: Nat) -> AwayNetwork {
        world.tech_ns.ip(&["link", "del", &world.tech_if]).unwrap();
        let wan_ip = "203.0.113.18".to_string();
        let router = world
            .lab
            .nat_router(
                "away-rt",
                nat,
                &world.inet,
                "203.0.113.17/29",
                &format!("{wan_ip}/29"),
                "10.30.0.1/24",
            )
            .unwrap();
        let lan_ip = "10.30.0.2".to_string();
        let tech_if = router.attach(&world.tech_ns, &format!("{lan_ip}/24")).unwrap();
        // Full checksums on the wire, as everywhere in the world (the
        // gateway's XDP guard reads them).
        world.tech_ns.exec("ethtool", &["-K", &tech_if, "tx", "off"]).unwrap();
        router.ns.exec("ethtool", &["-K", &router.wan_if, "tx", "off"]).unwrap();
        AwayNetwork { router, wan_ip, lan_ip }
    }
}
