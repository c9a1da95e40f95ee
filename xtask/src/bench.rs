//! `cargo xtask bench`: our tools against reference tools, measured in the same run and
//! reported as ratios.

use std::process::ExitCode;

use anyhow::Result;

/// Runs the benchmarks named in `args` (all by default).
pub fn run(_args: &[String]) -> Result<ExitCode> {
    // FIXME: benchmarks are wired in as the crates' bench entry points land.
    eprintln!("xtask bench: no benchmarks wired yet");
    Ok(ExitCode::from(1))
}
