//! `mesh`: stand up a mesh of QEMU VMs (x86_64 and aarch64 on one virtual network), run
//! commands on every node, inject faults, and tear it all down.
//!
//! Argument parsing, progress, tables and JSON only: every decision lives in `mesh-core`.

// The binary provides the C `main` itself, see `main` below.
#![cfg_attr(not(test), no_main)]

mod report;
mod seed_args;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mesh_core::{AccelChoice, MeshPlan, MeshSpec, Progress, SpecOverrides, UpOptions};

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "Meshes of QEMU VMs for cross-architecture protocol testing"
)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Arguments of `mesh seed`.
#[derive(Args, Debug, PartialEq)]
struct SeedArgs {
    /// Output image.
    out: PathBuf,
    /// user-data file (`-`: standard input, for one of the inputs).
    #[arg(long)]
    user_data: PathBuf,
    /// meta-data file.
    #[arg(long)]
    meta_data: PathBuf,
    /// network-config file (v2).
    #[arg(long)]
    network_config: Option<PathBuf>,
    /// vendor-data file.
    #[arg(long)]
    vendor_data: Option<PathBuf>,
    /// Image format.
    #[arg(long, value_enum, default_value = "iso")]
    format: SeedFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create a mesh, wait until every node is ready, run the action (or the built-in
    /// connectivity check) on all nodes, report, and tear down.
    Up(UpArgs),
    /// Show meshes and their nodes.
    Status {
        /// Mesh name (all meshes if omitted).
        name: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on nodes of a running mesh.
    Exec {
        /// Mesh name.
        name: String,
        /// Only these nodes (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Seconds before a node's command is stopped.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// The command; `{name}`, `{ip_address}`, `{arch}`, `{index}`, `{peers}` are filled in.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Open an SSH session (or run a command) on one node, with the pinned host key.
    Ssh {
        /// Mesh name.
        name: String,
        /// Node name.
        node: String,
        /// Command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Follow a node's serial console log.
    Console {
        /// Mesh name.
        name: String,
        /// Node name.
        node: String,
    },
    /// Tear down a mesh (or all meshes).
    Down {
        /// Mesh name.
        name: Option<String>,
        /// Every mesh not owned by a running `mesh up`.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Remove what crashed or killed runs left behind.
    Gc,
    /// Network conditions: delay, loss, duplicate, reorder, rate, clear, partition, heal.
    Net(NetArgs),
    /// Runs one link shaper until stopped (started by `mesh net`; not for direct use).
    #[command(hide = true)]
    ShaperDaemon {
        /// The shaper's JSON configuration.
        config: PathBuf,
    },
    /// Node faults: pause, resume, kill, restart, reset, link down|up.
    Node {
        /// Mesh name.
        name: String,
        /// Node name.
        node: String,
        /// pause | resume | kill | restart | reset | link
        action: String,
        /// For `link`: down or up.
        state: Option<String>,
        /// After `restart`, do not wait for the node to be ready again.
        #[arg(long)]
        no_wait: bool,
    },
    /// Base images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Write a NoCloud seed (a drop-in for cloud-localds).
    Seed(SeedArgs),
    /// Write an ISO9660 image (Rock Ridge + Joliet) of a directory.
    Iso {
        /// Output image.
        out: PathBuf,
        /// Directory to image.
        dir: PathBuf,
        /// Volume label.
        #[arg(long, default_value = "CDROM")]
        label: String,
        /// Fixed timestamp (seconds since the epoch) for reproducible output; defaults to
        /// $SOURCE_DATE_EPOCH when set.
        #[arg(long)]
        timestamp: Option<i64>,
    },
}

#[derive(Args)]
struct NetArgs {
    /// Mesh name.
    name: String,
    /// delay NODE 100ms | loss NODE 5% | duplicate NODE 1% | reorder NODE 10% |
    /// rate NODE 1mbit | clear | clear NODE | partition A,B / C,D | heal
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    words: Vec<String>,
    /// Jitter for `delay` (uniform, e.g. 10ms).
    #[arg(long)]
    jitter: Option<String>,
    /// Seed of every random decision, for replaying a run (default: the mesh's current seed).
    #[arg(long)]
    seed: Option<u64>,
    /// `partition`: block only frames from the first group to the others.
    #[arg(long)]
    one_way: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum SeedFormat {
    Iso,
    Vfat,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build a Debian 12 base image from Debian packages (cached; reused when the recipe is
    /// unchanged).
    Build {
        /// x86_64 or aarch64.
        #[arg(long)]
        arch: String,
    },
    /// Download an official Debian cloud image and verify its SHA512 checksum.
    Pull {
        /// Release, e.g. debian-12.
        release: String,
        /// x86_64 or aarch64.
        #[arg(long)]
        arch: String,
        /// Base URL of the image directory.
        #[arg(long, default_value = "https://cloud.debian.org/images/cloud/bookworm/latest")]
        url: String,
    },
    /// Adopt a local disk image (format probed from its magic bytes).
    Import {
        /// The image file.
        path: PathBuf,
        /// x86_64 or aarch64.
        #[arg(long)]
        arch: String,
    },
    /// List cached images.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached images (an arch or an image id).
    Rm {
        /// Arch or id.
        target: String,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Number of x86_64 nodes.
    #[arg(long)]
    n_x86: Option<usize>,
    /// Number of aarch64 nodes.
    #[arg(long)]
    n_aarch: Option<usize>,
    /// Mesh name (a-z, 0-9, '-'; at most 16).
    #[arg(long)]
    name: Option<String>,
    /// A mesh.toml; flags override it.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Repository to inject (path or URL); default: the git repository around the current
    /// directory.
    #[arg(long)]
    repo: Option<String>,
    /// Branch or tag of the repository.
    #[arg(long)]
    branch: Option<String>,
    /// Build command run once per arch on the host (`{target}`, `{arch}`, `$MESH_OUT`).
    #[arg(long)]
    build: Option<String>,
    /// Inject no repository.
    #[arg(long, conflicts_with_all = ["repo", "branch", "build"])]
    no_repo: bool,
    /// Command run on every node once ready (templated); default: the connectivity check.
    #[arg(long)]
    action: Option<String>,
    /// Memory per node, MiB.
    #[arg(long)]
    memory: Option<u32>,
    /// Leave the mesh running afterwards (`mesh down NAME` removes it).
    #[arg(long)]
    keep: bool,
    /// JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Also write a JUnit XML report.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Seconds each node may take to become ready (default scales with the accelerator).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ready_timeout: Option<u64>,
    /// Seconds the action may run per node.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    action_timeout: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// The allocator on musl: musl's own maps and unmaps memory for a mid-sized block on almost
/// every allocation and free (a seed's YAML parsers took 40 such system calls), where dlmalloc,
/// like glibc's allocator, keeps freed memory for reuse.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The process entry point, in place of the Rust runtime's.
///
/// `mesh seed` is called once per VM by scripts, so start-up counts: the runtime's own start
/// reads `/proc/self/maps` to place a guard below the main thread's stack and maps an
/// alternate signal stack, which together cost about as much as parsing the seed's YAML. This
/// entry point does what of that start the tool needs (standard descriptors open, SIGPIPE at
/// its default, panics turned into exit status 101, standard output flushed at the end) and
/// leaves out the rest; the one visible difference is that a stack overflow ends the process
/// with SIGSEGV without the runtime's one-line explanation. The arguments are read from
/// `argv` here: `std::env::args_os` is empty without the runtime's start on musl, whose C
/// library (unlike glibc) does not hand them to the standard library before `main`.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    open_standard_fds();
    let count = usize::try_from(argc).unwrap_or(0);
    let args: Vec<std::ffi::OsString> = (0..count)
        // SAFETY: the C runtime passes `argc` valid pointers to NUL-terminated strings.
        .map(|i| unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) })
        .map(|arg| std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned())
        .collect();
    std::panic::set_hook(Box::new(report_panic));
    let status = match std::panic::catch_unwind(|| run(args)) {
        Ok(code) => exit_status(code),
        Err(_) if OUTPUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) => 1,
        Err(_) => 101,
    };
    if let Err(e) = std::io::stdout().flush() {
        if !OUTPUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) {
            output_failed(&e);
        }
        return 1;
    }
    status
}

/// Set when printing to standard output failed (a full disk, `> /dev/full`, a closed pipe
/// with SIGPIPE ignored): the command then ends with status 1 and a one-line error.
#[cfg_attr(test, allow(dead_code))]
static OUTPUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports, once, that standard output cannot be written.
#[cfg_attr(test, allow(dead_code))]
fn output_failed(reason: &dyn std::fmt::Display) {
    OUTPUT_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("error: cannot write to standard output: {reason}");
}

/// The panic hook. `println!` panics when standard output cannot be written; that is the
/// user's environment, not a bug, so it gets a one-line error. Any other panic is reported
/// as the runtime would, naming the main thread (which the runtime's own start would have
/// named, and this binary's entry point does not).
#[cfg_attr(test, allow(dead_code))]
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    if let Some(reason) = message.strip_prefix("failed printing to stdout: ") {
        output_failed(&reason);
        return;
    }
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main");
    let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
    eprintln!("thread '{name}' panicked{at}:\n{message}");
    match std::env::var_os("RUST_BACKTRACE") {
        Some(v) if v != "0" => eprintln!("{}", std::backtrace::Backtrace::force_capture()),
        _ => eprintln!(
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"
        ),
    }
}

/// The number behind an `ExitCode`, which the standard library does not expose: every code
/// this binary makes comes from `ExitCode::from(u8)`, `SUCCESS` or `FAILURE`.
#[cfg_attr(test, allow(dead_code))]
fn exit_status(code: ExitCode) -> libc::c_int {
    (0..=u8::MAX).find(|&n| ExitCode::from(n) == code).map_or(1, libc::c_int::from)
}

/// Opens `/dev/null` on any of descriptors 0, 1 and 2 that the caller left closed, as the Rust
/// runtime would, so that no file the tool opens later takes their place.
#[cfg_attr(test, allow(dead_code))]
fn open_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: `fds` is a live array of three pollfd structs; a zero timeout does not block.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for _closed in fds.iter().filter(|f| f.revents & libc::POLLNVAL != 0) {
        // SAFETY: opening a constant NUL-terminated path. The lowest free descriptor is
        // the closed one, since the ones below it are open already or opened just now.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    }
}

/// The whole command: its exit code.
#[cfg_attr(test, allow(dead_code))]
fn run(argv: Vec<std::ffi::OsString>) -> ExitCode {
    // Output piped into `head` must end quietly, as for any Unix tool, not panic.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `mesh seed` in its plain form skips clap (see `seed_args`); anything else about it,
    // help and errors included, goes through the whole command line parser below.
    if argv.get(1).is_some_and(|a| a == "seed") {
        if let Some((verbose, args)) = seed_args::plain(&argv[2..]) {
            quiet_logging(verbose);
            return finish(seed(args));
        }
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        // Help, version and usage errors, printed here so that a failed print is reported
        // (clap's own exit ignores it).
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            return match e.print() {
                Ok(()) => ExitCode::from(code),
                Err(io) => {
                    output_failed(&io);
                    ExitCode::FAILURE
                }
            };
        }
    };
    match &cli.command {
        Command::Seed(_) | Command::Iso { .. } => quiet_logging(cli.verbose),
        _ => init_logging(cli.verbose),
    }
    finish(dispatch(cli.command))
}

/// Runs one subcommand.
fn dispatch(command: Command) -> Result<ExitCode> {
    // Subcommands that do no I/O concurrency run without the async runtime: starting its
    // worker threads costs more than a whole `mesh seed`.
    match command {
        Command::Seed(args) => seed(args),
        Command::Iso { out, dir, label, timestamp } => iso(out, dir, label, timestamp),
        Command::Status { name, json } => status(name, json),
        Command::Ssh { name, node, command } => ssh(&name, &node, &command),
        Command::ShaperDaemon { config } => {
            mesh_core::netfault::run_daemon(&config).map(|()| ExitCode::SUCCESS).map_err(Into::into)
        }
        Command::Up(args) => block_on(up(args)),
        Command::Exec { name, nodes, json, timeout, command } => {
            block_on(exec(&name, &nodes, json, timeout, &command))
        }
        Command::Console { name, node } => block_on(console(&name, &node)),
        Command::Down { name, all } => block_on(down(name, all)),
        Command::Gc => block_on(gc()),
        Command::Net(args) => block_on(net(args)),
        Command::Node { name, node, action, state, no_wait } => {
            block_on(node_fault(&name, &node, &action, state.as_deref(), no_wait))
        }
        Command::Image(cmd) => block_on(image(cmd)),
    }
}

/// Runs an async subcommand on a multi-threaded runtime started for it.
fn block_on(subcommand: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(subcommand)
}

/// The exit code of a subcommand's outcome; an error is printed as one line.
fn finish(outcome: Result<ExitCode>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// Logging for the image writers, whose libraries log only at debug level: set up only when
/// asked for (`-vv` or `MESH_LOG`), since the subscriber costs a good part of a `mesh seed`.
fn quiet_logging(verbose: u8) {
    if verbose >= 2 || std::env::var_os("MESH_LOG").is_some() {
        init_logging(verbose);
    }
}

/// The whole cause chain on one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

fn progress_printer() -> mesh_core::ProgressFn {
    let tty = std::io::stderr().is_terminal();
    Arc::new(move |p: &Progress| {
        let line = match p {
            Progress::Step { what } => format!("==> {what}"),
            Progress::Node { node, phase, secs } => format!("    {node:<10} {phase} ({secs:.1} s)"),
            Progress::NodeFailed { node, phase, error } => {
                format!("    {node:<10} FAILED after {phase}: {error}")
            }
        };
        let _ = tty;
        eprintln!("{line}");
    })
}

async fn up(args: UpArgs) -> Result<ExitCode> {
    let file = args.file.as_deref().map(mesh_core::MeshFile::load).transpose()?;
    let flags = SpecOverrides {
        name: args.name.clone(),
        n_x86: args.n_x86,
        n_aarch: args.n_aarch,
        repo: args.repo.clone(),
        branch: args.branch.clone(),
        build: args.build.clone(),
        no_repo: args.no_repo,
        action: args.action.clone(),
        memory_mib: args.memory,
    };
    let mut spec = MeshSpec::resolve(file, &flags)?;
    if args.file.is_none() && args.n_x86.is_none() && args.n_aarch.is_none() {
        bail!("say how many nodes: --n-x86 N and/or --n-aarch M (or -f mesh.toml)");
    }
    if spec.repo.source.is_none() && !spec.repo.none {
        // Default: the repository around the current directory; none if there is none.
        match mesh_core::repo::resolve_source(None) {
            Ok(src) => spec.repo.source = Some(src),
            Err(_) => {
                eprintln!(
                    "note: not inside a git repository; no repository is injected (use --repo)"
                );
                spec.repo.none = true;
            }
        }
    }
    let options = UpOptions {
        accel: match args.accel {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        },
        ready_timeout: args.ready_timeout.map(Duration::from_secs),
        progress: Some(progress_printer()),
        images: None,
    };
    // Everything checkable is checked before any side effect.
    let (plan, _) = mesh_core::mesh::preflight(&spec, &options)?;
    let paths = plan.paths.clone();

    let work = run_mesh(spec, options, args.keep, Duration::from_secs(args.action_timeout));
    let outcome = tokio::select! {
        r = work => r,
        sig = shutdown_signal() => {
            eprintln!("\n{sig}: tearing the mesh down");
            // The dropped future released the owner lock; the journal says what to remove.
            if paths.state.exists() {
                let report = mesh_core::teardown::teardown_recorded(&paths).await?;
                for p in report.problems {
                    eprintln!("warning: {p}");
                }
            }
            return Ok(ExitCode::from(if sig == "terminated" { 143 } else { 130 }));
        }
    };
    let (report, kept) = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if kept {
        eprintln!(
            "mesh {} left running: `mesh exec {} -- CMD`, `mesh down {}`",
            report.mesh, report.mesh, report.mesh
        );
    }
    Ok(if report.all_ok() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

async fn run_mesh(
    spec: MeshSpec,
    options: UpOptions,
    keep: bool,
    action_timeout: Duration,
) -> Result<(report::Report, bool)> {
    let mut mesh = mesh_core::Mesh::up(&spec, options).await?;
    mesh.wait_ready().await;
    let readiness = mesh.readiness.clone();
    let ready_nodes: Vec<String> =
        readiness.iter().filter(|r| r.is_ready()).map(|r| r.node.clone()).collect();
    let action = spec.action.clone();
    let results = if ready_nodes.is_empty() {
        Vec::new()
    } else {
        let template = action.as_deref().unwrap_or(mesh_core::mesh::CHECK_COMMAND);
        mesh.exec(template, &ready_nodes, action_timeout).await?
    };
    let report = report::Report::new(&mesh.plan, &readiness, &results, action.is_none());
    if keep {
        mesh.keep()?;
    } else {
        eprintln!("==> teardown");
        let td = mesh.teardown().await?;
        for p in td.problems {
            eprintln!("warning: {p}");
        }
    }
    Ok((report, keep))
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn load_plan(name: &str) -> Result<MeshPlan> {
    mesh_core::spec::validate_name(name)?;
    let paths = mesh_core::MeshPaths::for_mesh(name);
    match MeshPlan::load(&paths.plan()) {
        Ok(plan) => Ok(plan),
        Err(_) => bail!("no mesh named {name} (see `mesh status`)"),
    }
}

fn status(name: Option<String>, json: bool) -> Result<ExitCode> {
    let mut meshes = mesh_core::teardown::list()?;
    if let Some(n) = &name {
        mesh_core::spec::validate_name(n)?;
        meshes.retain(|m| &m.name == n);
        if meshes.is_empty() {
            bail!("no mesh named {n}");
        }
    }
    if json {
        let v: Vec<_> = meshes
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "state": m.state,
                    "alive_nodes": m.alive_nodes,
                    "nodes": m.plan.as_ref().map(|p| p.nodes.iter().map(|n| serde_json::json!({
                        "name": n.name, "arch": n.arch.to_string(), "ip": n.ip.to_string(), "mac": n.mac,
                        "alive": m.alive_nodes.contains(&n.name),
                    })).collect::<Vec<_>>()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if meshes.is_empty() {
        println!("no meshes");
    }
    for m in &meshes {
        let state = match m.state {
            mesh_core::teardown::MeshState::Owned => "running, owned by a `mesh up`",
            mesh_core::teardown::MeshState::Kept => "kept",
            mesh_core::teardown::MeshState::Stale => "stale: left by a crash, `mesh gc` removes it",
        };
        println!("{} ({state})", m.name);
        if let Some(plan) = &m.plan {
            for n in &plan.nodes {
                let alive = if m.alive_nodes.contains(&n.name) { "running" } else { "stopped" };
                println!("  {:<10} {:<8} {:<15} {}", n.name, n.arch.to_string(), n.ip, alive);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    name: &str,
    nodes: &[String],
    json: bool,
    timeout: u64,
    command: &[String],
) -> Result<ExitCode> {
    let plan = load_plan(name)?;
    for n in nodes {
        if plan.node(n).is_none() {
            bail!("mesh {name} has no node {n}");
        }
    }
    let template = remote_command(command);
    let results =
        mesh_core::ssh::exec_nodes(&plan, nodes, &template, Duration::from_secs(timeout)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", report::exec_table(&results));
    }
    Ok(if results.iter().all(|r| r.ok()) { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// One argument is a shell command line, run as written (`mesh exec demo -- 'a | b'`); several
/// are an argument vector, each quoted so it arrives as given (`mesh exec demo -- sh -c 'x; y'`).
fn remote_command(args: &[String]) -> String {
    if args.len() == 1 {
        return args[0].clone();
    }
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+{}".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn ssh(name: &str, node: &str, command: &[String]) -> Result<ExitCode> {
    let plan = load_plan(name)?;
    let n = plan.node(node).with_context(|| format!("mesh {name} has no node {node}"))?;
    let remote = if command.is_empty() { None } else { Some(remote_command(command)) };
    let tty = remote.is_none() && std::io::stdin().is_terminal();
    let mut cmd = mesh_core::ssh::ssh_command(&plan, n, remote.as_deref(), tty)?;
    let status = cmd.status().context("cannot run ssh")?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

async fn console(name: &str, node: &str) -> Result<ExitCode> {
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let plan = load_plan(name)?;
    let n = plan.node(node).with_context(|| format!("mesh {name} has no node {node}"))?;
    let socket = n.console_socket();
    let stream = tokio::net::UnixStream::connect(&socket).await.with_context(|| {
        format!("cannot attach to the console of {node} ({}); is it running?", socket.display())
    })?;
    // What the guest printed before we attached, then the live console.
    let tail = mesh_core::ready::serial_tail(&n.serial_log(), 10);
    let tty = std::io::stdin().is_terminal();
    eprintln!("--- console of {node}{} ---", if tty { " (Ctrl-] to leave)" } else { "" });
    println!("{tail}");
    let _raw = if tty { Some(RawTerminal::enter()?) } else { None };
    let (mut from_guest, mut to_guest) = stream.into_split();
    let output = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_guest.read(&mut buf).await {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c(), if !tty => break,
            read = stdin.read(&mut buf) => {
                let Ok(n) = read else { break };
                if n == 0 {
                    // Input closed: keep showing the console until the guest side closes.
                    let _ = output.await;
                    break;
                }
                // Ctrl-] leaves, as in telnet.
                if let Some(pos) = buf[..n].iter().position(|&b| b == 0x1d) {
                    let _ = to_guest.write_all(&buf[..pos]).await;
                    break;
                }
                if to_guest.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts the terminal in raw mode for as long as it lives, so keys go to the guest as typed.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("cannot read the terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("cannot set the terminal to raw mode")?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
        eprintln!("\r\n--- console closed ---");
    }
}

async fn down(name: Option<String>, all: bool) -> Result<ExitCode> {
    let names: Vec<String> = if all {
        mesh_core::teardown::list()?
            .into_iter()
            .filter(|m| m.state != mesh_core::teardown::MeshState::Owned)
            .map(|m| m.name)
            .collect()
    } else {
        vec![name.context("name a mesh, or use --all")?]
    };
    for n in names {
        print_removed(&n, &mesh_core::teardown::down(&n).await?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn node_fault(
    name: &str,
    node: &str,
    action: &str,
    state: Option<&str>,
    no_wait: bool,
) -> Result<ExitCode> {
    use mesh_core::fault::NodeFault;
    let fault: NodeFault = match (action, state) {
        ("link", Some("down")) => NodeFault::LinkDown,
        ("link", Some("up")) => NodeFault::LinkUp,
        ("link", Some(other)) => bail!("`link` takes down or up, not {other:?}"),
        ("link", None) => bail!("`link` takes down or up: `mesh node {name} {node} link down`"),
        (a, None) => a.parse().map_err(anyhow::Error::msg)?,
        (a, Some(extra)) => bail!("unexpected argument {extra:?} after {a}"),
    };
    let plan = load_plan(name)?;
    if plan.node(node).is_none() {
        bail!(
            "mesh {name} has no node {node} (nodes: {})",
            plan.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let summary = mesh_core::teardown::inspect(&plan.paths.state);
    if summary.state == mesh_core::teardown::MeshState::Owned {
        bail!("mesh {name} is owned by a running `mesh up` (faults on such a mesh go through its Rust API); use `mesh up --keep`");
    }
    let outcome = mesh_core::fault::apply(&plan, node, fault).await?;
    println!("{outcome}");
    if fault == NodeFault::Restart && !no_wait {
        let n = plan.node(node).context("node vanished from the plan")?;
        let timeout = mesh_core::mesh::default_ready_timeout(n.arch, mesh_qemu::Accel::Tcg, 1);
        let r = mesh_core::mesh::wait_node_detached(&plan, node, timeout, Some(progress_printer()))
            .await?;
        if let Some(err) = r.error {
            bail!("{node} did not become ready after restart ({}): {err}", r.phase);
        }
        println!("{node} ready again after {:.1} s", r.ready_secs().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// Turns the words after `mesh net NAME` into an operation.
fn parse_net_op(args: &mut NetArgs) -> Result<mesh_core::netfault::NetOp> {
    use mesh_core::netfault::{parse_duration, parse_percent, parse_rate, NetOp};
    // Options may also follow the words (`delay x86-1 100ms --jitter 10ms`); the words take
    // hyphenated values (a negative delay must reach our own check), so pick them out here.
    let mut words = Vec::new();
    let mut it = std::mem::take(&mut args.words).into_iter();
    while let Some(word) = it.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (word.clone(), None),
        };
        match flag.as_str() {
            "--jitter" => {
                args.jitter = Some(inline.or_else(|| it.next()).context("--jitter needs a value")?)
            }
            "--seed" => {
                let v = inline.or_else(|| it.next()).context("--seed needs a value")?;
                args.seed =
                    Some(v.parse().with_context(|| format!("--seed {v:?} is not a number"))?);
            }
            "--one-way" => args.one_way = true,
            _ if word.starts_with("--") => bail!("unknown option {word:?} for `mesh net`"),
            _ => words.push(word),
        }
    }
    args.words = words;
    if args.words.is_empty() {
        bail!("say what to do: delay, loss, duplicate, reorder, rate, clear, partition or heal");
    }
    let w: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let node = || -> Result<String> {
        w.get(1)
            .map(|s| s.to_string())
            .context("name the node, e.g. `mesh net demo delay x86-1 100ms`")
    };
    let value = |what: &str| -> Result<&str> {
        if w.len() > 3 {
            bail!("unexpected argument {:?}", w[3]);
        }
        w.get(2).copied().with_context(|| format!("give the {what}"))
    };
    let op = match w[0] {
        "delay" => NetOp::Delay {
            node: node()?,
            delay: parse_duration(value("delay, e.g. 100ms")?).map_err(anyhow::Error::msg)?,
            jitter: match &args.jitter {
                Some(j) => parse_duration(j).map_err(anyhow::Error::msg)?,
                None => std::time::Duration::ZERO,
            },
        },
        "loss" => NetOp::Loss { node: node()?, ppm: parse_percent(value("loss, e.g. 5%")?).map_err(anyhow::Error::msg)? },
        "duplicate" => NetOp::Duplicate { node: node()?, ppm: parse_percent(value("share, e.g. 1%")?).map_err(anyhow::Error::msg)? },
        "reorder" => NetOp::Reorder { node: node()?, ppm: parse_percent(value("share, e.g. 10%")?).map_err(anyhow::Error::msg)? },
        "rate" => NetOp::Rate { node: node()?, bps: parse_rate(value("rate, e.g. 1mbit")?).map_err(anyhow::Error::msg)? },
        "clear" => NetOp::Clear { node: w.get(1).map(|s| s.to_string()) },
        "heal" => NetOp::Heal,
        "partition" => {
            let text = w[1..].join(" ");
            let groups: Vec<Vec<String>> = text
                .split('/')
                .map(|g| g.split([',', ' ']).filter(|n| !n.is_empty()).map(str::to_owned).collect())
                .collect();
            if groups.len() < 2 && !args.one_way {
                bail!("write the groups as A,B / C,D");
            }
            NetOp::Partition { groups, one_way: args.one_way }
        }
        other => bail!("unknown network operation {other:?} (delay, loss, duplicate, reorder, rate, clear, partition, heal)"),
    };
    if args.jitter.is_some() && !matches!(op, NetOp::Delay { .. }) {
        bail!("--jitter goes with `delay`");
    }
    if args.one_way && !matches!(op, NetOp::Partition { .. }) {
        bail!("--one-way goes with `partition`");
    }
    Ok(op)
}

async fn net(mut args: NetArgs) -> Result<ExitCode> {
    let op = parse_net_op(&mut args)?;
    let plan = load_plan(&args.name)?;
    let summary = mesh_core::teardown::inspect(&plan.paths.state);
    if summary.state == mesh_core::teardown::MeshState::Owned {
        bail!(
            "mesh {} is owned by a running `mesh up`; use `mesh up --keep` or the Rust API",
            args.name
        );
    }
    let binary =
        std::env::current_exe().context("cannot find the mesh binary for the shaper daemon")?;
    let outcome = mesh_core::netfault::apply(
        &plan,
        &op,
        args.seed,
        mesh_core::netfault::ShaperHost::Daemon(binary),
    )
    .await?;
    println!("{outcome}");
    Ok(ExitCode::SUCCESS)
}

fn print_removed(name: &str, report: &mesh_core::teardown::TeardownReport) {
    println!(
        "{name}: removed ({} nodes stopped, {} network objects)",
        report.killed.len(),
        report.network
    );
    for p in &report.problems {
        eprintln!("warning: {p}");
    }
}

async fn gc() -> Result<ExitCode> {
    let removed = mesh_core::teardown::gc().await?;
    if removed.is_empty() {
        println!("nothing to collect");
    }
    for (name, report) in removed {
        print_removed(&name, &report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn image(cmd: ImageCommand) -> Result<ExitCode> {
    use mesh_core::image::{parse_arch, BuildOptions, ImageStore, RemoveTarget};
    let store = ImageStore::open_default()?;
    match cmd {
        ImageCommand::Build { arch } => {
            let arch = parse_arch(&arch)?;
            let img =
                tokio::task::spawn_blocking(move || store.build(arch, &BuildOptions::default()))
                    .await??;
            println!("{}", img.dir.display());
        }
        ImageCommand::Pull { release, arch, url } => {
            let arch = parse_arch(&arch)?;
            let img =
                tokio::task::spawn_blocking(move || store.pull(&release, arch, &url)).await??;
            println!("{}", img.dir.display());
        }
        ImageCommand::Import { path, arch } => {
            let arch = parse_arch(&arch)?;
            let img = store.import(&path, arch)?;
            println!("{}", img.dir.display());
        }
        ImageCommand::List { json } => {
            let list = store.list()?;
            if json {
                let v: Vec<_> = list.iter().map(|i| &i.manifest).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("no images (build one with `mesh image build --arch x86_64`)");
            } else {
                println!("{}", report::image_header());
                for i in list {
                    println!("{}", report::image_line(&i));
                }
            }
        }
        ImageCommand::Rm { target } => {
            let removed = store.remove(&RemoveTarget::parse(&target))?;
            if removed.is_empty() {
                bail!("no image matches {target}");
            }
            for r in removed {
                println!("removed {r}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An input file's bytes; `-` is standard input.
fn read_input(path: &std::path::Path) -> Result<Vec<u8>> {
    if path == std::path::Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn seed(args: SeedArgs) -> Result<ExitCode> {
    let SeedArgs { out, user_data, meta_data, network_config, vendor_data, format } = args;
    let inputs =
        [Some(&user_data), Some(&meta_data), network_config.as_ref(), vendor_data.as_ref()];
    if inputs.iter().flatten().filter(|p| p.as_os_str() == "-").count() > 1 {
        bail!("only one input can be read from standard input (-)");
    }
    let ud = read_input(&user_data)?;
    let md = read_input(&meta_data)?;
    let nc = network_config.as_deref().map(read_input).transpose()?;
    let vd = vendor_data.as_deref().map(read_input).transpose()?;
    let timestamp = source_date_epoch()?;
    let seed = mesh_cloudinit::Seed::from_files(&ud, &md, nc.as_deref(), vd.as_deref())?;
    match format {
        SeedFormat::Iso => seed.write_iso_at(&out, timestamp)?,
        SeedFormat::Vfat => seed.write_vfat(&out)?,
    }
    for name in seed.normalised() {
        eprintln!(
            "note: {name} normalised (byte-order mark, leading blank lines or CRLF line endings \
             removed)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `SOURCE_DATE_EPOCH`, when set: the timestamp for reproducible images.
fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(
            v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
        )),
        Err(_) => Ok(None),
    }
}

fn iso(out: PathBuf, dir: PathBuf, label: String, timestamp: Option<i64>) -> Result<ExitCode> {
    let timestamp = match timestamp {
        Some(t) => Some(t),
        None => source_date_epoch()?,
    };
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let tree = mesh_iso::IsoTree::from_dir(&dir)?;
    let mut opts = mesh_iso::IsoOptions::new(label);
    opts.timestamp = timestamp;
    mesh_iso::write_iso_file(&tree, &opts, &out)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_the_number_the_code_was_made_from() {
        assert_eq!(exit_status(ExitCode::SUCCESS), 0);
        assert_eq!(exit_status(ExitCode::FAILURE), 1);
        for n in [2u8, 101, 130, 143, 255] {
            assert_eq!(exit_status(ExitCode::from(n)), libc::c_int::from(n));
        }
    }
}
