//! Supervision of one QEMU process: spawn, watch, reap, stop.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{QemuCommand, Qmp};

/// Failures while starting, watching or stopping a QEMU process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file for QEMU's stdout and stderr could not be opened.
    #[error("cannot open QEMU log {path}")]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The network namespace file could not be opened.
    #[error("cannot open network namespace {path}")]
    OpenNetns {
        /// The namespace file (for example `/run/netns/NAME`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The process could not be started (this includes a failed `setns`).
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `/proc/PID/stat` of a process could not be read or parsed.
    #[error("cannot read the start time of process {pid}")]
    ReadStartTime {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process failed.
    #[error("cannot wait for process {pid}")]
    Wait {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed.
    #[error("cannot send {signal} to process {pid}")]
    Signal {
        /// The process.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// A running (or exited, not yet dropped) QEMU process that we started.
///
/// Dropping it does not kill QEMU: VMs may outlive the program that started them (record
/// [`QemuProcess::pid`] and [`QemuProcess::start_time`] and use [`kill_recorded`] later).
#[derive(Debug)]
pub struct QemuProcess {
    child: tokio::process::Child,
    pid: u32,
    start_time: u64,
    status: Option<ExitStatus>,
}

impl QemuProcess {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`, in a process
    /// group of its own (so a terminal's Ctrl-C does not reach it), inside the network
    /// namespace `netns_path` if given (the child calls `setns` before `exec`, so QEMU opens
    /// its taps there).
    ///
    /// Must be called from within a Tokio runtime, which reaps the child.
    pub fn spawn(
        cmd: &QemuCommand,
        netns_path: Option<&Path>,
        log: &Path,
    ) -> Result<QemuProcess, ProcessError> {
        Self::spawn_niced(cmd, netns_path, log, 0)
    }

    /// Like [`QemuProcess::spawn`], with the scheduling niceness `nice` (-20..=19) set in the
    /// child before `exec`, so every thread QEMU starts has it from the beginning. Use
    /// [`set_priority`] to change it later.
    pub fn spawn_niced(
        cmd: &QemuCommand,
        netns_path: Option<&Path>,
        log: &Path,
        nice: i32,
    ) -> Result<QemuProcess, ProcessError> {
        let open_log = || OpenOptions::new().create(true).append(true).open(log);
        let log_error = |source| ProcessError::OpenLog { path: log.to_owned(), source };
        let stdout = open_log().map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        let netns = netns_path
            .map(|path| {
                File::open(path)
                    .map_err(|source| ProcessError::OpenNetns { path: path.to_owned(), source })
            })
            .transpose()?;

        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let fd = netns.as_ref().map(|netns| netns.as_raw_fd());
        if fd.is_some() || nice != 0 {
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // async-signal-safe `setns` and `setpriority` system calls, on a descriptor the
            // parent keeps open (and does not close) until `spawn` returns.
            unsafe {
                command.pre_exec(move || {
                    if let Some(fd) = fd {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if nice != 0 && libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        tracing::debug!(command = %cmd, netns = ?netns_path, "starting QEMU");
        let child = command
            .spawn()
            .map_err(|source| ProcessError::Spawn { program: cmd.program.clone(), source })?;
        drop(netns);

        let pid = child.id().expect("a child that was not yet waited for has a PID");
        // Our child cannot be reaped behind our back, so its /proc entry is still there.
        let start_time = process_start_time(pid)?;
        Ok(QemuProcess { child, pid, start_time, status: None })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process start time in clock ticks since boot (field 22 of `/proc/PID/stat`):
    /// with the PID it identifies the process even after the PID is reused.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Waits until QEMU exits and returns its status (again on later calls).
    pub async fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| ProcessError::Wait { pid: self.pid, source })?;
        self.status = Some(status);
        Ok(status)
    }

    /// Returns QEMU's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|source| ProcessError::Wait { pid: self.pid, source })?;
        }
        Ok(self.status)
    }

    /// Stops QEMU, each step waiting up to `grace` for the process to exit: with a QMP
    /// connection, an ACPI power-down (the guest shuts down cleanly) and then `quit`;
    /// without one, SIGTERM (which QEMU handles like `quit`). SIGKILL comes last.
    pub async fn stop(&mut self, qmp: Option<&Qmp>, grace: Duration) -> Result<(), ProcessError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        if let Some(qmp) = qmp {
            match tokio::time::timeout(grace, qmp.system_powerdown()).await {
                Ok(Ok(())) => {
                    if self.exited_within(grace).await? {
                        return Ok(());
                    }
                    tracing::debug!(pid = self.pid, "guest ignored the ACPI power-down");
                }
                Ok(Err(error)) => {
                    tracing::debug!(pid = self.pid, %error, "system_powerdown failed")
                }
                Err(_) => tracing::debug!(pid = self.pid, "system_powerdown timed out"),
            }
            // QEMU may exit before its reply to `quit` is read: the outcome shows in the
            // process status, not in the reply.
            let _ = tokio::time::timeout(grace, qmp.quit()).await;
        } else {
            self.signal(Signal::SIGTERM)?;
        }
        if self.exited_within(grace).await? {
            return Ok(());
        }
        tracing::warn!(pid = self.pid, "QEMU did not exit in time; killing it");
        self.signal(Signal::SIGKILL)?;
        self.wait().await.map(drop)
    }

    async fn exited_within(&mut self, grace: Duration) -> Result<bool, ProcessError> {
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(result) => result.map(|_| true),
            Err(_) => Ok(false),
        }
    }

    fn signal(&mut self, signal: Signal) -> Result<(), ProcessError> {
        // An unreaped child keeps its PID, so the signal cannot reach another process.
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid as i32);
        kill(pid, signal).map_err(|source| ProcessError::Signal { pid: self.pid, signal, source })
    }
}

/// Sets the scheduling niceness of every thread of process `pid` to `nice` (Linux keeps
/// niceness per thread, so renicing only the process id would leave QEMU's vCPU threads as
/// they were). Threads created afterwards inherit the niceness of the thread creating them.
/// Raising priority (a lower value) needs `CAP_SYS_NICE`.
pub fn set_priority(pid: u32, nice: i32) -> io::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority takes plain integers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let error = io::Error::last_os_error();
            // A thread that ended since the listing is not an error.
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// The niceness of thread (or single-threaded process) `tid`.
pub fn priority(tid: u32) -> io::Result<i32> {
    // getpriority can return -1 legitimately: tell it from an error by errno.
    // SAFETY: errno is thread-local; getpriority takes plain integers.
    unsafe {
        *libc::__errno_location() = 0;
        let value = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        let errno = *libc::__errno_location();
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(value)
    }
}

/// Reads the start time (clock ticks since boot) of process `pid` from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Result<u64, ProcessError> {
    let error = |source| ProcessError::ReadStartTime { pid, source };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(error)?;
    parse_stat(&stat).map(|(_, start)| start).ok_or_else(|| {
        error(io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
    })
}

/// Returns the state letter (field 3) and start time (field 22) of a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may itself contain spaces and
    // parentheses, so fields are counted from the last closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was just taken; field 22 is 18 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Tells whether `pid` still names the process that started at `start_time` (as recorded
/// from [`QemuProcess::start_time`]), so a reused PID is never mistaken for our QEMU.
pub fn process_matches(pid: u32, start_time: u64) -> bool {
    pid != 0 && process_start_time(pid).is_ok_and(|current| current == start_time)
}

/// Kills (SIGKILL) the recorded process if it is still the same process, and waits briefly
/// until it is gone. Returns whether it was killed; `false` means it had already exited or
/// its PID now belongs to another process, which is left alone.
pub fn kill_recorded(pid: u32, start_time: u64) -> Result<bool, ProcessError> {
    if !process_matches(pid, start_time) {
        return Ok(false);
    }
    let target = Pid::from_raw(pid as i32);
    match kill(target, Signal::SIGKILL) {
        Ok(()) => {}
        Err(nix::Error::ESRCH) => return Ok(false),
        Err(source) => return Err(ProcessError::Signal { pid, signal: Signal::SIGKILL, source }),
    }
    // A process that is not our child is reaped by its new parent; ours stays a zombie
    // until waited for. Either way it no longer runs.
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        match stat.ok().as_deref().and_then(parse_stat) {
            Some((state, start)) if state != 'Z' && start == start_time => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 \
                    987654 123456789 1000 18446744073709551615 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (init"), None);
    }

    #[test]
    fn own_process_matches_itself_but_not_another_start_time() {
        let pid = std::process::id();
        let start = process_start_time(pid).expect("own /proc entry");
        assert!(process_matches(pid, start));
        assert!(!process_matches(pid, start + 1));
        assert!(!process_matches(0, start));
    }

    #[test]
    fn kill_recorded_leaves_a_process_with_another_start_time_alone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let start = process_start_time(pid).expect("child /proc entry");
        assert!(!kill_recorded(pid, start + 1).expect("no error"));
        assert!(child.try_wait().expect("try_wait").is_none(), "must still run");
        assert!(kill_recorded(pid, start).expect("kill"));
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
