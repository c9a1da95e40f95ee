//! mesh-qemu (being written).
pub mod initramfs;
