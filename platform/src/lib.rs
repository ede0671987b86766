//! The board the hypervisor runs on, as plain data fixed at boot.
//!
//! - [`Platform`]: the physical memory map — every page's class (RAM,
//!   COHERENT, MMIO, HYP; shared/spec/RULES.md "Memory classes"), built from
//!   the board's flattened device tree, the boot manifest (below) and the
//!   hypervisor's own footprint; plus the dense index the core uses for
//!   per-page metadata.
//! - [`CpuFeatures`]: what the memory-type policy needs from the ID
//!   registers (FWB, DIC, IDC, MTE, PA and VMID sizes), and the
//!   HYP_FEATURES bits (shared/spec/ABI.md).
//! - [`qemu_virt`]: the QEMU `virt` board the project runs on, its manifest
//!   ([`QEMU_VIRT_MANIFEST`]), and the CPU models the simulator models
//!   ([`qemu_cpu`]).
//!
//! Everything here is logic that runs on the development machine too. Input
//! from the boot loader (device tree, manifest) is untrusted: ill-formed
//! input gives a [`PlatformError`], never a panic.
//!
//! # The boot manifest
//!
//! A text file handed to the hypervisor at boot that declares what the
//! device tree does not say. One declaration per line:
//!
//! ```text
//! coherent <base> <size>   # cacheable-capable device memory (class COHERENT)
//! mmio     <base> <size>   # MMIO region assignable to guests, DEVICE only
//! mmio-uc  <base> <size>   # MMIO region assignable to guests, NORMAL_NC also allowed
//! hyp      <base> <size>   # extra memory reserved for the hypervisor (class HYP)
//! withheld <base> <size>   # MMIO of a bus master the host may never map (RULES.md S1)
//! ```
//!
//! - `#` starts a comment that runs to the end of the line; blank lines are
//!   ignored; words are separated by spaces or tabs.
//! - Numbers are hexadecimal with a `0x` (or `0X`) prefix or decimal, may
//!   contain `_` between digits, and may end in `K`, `M` or `G` (times
//!   2^10, 2^20, 2^30; upper case only): `0x4000_0000`, `64M`, `1G`,
//!   `0x10M`. Both base and size are byte values.
//! - Every base and size is a multiple of 4 KiB, sizes are not zero, every
//!   range ends inside the physical address space, and no two ranges
//!   overlap.
//! - `coherent` ranges may lie inside the device tree's `/memory` (they are
//!   then carved out of host RAM) or outside it. `mmio` and `mmio-uc` ranges
//!   may not overlap `/memory`. `hyp` ranges may lie anywhere and may
//!   overlap the hypervisor's own image, which is HYP anyway.
//! - Physical addresses not declared anywhere are MMIO that guests cannot be
//!   given.
//!
//! Each error names the line (counting from 1): [`PlatformError::line`].
//!
//! The manifest for QEMU `virt` (`platform/manifests/qemu-virt.manifest`):
//!
//! ```text
#![doc = include_str!("../manifests/qemu-virt.manifest")]
//! ```
//!
//! # The device tree
//!
//! RAM is every `reg` range of the root's children with
//! `device_type = "memory"` (and `status` absent, `"okay"` or `"ok"`),
//! decoded with the root's `#address-cells` and `#size-cells` (1 or 2 each),
//! rounded in to whole pages. `/reserved-memory` and the memory reservation
//! block are not consulted: that memory stays host RAM and the host honours
//! the reservations itself; memory the host must not have is declared with
//! `hyp` lines.

#![no_std]

extern crate alloc;

mod cpu;
mod devices;
mod dt;
mod error;
mod manifest;
mod memmap;
pub mod qemu_virt;

#[cfg(test)]
mod tests;

pub use cpu::{
    qemu_cpu, qemu_cpu_models, qemu_id_regs, CpuFeatures, IdRegs, FEATURE_CACHEABLE_DEVICE,
    FEATURE_DIC, FEATURE_FWB, FEATURE_IDC, FEATURE_MTE, MAX_PA_BITS,
};
pub use devices::{smmu_facts, withhold_nodes, SmmuFacts};
pub use dt::{cpu_mpidrs, gic_facts, patch_host_memory, GicFacts};
pub use error::{FdtError, Origin, PlatformError};
pub use manifest::{Manifest, ManifestEntry, ManifestKind};
pub use memmap::{MemClass, Platform, Region};
#[cfg(any(test, feature = "std"))]
pub use qemu_virt::qemu_virt_fdt;

/// Pages are 4 KiB.
pub const PAGE_SHIFT: u32 = 12;

/// The boot manifest the project uses on QEMU `virt`.
pub const QEMU_VIRT_MANIFEST: &str = qemu_virt::MANIFEST;
