//! The whole-mesh benchmark: `mesh up` against a hand-rolled reference launcher
//! (`xtask/bench/reference-launcher.sh`) on the same base images and the same repository, in
//! the same run. Reports the time until every node is ready, the orchestration overhead
//! (everything before the guests boot) and teardown, as ratios.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const N_X86: usize = 2;
const N_AARCH: usize = 1;

struct Figures {
    launched: f64,
    ready: f64,
    teardown: f64,
}

fn image_dir(mesh: &Path, arch: &str) -> Result<String> {
    let out = Command::new(mesh).args(["image", "build", "--arch", arch]).output()?;
    if !out.status.success() {
        bail!("no {arch} base image: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn fixture_repo(work: &Path) -> Result<std::path::PathBuf> {
    let src = crate::root().join("crates/mesh-core/tests/fixtures/wire");
    let repo = work.join("wire");
    crate::check(Command::new("cp").arg("-a").arg(&src).arg(&repo))?;
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "-A"],
        vec!["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "fixture"],
    ] {
        crate::check(Command::new("git").current_dir(&repo).args(&args))?;
    }
    Ok(repo)
}

fn ours(mesh: &Path, repo: &Path) -> Result<Figures> {
    let name = format!("bench{}", std::process::id() % 10000);
    let started = Instant::now();
    let mut child = Command::new(mesh)
        .args(["up", "--keep", "--accel", "tcg", "--name", &name])
        .args(["--n-x86", &N_X86.to_string(), "--n-aarch", &N_AARCH.to_string()])
        .arg("--repo")
        .arg(repo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run mesh up")?;
    let mut launched = 0.0;
    let mut ready = 0.0;
    let stderr = child.stderr.take().context("mesh up stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let t = started.elapsed().as_secs_f64();
        if line.contains("process up") {
            launched = t;
        }
        if line.contains("ssh ready") {
            ready = t;
        }
    }
    let status = child.wait()?;
    let td = Instant::now();
    crate::check(Command::new(mesh).args(["down", &name]))?;
    let teardown = td.elapsed().as_secs_f64();
    if !status.success() {
        bail!("mesh up failed ({status})");
    }
    Ok(Figures { launched, ready, teardown })
}

fn reference(work: &Path, round: usize, repo: &Path, x86: &str, arm: &str) -> Result<Figures> {
    let script = crate::root().join("xtask/bench/reference-launcher.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(work.join(format!("reference-{round}")))
        .arg(repo)
        .args([x86, arm, &N_X86.to_string(), &N_AARCH.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the reference launcher")?;
    if !out.status.success() {
        bail!("the reference launcher failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse::<f64>()))
            .with_context(|| format!("no {key} in reference output"))?
            .context("bad number")
    };
    Ok(Figures {
        launched: value("launched")?,
        ready: value("ready")?,
        teardown: value("teardown")?,
    })
}

/// How many times each launcher brings the mesh up. Single runs here vary by a fifth (the
/// three guests share two cores, and the reference polls one node after another), so the
/// figures are medians of alternating runs.
const ROUNDS: usize = 3;

/// The median of `values`.
fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the mesh benchmark.
pub fn run(mesh: &Path, work: &Path) -> Result<()> {
    let x86 = image_dir(mesh, "x86_64")?;
    let arm = image_dir(mesh, "aarch64")?;
    let repo = fixture_repo(work)?;
    println!(
        "mesh: {N_X86} x86_64 + {N_AARCH} aarch64 nodes, TCG, {ROUNDS} alternating runs of each \
         launcher; this takes several minutes"
    );
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let r = reference(work, round, &repo, &x86, &arm)?;
        let o = ours(mesh, &repo)?;
        println!(
            "mesh run {round}: all nodes ready ours {:.1} s, reference {:.1} s (ratio {:.2})",
            o.ready,
            r.ready,
            o.ready / r.ready
        );
        mine.push(o);
        theirs.push(r);
    }
    let med = |runs: &[Figures], f: fn(&Figures) -> f64| median_of(runs.iter().map(f).collect());
    let (o_ready, r_ready) = (med(&mine, |f| f.ready), med(&theirs, |f| f.ready));
    let (o_launched, r_launched) = (med(&mine, |f| f.launched), med(&theirs, |f| f.launched));
    let (o_teardown, r_teardown) = (med(&mine, |f| f.teardown), med(&theirs, |f| f.teardown));
    println!(
        "mesh all nodes ready        ours {o_ready:>7.1} s  reference {r_ready:>7.1} s  ratio {:.2} \
         (medians; goal <= 0.80)",
        o_ready / r_ready
    );
    println!(
        "mesh orchestration overhead ours {o_launched:>7.2} s  reference {r_launched:>7.2} s  \
         ratio {:.2} (goal < 1 s)",
        o_launched / r_launched
    );
    println!(
        "mesh teardown               ours {o_teardown:>7.2} s  reference {r_teardown:>7.2} s  \
         ratio {:.2} (goal < 5 s)",
        o_teardown / r_teardown
    );
    Ok(())
}
