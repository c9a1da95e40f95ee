//! The accelerator decision for a mesh: mesh-qemu's probe, confirmed with the base image's
//! own kernel (a few bytes of probe code can run under a nested KVM whose real kernels print
//! nothing).

use std::path::Path;

use mesh_qemu::{Accel, Arch};

/// KVM if it really runs `kernel` (when there is one), else TCG; cached in `cache_dir`.
pub fn choose(arch: Arch, kernel: Option<&Path>, cache_dir: &Path) -> Accel {
    match kernel {
        Some(kernel) => mesh_qemu::probe_accel_with_kernel(arch, cache_dir, kernel),
        None => mesh_qemu::probe_accel(arch, cache_dir),
    }
}
