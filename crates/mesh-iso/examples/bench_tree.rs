//! Writes an image of a large synthetic tree, for `cargo xtask bench` and for measuring by
//! hand against genisoimage and xorriso:
//!
//! ```text
//! cargo run -p mesh-iso --example bench_tree -- WORKDIR [FILES] [BYTES]
//! ```
//!
//! Creates `WORKDIR/src` with [`mesh_iso::make_bench_tree`] (20,000 files, 500 MB by
//! default) unless it exists, then writes `WORKDIR/mesh.iso` and prints the elapsed time.
//! Peak RSS is best read from outside, e.g. `/usr/bin/time -v`.

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().ok_or("usage: bench_tree WORKDIR [FILES] [BYTES]")?);
    let files: usize = args.next().map_or(Ok(20_000), |s| s.parse())?;
    let bytes: u64 = args.next().map_or(Ok(500_000_000), |s| s.parse())?;

    std::fs::create_dir_all(&work)?;
    let src = work.join("src");
    if !src.exists() {
        let made = mesh_iso::make_bench_tree(&src, files, bytes)?;
        eprintln!(
            "created {} files in {} directories, {} bytes",
            made.files, made.dirs, made.bytes
        );
    }

    let start = Instant::now();
    let tree = mesh_iso::IsoTree::from_dir(&src)?;
    let mut opts = mesh_iso::IsoOptions::new("bench");
    opts.timestamp = Some(0);
    mesh_iso::write_iso_file(&tree, &opts, &work.join("mesh.iso"))?;
    println!("mesh-iso: {:.3} s", start.elapsed().as_secs_f64());
    Ok(())
}
