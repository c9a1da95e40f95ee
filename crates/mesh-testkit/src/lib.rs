//! Test helpers for vm-mesh crates: real Debian guest kernels, tiny guests under QEMU/TCG,
//! and the Linux kernel as an independent reader of file-system images.
//!
//! - [`guest_kernel`] fetches a Debian 12 cloud kernel, its modules and a static busybox for
//!   an architecture with apt, once, into the user's cache directory.
//! - [`run_guest`] (or [`GuestRun`] for more control) boots that kernel with an initramfs made
//!   by [`mesh_qemu::initramfs`], hands it read-only virtio drives and runs a shell script in
//!   it, returning what the script printed. A few seconds per boot under TCG.
//! - [`kernel_list`] mounts an image in such a guest (`iso9660`, `vfat`, `ext2` ...) with the
//!   given options and lists every entry: kind, mode, size, link target, SHA-256.
//!   [`host_list`] gives the same shape for a host directory, for golden-tree comparisons.
//!
//! Left out: networking (guests get no NIC), KVM (always TCG, for the same result on every
//! host), writable drives, and anything a product crate would ship: this crate is only a
//! dev-dependency (`publish = false`). It starts processes (apt, QEMU) freely, which the
//! product's pure crates must not.
//!
//! # Examples
//!
//! ```
//! use mesh_testkit::{host_list, Entry};
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("hello.txt"), "hi\n")?;
//! let entries = host_list(dir.path())?;
//! assert_eq!(entries[0].path, "hello.txt");
//! assert_eq!((entries[0].kind, entries[0].size), ('f', 3));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Reading an ISO image with the guest kernel (needs apt, dpkg-deb and QEMU):
//!
//! ```no_run
//! use std::path::Path;
//! use mesh_testkit::{kernel_list, Arch};
//!
//! let entries = kernel_list(Arch::X86_64, Path::new("seed.iso"), "iso9660", "ro,norock")?;
//! for entry in entries {
//!     println!("{} {} {:o}", entry.kind, entry.path, entry.mode);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

mod guest;
mod kernel;
mod listing;

pub use guest::{run_guest, GuestOutput, GuestRun};
pub use kernel::{guest_kernel, GuestKernel};
pub use listing::{host_list, kernel_list, Entry};
/// The guest architectures, re-exported so that tests need not depend on `mesh-qemu`.
pub use mesh_qemu::Arch;
