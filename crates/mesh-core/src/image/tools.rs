//! Finding and running the external programs image work needs.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ImageError;

/// A program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) name: &'static str,
    pub(crate) package: &'static str,
}

pub(crate) const MMDEBSTRAP: Tool = Tool { name: "mmdebstrap", package: "mmdebstrap" };
pub(crate) const MKFS_EXT4: Tool = Tool { name: "mkfs.ext4", package: "e2fsprogs" };
pub(crate) const QEMU_IMG: Tool = Tool { name: "qemu-img", package: "qemu-utils" };
pub(crate) const CHROOT: Tool = Tool { name: "chroot", package: "coreutils" };
pub(crate) const CURL: Tool = Tool { name: "curl", package: "curl" };
pub(crate) const QEMU_AARCH64_STATIC: Tool =
    Tool { name: "qemu-aarch64-static", package: "qemu-user-static" };
pub(crate) const QEMU_X86_64_STATIC: Tool =
    Tool { name: "qemu-x86_64-static", package: "qemu-user-static" };

/// Where programs are looked for: `PATH`, plus the sbin directories a non-root `PATH` often
/// lacks (mkfs.ext4 lives there).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    dirs
}

/// The full path of `tool`, or the error that names its package.
pub(crate) fn require(tool: Tool) -> Result<PathBuf, ImageError> {
    search_dirs()
        .into_iter()
        .map(|dir| dir.join(tool.name))
        .find(|candidate| is_executable(candidate))
        .ok_or(ImageError::MissingTool { tool: tool.name, package: tool.package })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command line as text, for logs and errors.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a: &OsStr| {
        let a = a.to_string_lossy();
        if a.contains([' ', '\'', '"']) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    words.join(" ")
}

/// Runs a command to completion, capturing its output; a non-zero exit is an error carrying
/// the last line of its error output.
pub(crate) fn run(command: &mut Command) -> Result<Vec<u8>, ImageError> {
    let line = describe(command);
    tracing::debug!(command = %line, "running");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn { command: line.clone(), source })?;
    if !output.status.success() {
        return Err(ImageError::CommandFailed {
            command: line,
            status: output.status,
            detail: last_line(&output.stderr)
                .or_else(|| last_line(&output.stdout))
                .unwrap_or_else(|| "no output".to_owned()),
        });
    }
    Ok(output.stdout)
}

/// Runs a long command with its output going to `log`, while its lines are relayed to the
/// debug log. On failure the error names the log file.
// FIXME: a caller killed on its own (`kill PID` rather than Ctrl-C, which reaches the whole
// process group) leaves mmdebstrap and its apt/dpkg children running into the staging
// directory until they finish; the next build removes that directory. Matters when a build is
// stopped from another terminal; needs the build's process group killed on SIGTERM.
pub(crate) fn run_logged(command: &mut Command, log: &Path) -> Result<(), ImageError> {
    let line = describe(command);
    tracing::debug!(command = %line, log = %log.display(), "running");
    let log_err = |source| ImageError::Io { step: "write", path: log.to_owned(), source };
    let mut log_file = fs::File::create(log).map_err(log_err)?;
    writeln!(log_file, "$ {line}").map_err(log_err)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn { command: line.clone(), source })?;

    // Both pipes are drained together so neither can fill up and stall the child.
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let relay = |pipe: Box<dyn io::Read + Send>, tx: std::sync::mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    };
    let t1 = relay(Box::new(stdout), tx.clone());
    let t2 = relay(Box::new(stderr), tx);
    let mut last = String::new();
    let started = std::time::Instant::now();
    for text in rx {
        tracing::debug!(target: "mesh_core::image::build", "{text}");
        // Elapsed seconds on every line show where a slow build spends its time.
        writeln!(log_file, "[{:7.1}] {text}", started.elapsed().as_secs_f32()).map_err(log_err)?;
        if !text.trim().is_empty() {
            last = text;
        }
    }
    let _ = (t1.join(), t2.join());
    let status =
        child.wait().map_err(|source| ImageError::Spawn { command: line.clone(), source })?;
    if !status.success() {
        return Err(ImageError::CommandFailed {
            command: line,
            status,
            detail: format!("{last} (full log: {})", log.display()),
        });
    }
    Ok(())
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let tool = Tool { name: "no-such-program-vm-mesh", package: "no-such-package" };
        let err = require(tool).expect_err("not installed");
        let text = err.to_string();
        assert!(text.contains("apt-get install -y --no-install-recommends no-such-package"));
    }

    #[test]
    fn failed_command_reports_its_last_error_line() {
        let err = run(Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"]))
            .expect_err("exit 3");
        let text = err.to_string();
        assert!(text.ends_with("): two"), "{text}");
    }

    #[test]
    fn logged_command_keeps_its_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        run_logged(Command::new("sh").args(["-c", "echo out; echo err >&2"]), &log).expect("run");
        let text = fs::read_to_string(&log).expect("log");
        assert!(text.contains("out") && text.contains("err"), "{text}");
        let err = run_logged(Command::new("sh").args(["-c", "echo boom >&2; exit 1"]), &log)
            .expect_err("fails");
        assert!(err.to_string().contains("boom"));
    }
}
