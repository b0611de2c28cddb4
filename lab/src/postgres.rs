//! A PostgreSQL server of the test's own: Debian's PostgreSQL 15, its data
//! and its Unix socket in a temporary folder, run as an unprivileged user
//! (`nobody` when the tests run as root, since PostgreSQL refuses root). It
//! listens on no TCP port, so parallel tests cannot collide, and it goes with
//! the value that started it.
//!
//! A server also goes when the process that started it dies, however it
//! dies: a little reaper shell holds the read end of a pipe that only this
//! process writes to, and when the pipe closes it stops the server and
//! removes the folder. A server kept in a `static` for a whole test binary
//! (which is never dropped) is cleaned up that way.

use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{Error, Result};

/// Where Debian puts the server's programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The superuser `initdb` makes; local connections need no password.
pub const USER: &str = "ferry";

/// An environment variable of extra `postgresql.conf` settings, separated
/// by `;`, for every server started here (for measurements). A server is
/// refused one that would change its durability (see `DURABILITY_SETTINGS`).
pub const EXTRA_SETTINGS: &str = "FERRY_PG_EXTRA_SETTINGS";

/// How the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync on, as in production: for benchmarks.
    Full,
    /// fsync off: the server's own crash recovery still works (its WAL is
    /// written before a commit returns), but the OS cache is trusted, which
    /// is all a test that kills processes (not the machine) needs.
    Relaxed,
}

pub struct Postgres {
    folder: PathBuf,
    data: PathBuf,
    account: Option<(u32, u32)>,
    reaper: Option<(Child, ChildStdin)>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether PostgreSQL's programs are installed (`cargo xtask setup` does it).
pub fn available() -> bool {
    Path::new(BIN_DIR).join("initdb").exists()
}

impl Postgres {
    /// Makes a new cluster in a temporary folder and starts it.
    pub fn start(durability: Durability) -> Result<Postgres> {
        Postgres::start_in(&std::env::temp_dir(), durability)
    }

    /// The same in a new folder under `parent` (on a disk rather than a
    /// tmpfs, where flushes cost what they cost). `parent` and the folders
    /// above it must be open to the unprivileged account the server runs as.
    pub fn start_in(parent: &Path, durability: Durability) -> Result<Postgres> {
        if !available() {
            return Err(Error::Setup(format!(
                "PostgreSQL 15 is not installed ({BIN_DIR}/initdb is missing); run `cargo xtask setup`"
            )));
        }
        // More lines for a measurement (e.g. `shared_preload_libraries =
        // 'pg_stat_statements'`), one per `;`, checked before anything is made.
        let extra = std::env::var(EXTRA_SETTINGS).unwrap_or_default();
        let extra = extra_settings(&extra)?;
        let account = unprivileged_account()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The socket's folder is the connection's host, which must be absolute.
        let parent = parent.canonicalize().map_err(|e| setup(parent, "resolving", e))?;
        let folder = parent.join(format!("ferry-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir(&folder).map_err(|e| setup(&folder, "creating", e))?;
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup(&folder, "restricting", e))?;
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(&folder, Some(uid), Some(gid))
                .map_err(|e| setup(&folder, "chown", e))?;
        }
        let data = folder.join("data");
        let mut server = Postgres { folder, data, account, reaper: None };
        server.start_reaper()?;
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(&server.data).args([
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        run(&mut initdb)?;
        let fsync = if durability == Durability::Full { "on" } else { "off" };
        let mut settings = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nfsync = {fsync}\n\
             synchronous_commit = on\nshared_buffers = 32MB\nmax_connections = 300\n\
             log_min_messages = warning\n",
            server.folder.display()
        );
        for line in extra {
            settings.push_str(line);
            settings.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(server.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .map_err(|e| setup(&server.data, "configuring", e))?;
        server.resume()?;
        Ok(server)
    }

    /// The server's main process (its postmaster), from the data folder's
    /// `postmaster.pid`.
    pub fn pid(&self) -> Result<u32> {
        let file = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&file).map_err(|e| setup(&file, "reading", e))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| Error::Setup(format!("{} names no process", file.display())))
    }

    /// The folder holding the socket: the `host` of a connection.
    pub fn socket_dir(&self) -> &Path {
        &self.folder
    }

    /// A connection URL for database `database` (over the Unix socket).
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://{USER}@localhost/{database}?host={}", self.folder.display())
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""))
    }

    /// Runs SQL through `psql`, stopping at the first error.
    pub fn sql(&self, database: &str, sql: &str) -> Result<()> {
        let mut psql = Command::new("psql");
        psql.arg("-h").arg(&self.folder).args([
            "-U",
            USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ]);
        run(&mut psql).map(drop)
    }

    /// Stops the server: `immediate` as a crash would (recovery at the next
    /// start), else after ending every session.
    pub fn stop(&self, immediate: bool) -> Result<()> {
        let mode = if immediate { "immediate" } else { "fast" };
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(&self.data).args(["-m", mode, "-w", "stop"]);
        run(&mut stop).map(drop)
    }

    /// Starts the stopped server again on the same data.
    pub fn resume(&self) -> Result<()> {
        let mut start = self.command("pg_ctl");
        start.arg("-D").arg(&self.data).arg("-l").arg(self.folder.join("server.log")).args(["-w", "start"]);
        run(&mut start).map(drop)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.join("server.log")).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(Path::new(BIN_DIR).join(program));
        cmd.current_dir(&self.folder).env_remove("PGDATA");
        as_account(&mut cmd, self.account);
        cmd
    }

    /// The shell that stops the server and removes the folder once this
    /// process's end of its pipe closes.
    fn start_reaper(&mut self) -> Result<()> {
        let script = format!(
            "cat >/dev/null; '{bin}/pg_ctl' -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{folder}'",
            bin = BIN_DIR,
            data = self.data.display(),
            folder = self.folder.display(),
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]).current_dir(&self.folder).stdin(Stdio::piped()).stdout(Stdio::null());
        as_account(&mut sh, self.account);
        // Its own process group: a Ctrl-C meant for the tests must not stop
        // it before it has cleaned up.
        sh.process_group(0);
        let mut child =
            sh.spawn().map_err(|source| Error::Spawn { command: "sh (reaper)".into(), source })?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Setup("the reaper has no stdin".into()))?;
        self.reaper = Some((child, stdin));
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.reaper.take() {
            drop(stdin);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// Runs `cmd` as `account` (and in none of our groups), if one is given.
fn as_account(cmd: &mut Command, account: Option<(u32, u32)>) {
    let Some((uid, gid)) = account else { return };
    let (uid, gid) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
    // SAFETY: between fork and exec only async-signal-safe system calls run
    // (setgroups, setgid, setuid); nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}

/// Settings that decide whether a commit the server acknowledged survives
/// a crash, which `Durability` alone sets: a test or a benchmark that says
/// it runs durably must not be quietly made to run otherwise. (`include`
/// and its kin could bring any of them in from a file.)
const DURABILITY_SETTINGS: [&str; 7] = [
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "include",
    "include_if_exists",
    "include_dir",
];

/// The `postgresql.conf` lines of `extra` ([`EXTRA_SETTINGS`]): separated
/// by `;` (or line breaks), blank ones left out. Refuses a line that sets
/// one of [`DURABILITY_SETTINGS`].
fn extra_settings(extra: &str) -> Result<Vec<&str>> {
    let lines: Vec<&str> = extra.split([';', '\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect();
    for line in &lines {
        // `name = value` or `name value`; names are case-insensitive.
        let name = line.split(|c: char| c == '=' || c.is_whitespace()).next().unwrap_or_default();
        if DURABILITY_SETTINGS.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            return Err(Error::Setup(format!(
                "{EXTRA_SETTINGS} may not set `{name}` (in `{line}`): the durability settings of a test's \
                 or a benchmark's PostgreSQL come from its Durability ({})",
                DURABILITY_SETTINGS.join(", ")
            )));
        }
    }
    Ok(lines)
}

/// `nobody` when running as root; None (ourselves) otherwise.
fn unprivileged_account() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("nobody")
        .map_err(|e| Error::Setup(format!("looking up the user nobody: {e}")))?
        .ok_or_else(|| Error::Setup("there is no user `nobody` to run PostgreSQL as".into()))?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn setup(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Setup(format!("{what} {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Result<String> {
    let command = crate::netns::describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        stderr.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(Error::Command { command, status: output.status, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_settings_are_lines_that_never_touch_durability() {
        assert_eq!(
            extra_settings(" shared_preload_libraries = 'pg_stat_statements';; work_mem = 8MB ;").unwrap(),
            ["shared_preload_libraries = 'pg_stat_statements'", "work_mem = 8MB"]
        );
        assert!(extra_settings("").unwrap().is_empty());
        // A comment is harmless, and a name must match whole.
        assert_eq!(
            extra_settings("# fsync = off;synchronous_standby_names = ''").unwrap(),
            ["# fsync = off", "synchronous_standby_names = ''"]
        );
        for refused in [
            "fsync = off",
            "work_mem = 8MB;synchronous_commit=off",
            "FULL_PAGE_WRITES off",
            "wal_sync_method = fdatasync",
            "include_dir 'conf.d'",
            "work_mem = 8MB\n Fsync\t= off",
        ] {
            let error = extra_settings(refused).unwrap_err().to_string();
            assert!(error.contains(EXTRA_SETTINGS), "{refused}: {error}");
        }
    }

    #[test]
    fn a_server_runs_restarts_and_leaves_nothing_behind() {
        let server = Postgres::start(Durability::Relaxed).unwrap();
        server.create_database("one").unwrap();
        server.sql("one", "CREATE TABLE t (x INT); INSERT INTO t VALUES (1)").unwrap();
        server.stop(true).unwrap();
        assert!(server.sql("one", "SELECT 1").is_err(), "stopped");
        server.resume().unwrap();
        server.sql("one", "SELECT x FROM t").unwrap();
        let folder = server.socket_dir().to_path_buf();
        assert!(folder.join(".s.PGSQL.5432").exists());
        drop(server);
        assert!(!folder.exists(), "the folder is removed");
    }
}
