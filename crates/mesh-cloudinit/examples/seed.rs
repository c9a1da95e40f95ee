//! `mesh seed` in miniature: a drop-in for `cloud-localds` used by the benchmark.
//!
//! ```text
//! cargo run -p mesh-cloudinit --example seed -- OUT --user-data F --meta-data F \
//!     [--network-config F] [--vendor-data F] [--format iso|vfat]
//! ```
//! Every input is checked before OUT is written. `--repeat N` builds and writes the seed N
//! times and prints the median time of one build-and-write, without process start-up.

use std::path::PathBuf;
use std::process::ExitCode;

use mesh_cloudinit::Seed;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("seed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut out = None;
    let (mut user_data, mut meta_data, mut network_config, mut vendor_data) =
        (None, None, None, None);
    let mut format = String::from("iso");
    let mut repeat: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--user-data" => user_data = Some(PathBuf::from(value()?)),
            "--meta-data" => meta_data = Some(PathBuf::from(value()?)),
            "--network-config" => network_config = Some(PathBuf::from(value()?)),
            "--vendor-data" => vendor_data = Some(PathBuf::from(value()?)),
            "--format" => format = value()?,
            "--repeat" => repeat = Some(value()?.parse().map_err(|e| format!("--repeat: {e}"))?),
            _ if out.is_none() && !arg.starts_with("--") => out = Some(PathBuf::from(&arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let out = out.ok_or("missing OUT")?;
    let read = |path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, String> {
        path.as_ref()
            .map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())))
            .transpose()
    };
    let user_data = read(&user_data)?.ok_or("missing --user-data")?;
    let meta_data = read(&meta_data)?.ok_or("missing --meta-data")?;
    let network_config = read(&network_config)?;
    let vendor_data = read(&vendor_data)?;

    let build_and_write = || -> Result<(), String> {
        let seed = Seed::from_files(
            &user_data,
            &meta_data,
            network_config.as_deref(),
            vendor_data.as_deref(),
        )
        .map_err(chain)?;
        match format.as_str() {
            "iso" => seed.write_iso(&out),
            "vfat" => seed.write_vfat(&out),
            other => return Err(format!("unknown --format {other:?} (iso or vfat)")),
        }
        .map_err(chain)
    };

    let Some(runs) = repeat else {
        return build_and_write();
    };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = std::time::Instant::now();
        build_and_write()?;
        times.push(start.elapsed());
    }
    times.sort();
    println!("median {} us over {} runs", times[times.len() / 2].as_micros(), times.len());
    Ok(())
}

/// The error and its causes on one line.
fn chain(error: impl std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
