//! A synthetic source tree for `cargo xtask bench`: many files of varied sizes in nested
//! directories, with deterministic non-zero contents (so no filesystem can shortcut them).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What [`make_bench_tree`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchTree {
    /// Root of the tree.
    pub root: PathBuf,
    /// Number of regular files.
    pub files: usize,
    /// Number of directories below the root.
    pub dirs: usize,
    /// Sum of the file sizes in bytes.
    pub bytes: u64,
}

/// Creates under `root` (which must not exist yet) `files` files totalling about
/// `total_bytes`, spread over directories up to four levels deep, with a few executables
/// and symbolic links. The same arguments always give the same tree.
///
/// # Examples
///
/// ```
/// let tmp = std::env::temp_dir().join(format!("mesh-iso-doc-bench-{}", std::process::id()));
/// let made = mesh_iso::make_bench_tree(&tmp, 50, 100_000)?;
/// assert_eq!(made.files, 50);
/// let tree = mesh_iso::IsoTree::from_dir(&made.root)?;
/// mesh_iso::write_iso(&tree, &mesh_iso::IsoOptions::new("bench"), std::io::sink())?;
/// std::fs::remove_dir_all(&tmp)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn make_bench_tree(root: &Path, files: usize, total_bytes: u64) -> io::Result<BenchTree> {
    fs::create_dir(root)?;
    let mut made = BenchTree { root: root.to_owned(), files: 0, dirs: 0, bytes: 0 };
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift64: cheap, deterministic filler and size jitter.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mean = total_bytes / files.max(1) as u64;
    let mut buf = vec![0u8; 64 * 1024];

    for i in 0..files {
        // 40 files per directory, directories nested as a/b/c/d by index.
        let d = i / 40;
        let dir = root.join(format!("d{:03}/sub-{:02}/level-{}", d % 500 / 20, d % 20, d % 3));
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            made.dirs += 1;
        }
        let size = if i + 1 == files {
            total_bytes.saturating_sub(made.bytes)
        } else {
            (mean / 2 + next() % (mean + 1)).min(total_bytes.saturating_sub(made.bytes))
        };
        let name = format!("file-{i:05}-with-a-longer-name.{}", ["txt", "rs", "json", "sh"][i % 4]);
        let path = dir.join(name);
        let mut f = fs::File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            for chunk in buf[..n].chunks_mut(8) {
                let v = next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if i % 4 == 3 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        if i % 500 == 0 {
            std::os::unix::fs::symlink(
                format!("../link-target-{i}"),
                dir.join(format!("link-{i}")),
            )?;
        }
        made.files += 1;
        made.bytes += size;
    }
    Ok(made)
}
