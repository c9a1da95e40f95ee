//! Project automation behind `cargo xtask`: system packages, base images, the main job, the
//! test suite, CI checks and benchmarks, as plain Rust subcommands.

mod bench;
mod bench_mesh;
mod deps;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

  mesh ARGS...   install missing system packages, build missing base images, run `mesh up ARGS`
  test           install missing system packages, build base images, run the whole test suite
  lint           fmt check, clippy (warnings denied), rustdoc (warnings denied)
  ci             lint, then the test suite
  bench          benchmarks against reference tools, measured in the same run
  dist           build the release `mesh` binary (optimised, statically linked), print its path
  deps           install the missing system packages (apt-get, --no-install-recommends)
  image [ARCH..] build (or reuse) the base images (default: x86_64 aarch64)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("xtask: error: {}", chain.join(": "));
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "mesh" => mesh(rest),
        "test" => test(rest),
        "ci" => ci(),
        "lint" => {
            lint()?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => bench::run(rest),
        "dist" => {
            println!("{}", release_binary()?.display());
            Ok(ExitCode::SUCCESS)
        }
        "deps" => {
            deps::ensure()?;
            Ok(ExitCode::SUCCESS)
        }
        "image" => {
            deps::ensure()?;
            let arches: Vec<&str> = if rest.is_empty() {
                vec!["x86_64", "aarch64"]
            } else {
                rest.iter().map(String::as_str).collect()
            };
            images(&arches)?;
            Ok(ExitCode::SUCCESS)
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown xtask command {other:?}")
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, failing with its name if it fails.
pub fn check(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Builds the `mesh` binary and returns its path.
pub fn mesh_binary() -> Result<PathBuf> {
    check(cargo().args(["build", "--quiet", "-p", "mesh-cli", "--bin", "mesh"]))?;
    Ok(target_dir().join("debug/mesh"))
}

/// Builds the release `mesh` binary as it is shipped and returns its path.
///
/// It is linked statically and not position-independent: no dynamic loader runs and no shared
/// library is mapped at start. Against musl when the toolchain has that target (`rustup target
/// add x86_64-unknown-linux-musl`): glibc's start-up asks the CPU about its caches and
/// features with a few dozen CPUID instructions, each of which traps to the hypervisor in a
/// virtual machine, and that alone cost about 0.13 ms of a 0.85 ms `mesh seed` here. Otherwise
/// against glibc (`crt-static`), saying so. The flags go only to the binary's own link (`cargo
/// rustc`), since proc-macro crates cannot be built static. The binary looks up no host names
/// or user accounts through NSS modules, the one thing a static glibc binary cannot do.
pub fn release_binary() -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["rustc", "--quiet", "--release", "-p", "mesh-cli", "--bin", "mesh"]);
    let musl = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    if cfg!(target_os = "linux") && target_installed(&musl) {
        build.args(["--target", &musl, "--", "-C", "relocation-model=static"]);
        check(&mut build)?;
        return Ok(target_dir().join(musl).join("release/mesh"));
    }
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        eprintln!(
            "xtask: target {musl} is not installed (rustup target add {musl}); linking the \
             release binary against glibc, whose start-up is slower in a virtual machine"
        );
        build.args(["--", "-C", "target-feature=+crt-static", "-C", "relocation-model=static"]);
    }
    check(&mut build)?;
    Ok(target_dir().join("release/mesh"))
}

/// Whether the Rust toolchain has the standard library for `target`.
fn target_installed(target: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib").join(target).join("lib").is_dir())
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn images(arches: &[&str]) -> Result<()> {
    let mesh = mesh_binary()?;
    for arch in arches {
        eprintln!("xtask: base image for {arch}");
        // The image path goes to stderr: stdout belongs to `mesh up` (e.g. its --json report).
        check(
            Command::new(&mesh).args(["image", "build", "--arch", arch]).stdout(std::io::stderr()),
        )?;
    }
    Ok(())
}

/// The arches a `mesh up` argument list asks for (flags only; a mesh.toml is read by mesh).
fn arches_in(args: &[String]) -> Vec<&'static str> {
    let mut want = Vec::new();
    let mut it = args.iter();
    let mut file = None;
    while let Some(a) = it.next() {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let value = || value.clone().or_else(|| it.clone().next().cloned());
        match flag.as_str() {
            "--n-x86" if value().is_some_and(|v| v != "0") => want.push("x86_64"),
            "--n-aarch" if value().is_some_and(|v| v != "0") => want.push("aarch64"),
            "-f" | "--file" => file = value(),
            _ => {}
        }
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (word, arch) in [("x86_64", "x86_64"), ("aarch64", "aarch64")] {
            if text.contains(word) && !want.contains(&arch) {
                want.push(arch);
            }
        }
    }
    want
}

fn mesh(args: &[String]) -> Result<ExitCode> {
    deps::ensure()?;
    let arches = arches_in(args);
    if !arches.is_empty() {
        images(&arches)?;
    }
    let mesh = mesh_binary()?;
    let status = Command::new(mesh).arg("up").args(args).status().context("cannot run mesh")?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

fn test(extra: &[String]) -> Result<ExitCode> {
    deps::ensure()?;
    // The suite boots real guests from the cached base images; building them first keeps the
    // tests' own timing sane (each test would build a missing image itself, one at a time).
    images(&["x86_64", "aarch64"])?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"]).args(extra);
    let status = cmd.status().context("cannot run cargo test")?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

fn lint() -> Result<()> {
    check(cargo().args(["fmt", "--all", "--check"]))?;
    check(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    check(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))
}

fn ci() -> Result<ExitCode> {
    let started = std::time::Instant::now();
    lint()?;
    let code = test(&[])?;
    eprintln!("xtask ci: finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(code)
}
