//! `cargo xtask bench [iso|seed|net|mesh]...`: our tools against reference tools, measured in
//! the same run and reported as ratios (ours / reference; below 1.0 means we are faster).
//! Speed and memory goals live here, never as timed assertions in tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One timed run of a command: wall time and peak resident memory of the child.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall-clock time.
    pub wall: Duration,
    /// Peak RSS in KiB (`ru_maxrss` from `wait4`).
    pub max_rss_kib: u64,
}

/// Runs `cmd` to completion, measuring it; fails if it fails.
pub fn measure(cmd: &mut Command) -> Result<Sample> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own un-reaped child; status and usage point to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if rc != pid {
        bail!("wait4 failed for {shown}");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{shown} failed: {}", err.trim());
    }
    Ok(Sample { wall, max_rss_kib: usage.ru_maxrss as u64 })
}

/// Median and fastest of one tool's interleaved runs.
#[derive(Debug, Clone, Copy)]
struct Timed {
    /// Median wall time, with the highest peak RSS of all runs.
    median: Sample,
    /// Fastest run.
    min: Duration,
}

/// Times several commands on the same job, interleaved so that disk and cache noise falls
/// on all of them alike: one untimed warm-up run of each, then `rounds` rounds that run
/// each `block` times in a row, in the given order. `prepare` runs (untimed) before every
/// run of every command.
fn interleaved(
    rounds: usize,
    block: usize,
    commands: &mut [&mut dyn FnMut() -> Command],
    prepare: &dyn Fn() -> Result<()>,
) -> Result<Vec<Timed>> {
    for make in commands.iter_mut() {
        prepare()?;
        measure(&mut make())?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); commands.len()];
    for _ in 0..rounds {
        for (make, samples) in commands.iter_mut().zip(&mut samples) {
            for _ in 0..block {
                prepare()?;
                samples.push(measure(&mut make())?);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut runs| {
            runs.sort_by_key(|s| s.wall);
            let max_rss_kib = runs.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
            Timed {
                median: Sample { wall: runs[runs.len() / 2].wall, max_rss_kib },
                min: runs[0].wall,
            }
        })
        .collect())
}

fn have(tool: &str) -> Result<()> {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("{tool} is needed for this benchmark (cargo xtask deps installs it)");
    }
    Ok(())
}

fn line(name: &str, ours: Sample, reference: Sample, reference_name: &str) {
    println!(
        "{name:<28} ours {:>9.1} ms  {reference_name} {:>9.1} ms  ratio {:>5.2}  rss ours {:>7} KiB  ref {:>7} KiB",
        ours.wall.as_secs_f64() * 1e3,
        reference.wall.as_secs_f64() * 1e3,
        ours.wall.as_secs_f64() / reference.wall.as_secs_f64(),
        ours.max_rss_kib,
        reference.max_rss_kib
    );
}

/// Runs the benchmarks named in `args` (all by default).
pub fn run(args: &[String]) -> Result<ExitCode> {
    let all = ["iso", "seed", "net", "mesh"];
    let chosen: Vec<&str> =
        if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
    for c in &chosen {
        if !all.contains(c) {
            bail!("unknown benchmark {c:?} (known: {})", all.join(", "));
        }
    }
    // Benchmarks measure the release binary as it is shipped (`cargo xtask dist`).
    let mesh = crate::release_binary()?;
    println!("binary: {}", mesh.display());
    let work = tempfile_dir()?;
    let result = (|| -> Result<()> {
        for c in chosen {
            match c {
                "iso" => bench_iso(&mesh, &work)?,
                "seed" => bench_seed(&mesh, &work)?,
                "net" => bench_net(&mesh)?,
                "mesh" => crate::bench_mesh::run(&mesh, &work)?,
                _ => unreachable!("checked above"),
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vm-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A deterministic tree of `files` files totalling about `bytes`, in 100 directories, with
/// some executables and symlinks.
fn make_tree(root: &Path, files: usize, bytes: usize) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let per_file = bytes / files.max(1);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; per_file * 2];
    for i in 0..files {
        let dir = root.join(format!("dir{:03}/sub{}", i % 100, i % 7));
        std::fs::create_dir_all(&dir)?;
        // Sizes vary between 0 and twice the mean; contents are cheap pseudo-random bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = (state % (2 * per_file as u64 + 1)) as usize;
        for (j, b) in buf[..size].iter_mut().enumerate() {
            *b = (state.wrapping_add(j as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        let path = dir.join(format!("file-{i:05}.dat"));
        std::fs::write(&path, &buf[..size])?;
        if i % 50 == 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        if i % 97 == 0 {
            std::os::unix::fs::symlink(
                format!("file-{i:05}.dat"),
                dir.join(format!("link-{i:05}")),
            )?;
        }
    }
    Ok(())
}

fn bench_iso(mesh: &Path, work: &Path) -> Result<()> {
    have("genisoimage")?;
    have("xorriso")?;
    let tree = work.join("iso-tree");
    println!("iso: writing a 20,000-file, ~500 MB tree ...");
    make_tree(&tree, 20_000, 500 << 20)?;
    let out = work.join("out.iso");
    // Every run starts alike: no output file to replace, and no dirty pages left by the
    // run before it still being written back. The warm-up runs fill the page cache with
    // the tree for all three tools.
    let prepare = || -> Result<()> {
        match std::fs::remove_file(&out) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", out.display()))
            }
            _ => {}
        }
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    };
    let mut ours = || {
        let mut c = Command::new(mesh);
        c.arg("iso").arg(&out).arg(&tree).args(["--label", "BENCH"]);
        c
    };
    let mut genisoimage = || {
        let mut c = Command::new("genisoimage");
        c.args(["-quiet", "-r", "-J", "-V", "BENCH", "-o"]).arg(&out).arg(&tree);
        c
    };
    let mut xorriso = || {
        let mut c = Command::new("xorriso");
        c.args(["-as", "mkisofs", "-quiet", "-r", "-J", "-V", "BENCH", "-o"]).arg(&out).arg(&tree);
        c
    };
    let rounds = 5;
    let timed = interleaved(rounds, 1, &mut [&mut ours, &mut genisoimage, &mut xorriso], &prepare)?;
    let [ours, genisoimage, xorriso] = timed[..] else {
        unreachable!("three commands were timed");
    };
    line("iso 20k files / 500 MB", ours.median, genisoimage.median, "genisoimage");
    line("iso 20k files / 500 MB", ours.median, xorriso.median, "xorriso");
    println!(
        "{:<28} fastest of {rounds}: ours {:.1} ms  genisoimage {:.1} ms  xorriso {:.1} ms",
        "iso 20k files / 500 MB",
        ours.min.as_secs_f64() * 1e3,
        genisoimage.min.as_secs_f64() * 1e3,
        xorriso.min.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&tree);

    // Memory must not grow with the number of entries: ten times as many, all empty, so
    // that only the description and the directories are measured.
    let many = work.join("iso-many");
    println!("iso: writing a 200,000-entry tree of empty files (peak RSS only) ...");
    make_empty_tree(&many, 200_000)?;
    rss_only(mesh, &out, &many, "iso 200k empty files")?;

    // Nor with the size of one directory.
    let flat = work.join("iso-flat");
    println!("iso: writing one directory of 1,000,000 empty files (peak RSS only) ...");
    make_flat_dir(&flat, 1_000_000)?;
    rss_only(mesh, &out, &flat, "iso 1M files in one dir")?;

    println!(
        "iso goals: ratio <= 1.00 against genisoimage, peak RSS < 65536 KiB for all three trees"
    );
    let _ = std::fs::remove_file(&out);
    Ok(())
}

/// Writes an image of `tree` to `out` once, prints its time and peak RSS as the line `name`,
/// and removes the tree.
fn rss_only(mesh: &Path, out: &Path, tree: &Path, name: &str) -> Result<()> {
    let sample =
        measure(Command::new(mesh).arg("iso").arg(out).arg(tree).args(["--label", "RSS"]))?;
    let _ = std::fs::remove_dir_all(tree);
    println!(
        "{name:<28} ours {:>9.1} ms  rss ours {:>7} KiB",
        sample.wall.as_secs_f64() * 1e3,
        sample.max_rss_kib
    );
    Ok(())
}

/// `files` empty files in the single directory `dir`.
fn make_flat_dir(dir: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..files {
        std::fs::File::create(dir.join(format!("empty-file-number-{i:07}.txt")))?;
    }
    Ok(())
}

/// `files` empty files, 100 to a directory, in directories two levels deep.
fn make_empty_tree(root: &Path, files: usize) -> Result<()> {
    for d in 0..files.div_ceil(100) {
        let dir = root.join(format!("group-{:02}/directory-{d:04}", d % 20));
        std::fs::create_dir_all(&dir)?;
        for i in d * 100..((d + 1) * 100).min(files) {
            std::fs::File::create(dir.join(format!("empty-file-number-{i:06}.txt")))?;
        }
    }
    Ok(())
}

fn bench_seed(mesh: &Path, work: &Path) -> Result<()> {
    have("cloud-localds")?;
    have("blkid")?;
    let ud = work.join("user-data");
    let md = work.join("meta-data");
    let nc = work.join("network-config");
    std::fs::write(&ud, "#cloud-config\nhostname: bench\nruncmd:\n  - [touch, /run/bench]\n")?;
    std::fs::write(&md, "instance-id: iid-bench\nlocal-hostname: bench\n")?;
    std::fs::write(&nc, "version: 2\nethernets:\n  mesh0:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    set-name: mesh0\n    addresses: [10.77.0.2/24]\n")?;
    let ours_out = work.join("seed-ours.iso");
    let ref_out = work.join("seed-ref.iso");
    let mut ours = || {
        let mut c = Command::new(mesh);
        c.arg("seed")
            .arg(&ours_out)
            .arg("--user-data")
            .arg(&ud)
            .arg("--meta-data")
            .arg(&md)
            .arg("--network-config")
            .arg(&nc);
        c
    };
    let mut reference = || {
        let mut c = Command::new("cloud-localds");
        c.arg("-N").arg(&nc).arg(&ref_out).arg(&ud).arg(&md);
        c
    };
    // Each tool runs in blocks of back-to-back calls, as a script writing one seed per VM
    // calls it, and the blocks alternate so that drift in the machine falls on both. (Runs
    // that alternate one by one are slower for the short-lived tool here: each of its runs
    // then starts on caches and a virtual CPU that the other tool's processes left cold.)
    // Two cases: a new output file (the previous one is removed first, untimed), as `mesh up`
    // writes one seed per VM; and replacing the previous run's file, which on ext4 also
    // starts writing the replaced data out.
    let (rounds, block) = (6, 7);
    for (case, fresh) in [("new file", true), ("replacing", false)] {
        let prepare = || -> Result<()> {
            if fresh {
                for out in [&ours_out, &ref_out] {
                    let _ = std::fs::remove_file(out);
                }
            }
            Ok(())
        };
        let timed = interleaved(rounds, block, &mut [&mut ours, &mut reference], &prepare)?;
        let [mine, theirs] = timed[..] else {
            unreachable!("two commands were timed");
        };
        line(&format!("seed (iso), {case}"), mine.median, theirs.median, "cloud-localds");
        println!(
            "seed goal: >= 20x faster than cloud-localds; measured {:.1}x ({case}; fastest runs \
             {:.2} ms against {:.2} ms)",
            theirs.median.wall.as_secs_f64() / mine.median.wall.as_secs_f64(),
            mine.min.as_secs_f64() * 1e3,
            theirs.min.as_secs_f64() * 1e3,
        );
    }
    // What was timed must be a seed that a real reader takes for one.
    let probe = Command::new("blkid").args(["-p", "-o", "export"]).arg(&ours_out).output()?;
    let probe = String::from_utf8_lossy(&probe.stdout);
    if !(probe.contains("TYPE=iso9660") && probe.lines().any(|l| l == "LABEL=cidata")) {
        bail!("blkid does not see a cidata ISO9660 image in our seed: {probe}");
    }
    Ok(())
}

fn bench_net(_mesh: &Path) -> Result<()> {
    // mesh-net's own benchmark builds the same network with netlink and with `ip` commands,
    // alternating, and reports medians of both.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "mesh-net",
            "--example",
            "bench_net",
            "--",
            "--taps",
            "32",
            "--rounds",
            "7",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the mesh-net benchmark")?;
    if !out.status.success() {
        bail!("the mesh-net benchmark failed");
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("net goals: 32 taps up < 200 ms, down < 100 ms");
    Ok(())
}
