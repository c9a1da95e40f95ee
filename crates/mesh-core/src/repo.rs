//! Repository injection: the code repository is cloned once (shallow), optionally built once
//! per arch on the host, and written with every arch's build output into one shared read-only
//! ISO9660 image (Rock Ridge keeps modes and symlinks) that every node mounts and copies.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_qemu::Arch;

/// Volume label of the repo image; guests find the disk by its virtio serial of the same name.
pub const REPO_LABEL: &str = "meshrepo";
/// Directory inside the repo image holding each arch's build output.
pub const BUILD_DIR: &str = "vm-mesh-build";

/// Errors while cloning, building or imaging the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No `--repo` and the current directory is not in a git repository.
    #[error("no repository to inject: the current directory is not in a git repository (pass --repo PATH|URL or --no-repo)")]
    NoDefault,
    /// `git` could not be run.
    #[error("cannot run git (install the Debian package git)")]
    SpawnGit(#[source] std::io::Error),
    /// The clone failed.
    #[error("cannot clone {source_repo}{}: {stderr}", branch.as_ref().map(|b| format!(" (branch {b})")).unwrap_or_default())]
    Clone {
        /// What was cloned.
        source_repo: String,
        /// Branch asked for.
        branch: Option<String>,
        /// git's message.
        stderr: String,
    },
    /// The build command failed for one arch.
    #[error("build command failed for {arch} (exit {code}): {tail}")]
    Build {
        /// The arch.
        arch: Arch,
        /// Exit code, -1 if killed.
        code: i32,
        /// Last lines of its output.
        tail: String,
    },
    /// The build command could not be started.
    #[error("cannot start the build command for {arch}")]
    SpawnBuild {
        /// The arch.
        arch: Arch,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The build command names a placeholder we do not fill in.
    #[error("unknown placeholder {{{name}}} in the build command (known: {{target}}, {{arch}}, {{out}})")]
    UnknownPlaceholder {
        /// The placeholder.
        name: String,
    },
    /// A work directory could not be prepared.
    #[error("repository work directory {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be assembled.
    #[error("cannot add {path} to the repo image")]
    Tree {
        /// What was added.
        path: PathBuf,
        /// The cause.
        #[source]
        source: mesh_iso::TreeError,
    },
    /// The image could not be written.
    #[error("cannot write the repo image {path}")]
    Write {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: mesh_iso::WriteError,
    },
}

/// The repository as injected.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct InjectedRepo {
    /// Directory name in the image and under `/root` in guests.
    pub name: String,
    /// Where it came from.
    pub source: String,
    /// The image.
    pub image: PathBuf,
    /// Arches that have build output in the image.
    pub built: Vec<Arch>,
}

/// Resolves the repository to inject: `source` if given, else the git top level around the
/// current directory.
pub fn resolve_source(source: Option<&str>) -> Result<String, RepoError> {
    if let Some(s) = source {
        return Ok(s.to_owned());
    }
    let out = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .map_err(RepoError::SpawnGit)?;
    if !out.status.success() {
        return Err(RepoError::NoDefault);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The directory name a repository gets: the last path or URL component without `.git`.
pub fn repo_name(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let name = last.strip_suffix(".git").unwrap_or(last);
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        "repo".to_owned()
    } else {
        clean
    }
}

/// A child process group that is killed when this guard is dropped: a `mesh up` interrupted
/// by Ctrl-C or SIGTERM drops its future, and the clone or build it was waiting for (with
/// whatever that started) must not outlive it.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill has no memory-safety preconditions; the group is our own child's.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// Runs `cmd` in its own process group and collects its output; the whole group is killed if
/// the returned future is dropped before it finishes.
async fn run_group(mut cmd: tokio::process::Command) -> std::io::Result<std::process::Output> {
    cmd.process_group(0)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    let mut guard = GroupGuard(child.id());
    let out = child.wait_with_output().await;
    guard.0 = None;
    out
}

/// Clones `source` shallowly into `dest` (which must not exist).
pub async fn clone(source: &str, branch: Option<&str>, dest: &Path) -> Result<(), RepoError> {
    // A local path is cloned through file:// so that --depth is honoured.
    let url = if Path::new(source).exists() {
        let abs = std::fs::canonicalize(source)
            .map_err(|e| RepoError::Io { path: PathBuf::from(source), source: e })?;
        format!("file://{}", abs.display())
    } else {
        source.to_owned()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["-c", "advice.detachedHead=false", "clone", "--quiet", "--depth", "1", "--no-tags"]);
    if let Some(b) = branch {
        cmd.args(["--branch", b]);
    }
    cmd.arg(&url).arg(dest);
    // Never prompt for credentials: a failing clone must fail, not hang.
    cmd.env("GIT_TERMINAL_PROMPT", "0").stdin(std::process::Stdio::null());
    let out = run_group(cmd).await.map_err(RepoError::SpawnGit)?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dest);
        return Err(RepoError::Clone {
            source_repo: source.to_owned(),
            branch: branch.map(str::to_owned),
            stderr: last_lines(&String::from_utf8_lossy(&out.stderr), 3),
        });
    }
    Ok(())
}

/// Checks that a build command uses only `{target}`, `{arch}` and `{out}`; any other
/// `{word}` would reach the shell unreplaced. Shell syntax such as `${VAR}` is left alone.
pub fn check_build_template(command: &str) -> Result<(), RepoError> {
    let bytes = command.as_bytes();
    for (i, _) in command.match_indices('{') {
        if i > 0 && bytes[i - 1] == b'$' {
            continue;
        }
        let rest = &command[i + 1..];
        let Some(end) = rest.find('}') else { continue };
        let word = &rest[..end];
        let is_word =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_word && !["target", "arch", "out"].contains(&word) {
            return Err(RepoError::UnknownPlaceholder { name: word.to_owned() });
        }
    }
    Ok(())
}

/// The Rust-style target triple of an arch, for `{target}`.
pub fn target_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Aarch64 => "aarch64-unknown-linux-gnu",
    }
}

/// Runs the build command for `arch` in `checkout`; its output goes to `out_dir`
/// (`$MESH_OUT`, also `{out}`).
pub async fn build(
    command: &str,
    arch: Arch,
    checkout: &Path,
    out_dir: &Path,
) -> Result<(), RepoError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|source| RepoError::Io { path: out_dir.to_owned(), source })?;
    let cmdline = command
        .replace("{target}", target_triple(arch))
        .replace("{arch}", &arch.to_string())
        .replace("{out}", &out_dir.display().to_string());
    tracing::info!(%arch, "building repository");
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&cmdline)
        .current_dir(checkout)
        .env("MESH_ARCH", arch.to_string())
        .env("MESH_TARGET", target_triple(arch))
        .env("MESH_OUT", out_dir)
        .stdin(std::process::Stdio::null());
    let out = run_group(cmd).await.map_err(|source| RepoError::SpawnBuild { arch, source })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if text.trim().is_empty() {
            text = "(no output)".into();
        }
        return Err(RepoError::Build {
            arch,
            code: out.status.code().unwrap_or(-1),
            tail: last_lines(&text, 5),
        });
    }
    Ok(())
}

/// Clones, builds per arch and writes the shared image at `image`.
pub async fn prepare(
    source: &str,
    branch: Option<&str>,
    build_cmd: Option<&str>,
    arches: &[Arch],
    work: &Path,
    image: &Path,
) -> Result<InjectedRepo, RepoError> {
    let name = repo_name(source);
    std::fs::create_dir_all(work)
        .map_err(|source| RepoError::Io { path: work.to_owned(), source })?;
    let checkout = work.join(&name);
    if checkout.exists() {
        std::fs::remove_dir_all(&checkout)
            .map_err(|source| RepoError::Io { path: checkout.clone(), source })?;
    }
    clone(source, branch, &checkout).await?;

    let mut built = Vec::new();
    let mut tree = mesh_iso::IsoTree::new();
    tree.add_dir_from_disk(&name, &checkout)
        .map_err(|source| RepoError::Tree { path: checkout.clone(), source })?;
    if let Some(cmd) = build_cmd {
        for &arch in arches {
            let out_dir = work.join("out").join(arch.to_string());
            build(cmd, arch, &checkout, &out_dir).await?;
            tree.add_dir_from_disk(&format!("{BUILD_DIR}/{arch}"), &out_dir)
                .map_err(|source| RepoError::Tree { path: out_dir.clone(), source })?;
            built.push(arch);
        }
    }
    let opts = mesh_iso::IsoOptions::new(REPO_LABEL);
    let target = image.to_owned();
    // Writing a large tree takes seconds: keep it off the async workers (signals stay live).
    tokio::task::spawn_blocking(move || mesh_iso::write_iso_file(&tree, &opts, &target))
        .await
        .map_err(|e| RepoError::Io { path: image.to_owned(), source: std::io::Error::other(e) })?
        .map_err(|source| RepoError::Write { path: image.to_owned(), source })?;
    Ok(InjectedRepo { name, source: source.to_owned(), image: image.to_owned(), built })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_templates_know_their_placeholders() {
        check_build_template("make TARGET={target} ARCH={arch} OUT={out}").expect("known");
        check_build_template("echo ${HOME} && awk '{ print $1 }'").expect("shell syntax");
        assert!(matches!(
            check_build_template("echo {bogus}"),
            Err(RepoError::UnknownPlaceholder { .. })
        ));
    }

    #[test]
    fn repo_names_come_from_the_last_component() {
        assert_eq!(repo_name("https://example.invalid/org/proj.git"), "proj");
        assert_eq!(repo_name("/home/u/src/proj/"), "proj");
        assert_eq!(repo_name("git@host:org/my-proj.git"), "my-proj");
        assert_eq!(repo_name("/"), "repo");
    }
}
