//! mesh-iso writes ISO 9660 images that real readers agree with: the Linux kernel,
//! libisofs (`xorriso`), `isoinfo`, libarchive (`bsdtar`) and `blkid`.
//!
//! Everything vm-mesh hands a guest on a CD-style image (the cloud-init `cidata` seed, the
//! shared repository image) goes through this crate. In the workspace layering it sits at
//! the bottom: `mesh-cloudinit` and `mesh-core` use it; it uses no other mesh crate, spawns
//! no process and needs no privilege.
//!
//! # What it does
//! - Describes content as an [`IsoTree`], built from a directory on disk
//!   ([`IsoTree::from_dir`]) and/or entry by entry; file contents stay on disk until they
//!   are streamed into the image, one file at a time.
//! - Memory that grows neither with the number of files nor with the size of the largest
//!   directory: the files and symbolic links of directories described from disk are
//!   recorded in an unnamed temporary file (in `TMPDIR`); a directory's entries are sorted
//!   (by name, by 8.3 name, by Joliet name) in memory up to a limit
//!   ([`IsoTree::set_sort_memory`]) and beyond it in sorted runs on temporary files merged
//!   back; each directory is prepared once and streamed from there by every later pass.
//!   What remains in memory is some 560 bytes per directory (at most 65535 in an image).
//! - Primary volume: ISO 9660 level 1 names (d-characters, 8.3), unique per directory with
//!   deterministic `_N` suffixes, so a reader that ignores every extension still sees each
//!   entry exactly once.
//! - Rock Ridge (RRIP 1.10 entries, with PX serial numbers): full names (NM), modes, owners
//!   and link counts (PX), symbolic links including relative and dangling ones (SL), times
//!   (TF). Directories deeper than ISO 9660's eight levels are relocated into `rr_moved`
//!   with CL/PL/RE entries, which Rock Ridge readers undo.
//! - Joliet: UCS-2 names, changed only where Joliet forces it (forbidden characters and
//!   characters outside the BMP become `_`; names longer than 64 characters are cut,
//!   keeping a short extension). Two names that end up equal are an error naming both.
//! - The volume label exactly as given, lowercase included (`cidata`), in both the primary
//!   and the Joliet volume descriptors, so `blkid` reports it unchanged.
//! - Files of 4 GiB and more as multi-extent files.
//! - Reproducible bytes: with [`IsoOptions::timestamp`] set, the same tree gives the same
//!   image, byte for byte.
//!
//! # What it leaves out
//! - El Torito boot records, hybrid MBR/GPT, and reading or appending to existing images.
//! - Hard links (each tree entry is its own file), ISO 9660:1999 long primary names, zisofs
//!   compression, ACLs and extended attributes.
//! - Symbolic links in the Joliet tree (Joliet cannot express them) and repeated or
//!   trailing slashes in link targets (Rock Ridge has no component for them).
//!
//! # Why not hadris-iso
//! The issue asked us to weigh `hadris-iso`. The writer examples we read pass each file's
//! contents as an in-memory buffer, while the repository image must stream large trees from
//! disk in bounded memory; we also need exact control of the Rock Ridge and Joliet details
//! that readers disagree on (label encoding in both descriptors, primary-name uniqueness,
//! relocation of deep directories, multi-extent records carrying Rock Ridge entries) and
//! bytes that depend only on the input. A focused writer of this size was cheaper to make
//! right than to verify and patch around.
//!
//! # Example
//! ```
//! use mesh_iso::{write_iso, IsoOptions, IsoTree};
//!
//! let mut tree = IsoTree::new();
//! tree.add_file_bytes("meta-data", b"instance-id: node-1\n".to_vec(), 0o644)?;
//! tree.add_file_bytes("user-data", b"#cloud-config\n".to_vec(), 0o644)?;
//! tree.add_file_bytes("scripts/build.sh", b"#!/bin/sh\nmake\n".to_vec(), 0o755)?;
//! tree.add_symlink("build", "scripts/build.sh")?;
//!
//! let mut opts = IsoOptions::new("cidata");
//! opts.timestamp = Some(1_700_000_000);
//! let mut image = Vec::new();
//! let len = write_iso(&tree, &opts, &mut image)?;
//! assert_eq!(len as usize, image.len());
//! assert_eq!(&image[16 * 2048 + 40..16 * 2048 + 46], b"cidata");
//!
//! let mut again = Vec::new();
//! write_iso(&tree, &opts, &mut again)?;
//! assert_eq!(image, again);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bench;
mod catalog;
mod names;
mod raw;
mod spill;
mod susp;
mod tree;
mod writer;

pub use bench::{make_bench_tree, BenchTree};
pub use tree::{IsoTree, TreeError};
pub use writer::{follow_symlinks, write_iso, write_iso_file, IsoOptions, WriteError};
