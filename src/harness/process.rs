//! The real `fedcrm` binary as a child process of a test: spawning it with its log in
//! a file, signalling it, waiting for it within a limit, and reading its memory from
//! `/proc`. [`CoordinatorProcess`] stops its coordinator (SIGTERM, then a bounded
//! wait, then SIGKILL) when dropped, so a failing test leaves no server behind.
//! Linux only (`/proc`, `kill`); never used by the shipped commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::Mutex;

use crate::hq::{AnalystClient, HqConfig};

/// Start `binary` (the `fedcrm` executable) with `args`, its standard error appended
/// to `log` (plain text: not a terminal) and `RUST_LOG` unset, so its config decides.
pub fn spawn(binary: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(binary)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Send `sig` (e.g. `-TERM`, `-KILL`) to a process with `kill`; the crate forbids the
/// `unsafe` a direct `kill(2)` would take.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().context("running kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed ({status})");
    }
    Ok(())
}

/// Wait for `child` to exit within `limit`; its exit status, or an error (the child
/// is then killed) naming `who`.
pub fn wait_within(child: &mut Child, limit: Duration, who: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{who} did not exit within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on loopback (free when asked; a test binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process's resident memory (Linux `/proc/<pid>/status`), in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `VmHWM`: the peak resident set since the process started.
    pub peak_kib: u64,
    /// `VmRSS`: the resident set now.
    pub now_kib: u64,
}

impl ProcessMemory {
    /// Of the process `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        Self::read(&format!("/proc/{pid}/status"))
    }

    /// Of this process.
    pub fn own() -> Result<Self> {
        Self::read("/proc/self/status")
    }

    fn read(path: &str) -> Result<Self> {
        let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("{path}: no {name}"))?;
            line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("{path}: {line}"))
        };
        Ok(Self { peak_kib: field("VmHWM:")?, now_kib: field("VmRSS:")? })
    }
}

/// `fedcrm coordinator run --config <config>` as a child process, and an analyst
/// connection to it (for the number of connected nodes). Dropping it stops the
/// process ([`CoordinatorProcess::terminate`]).
#[derive(Debug)]
pub struct CoordinatorProcess {
    child: Option<Child>,
    pub pid: u32,
    /// Its standard error.
    pub log: PathBuf,
    /// The analyst's configuration and connection.
    analyst: (HqConfig, Mutex<Option<AnalystClient>>),
}

impl CoordinatorProcess {
    /// Start the coordinator from `config` and wait (up to `limit`) until it answers
    /// `analyst`'s status request.
    pub async fn start(binary: &Path, config: &Path, log: &Path, analyst: HqConfig, limit: Duration) -> Result<Self> {
        let config = config.to_str().context("the coordinator's config path is not UTF-8")?;
        let child = spawn(binary, &["coordinator", "run", "--config", config], log)?;
        // From here on, an early return stops the child (Drop).
        let mut process =
            Self { pid: child.id(), child: Some(child), log: log.into(), analyst: (analyst, Mutex::new(None)) };
        let deadline = tokio::time::Instant::now() + limit;
        while process.connected().await.is_err() {
            if let Some(status) = process.exited()? {
                bail!("the coordinator exited ({status}) before it answered; its log is {}", log.display());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the coordinator did not answer within {} s; its log is {}", limit.as_secs(), log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(process)
    }

    /// Nodes connected now, as the coordinator reports them to the analyst (who
    /// connects at the first call, and again after a failed one).
    pub async fn connected(&self) -> Result<usize> {
        let mut client = self.analyst.1.lock().await;
        let status = match client.as_mut() {
            Some(c) => c.status().await,
            None => client.insert(AnalystClient::connect(&self.analyst.0).await?).status().await,
        };
        match status {
            Ok(s) => Ok(s.nodes.iter().filter(|n| n.connected).count()),
            Err(e) => {
                *client = None;
                Err(e.into())
            }
        }
    }

    /// Its memory now (read it before [`CoordinatorProcess::terminate`]).
    pub fn memory(&self) -> Result<ProcessMemory> {
        ProcessMemory::of(self.pid)
    }

    /// Whether it has exited (it is then reaped).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.as_mut().map(Child::try_wait).transpose()?.flatten())
    }

    /// SIGTERM, then wait up to [`fedcrm_coordinator::SHUTDOWN_TIME`] and SIGKILL if
    /// it has not exited by then (an error). `None` if it was already stopped.
    pub fn terminate(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else { return Ok(None) };
        if child.try_wait()?.is_none() {
            signal(self.pid, "-TERM")?;
        }
        wait_within(&mut child, fedcrm_coordinator::SHUTDOWN_TIME, "the coordinator").map(Some)
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            tracing::warn!(error = %e, pid = self.pid, "stopping the coordinator process");
        }
    }
}
