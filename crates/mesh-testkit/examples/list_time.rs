//! Times a kernel listing of an ext2 image holding N small files (default 500): how the
//! reader scales, for `cargo xtask bench`.
//!
//! ```text
//! cargo run -p mesh-testkit --example list_time [-- FILES]
//! ```

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use mesh_testkit::{guest_kernel, kernel_list, Arch};

fn main() -> anyhow::Result<()> {
    let files: usize = std::env::args().nth(1).map(|arg| arg.parse()).transpose()?.unwrap_or(500);
    let work = tempfile::tempdir()?;
    let source = work.path().join("src");
    for index in 0..files {
        let dir = source.join(format!("d{}", index / 50));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("file-{index}.txt")), format!("content {index}\n"))?;
    }
    let image = work.path().join("tree.ext2");
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-d"])
        .arg(&source)
        .arg(&image)
        .arg("32M")
        .status()
        .context("running mke2fs")?;
    ensure!(status.success(), "mke2fs failed");

    for arch in Arch::ALL {
        guest_kernel(arch)?;
        let started = Instant::now();
        let entries = kernel_list(arch, &image, "ext2", "ro")?;
        println!("{arch}: listed {} entries in {:.2?}", entries.len(), started.elapsed());
    }
    Ok(())
}
