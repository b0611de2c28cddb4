//! Processes started inside lab namespaces.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::{Error, Result, netns::describe};

/// A running process. Killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    command: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Process {
    /// Starts `cmd` with its output in files under `dir`.
    pub fn spawn(cmd: &mut Command, dir: &Path) -> Result<Process> {
        let command = describe(cmd);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stdout_path = dir.join(format!("proc{n}.out"));
        let stderr_path = dir.join(format!("proc{n}.err"));
        let file = |path: &Path| {
            File::create(path).map_err(|source| Error::Spawn { command: command.clone(), source })
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file(&stdout_path)?)
            .stderr(file(&stderr_path)?)
            .spawn()
            .map_err(|source| Error::Spawn { command: command.clone(), source })?;
        Ok(Process { child, command, stdout_path, stderr_path })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .map_err(|errno| Error::Setup(format!("sending {signal} to `{}`: {errno}", self.command)))
    }

    /// Whether it has exited (and with what), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("`{}` to exit", self.command), timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until stdout or stderr contains `needle`. Fails early if the
    /// process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_status() {
                return Err(Error::Command {
                    command: self.command.clone(),
                    status,
                    stderr: format!(
                        "exited before printing {needle:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.stdout(),
                        self.stderr()
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("{needle:?} from `{}`", self.command), timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn timeout(&self, what: String, timeout: Duration) -> Error {
        Error::Timeout { what, seconds: timeout.as_secs_f64(), stdout: self.stdout(), stderr: self.stderr() }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
