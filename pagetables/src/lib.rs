//! Stage-2 translation tables for the hypervisor, built on
//! [`aarch64_paging`]'s [`RootTable`](aarch64_paging::paging::RootTable) in
//! the `Stage2` regime.
//!
//! This crate owns the *format* of a stage-2: which descriptor encodes which
//! memory type (with and without `HCR_EL2.FWB`), where the pKVM page state
//! lives (software bits 55-56 of valid leaves), where the core's owner
//! annotation lives (bits \[11:2\] of invalid descriptors), how blocks are split
//! and how every change to a live table is ordered (break-before-make). It
//! knows nothing about who owns what; the core (`hyp`) decides and calls
//! [`Stage2::map`] / [`Stage2::set_invalid`].
//!
//! Two things come from outside, behind traits so that host tests fake them:
//! where a physical page can be read and written ([`PhysMem`]) and TLB/cache
//! maintenance ([`Maintenance`]).
//!
//! Table pages come only from a per-table pool the core fills
//! ([`Stage2::pool_add`]). Every operation first counts the table pages it
//! will allocate and fails with [`Error::NoMem`] before writing anything if the
//! pool is short, so an update is either complete or absent.
//!
//! The start level and the number of concatenated root tables follow the
//! architecture's rules for the IPA size and the CPU's PA size
//! ([`stage2_root_geometry`]): a 40-bit IPA space on a CPU with PAMax < 44
//! starts at level 1 with two concatenated root tables, each handled by its
//! own aarch64-paging `RootTable`.
//!
//! aarch64-paging is used with `live == false` semantics only, through
//! `RootTable::map_range` and `RootTable::walk_range`; `Mapping`/`activate`
//! (which would program `VTTBR_EL2`) are not used. On aarch64 the library's
//! `map_range` is compiled with its `tlbi ipas2e1is` / `dsb` / `isb`
//! instructions still in the binary, but only inside `if live` branches
//! (`free_detached`, `invalidate_detached`), and `RootTable::map_range`
//! passes `live = false` down every path, so they never execute;
//! `walk_range` contains none. All maintenance is issued explicitly through
//! [`Maintenance`], with the VMID of the table.

#![no_std]

extern crate alloc;

mod desc;
mod geometry;
mod pool;
mod stage2;

pub use desc::{decode_memattr, memattr_bits};
pub use geometry::{stage2_root_geometry, RootGeometry, MAX_ROOT_PAGES};
pub use stage2::Stage2;

/// Physical memory access: where a physical page can be read/written by the
/// hypervisor. At EL2 this is the hypervisor's linear map; in the simulator,
/// an offset into a buffer.
///
/// Contract for the pages handed to a [`Stage2`] (its root and its pool): the
/// returned pointer is non-null, 4 KiB aligned for a page-aligned `pa`, and
/// the whole page is readable and writable there for as long as the
/// [`Stage2`] owns the page. Nothing else may access a page while the
/// [`Stage2`] owns it (except the hardware table walker).
pub trait PhysMem: Clone {
    /// Virtual address of physical address `pa` (page-aligned pages are
    /// contiguous in VA).
    fn phys_to_virt(&self, pa: u64) -> *mut u8;
}

/// TLB and cache maintenance, behind a trait so host tests fake and record
/// it.
///
/// [`Stage2`] issues only `dsb`, `tlbi_ipa` and `tlbi_vmid`; the cache
/// operations are part of the trait for the core, which owns the cache policy
/// (D9, scrubbing) and issues them itself before a mapping goes live.
pub trait Maintenance {
    /// TLB invalidate by IPA for one VMID (after a live valid entry was
    /// changed/invalidated), `level` of the entry.
    fn tlbi_ipa(&mut self, vmid: u16, ipa: u64, level: u8);
    /// Invalidate all stage-1&2 TLB entries of a VMID (e.g. at VM teardown or
    /// a large change).
    fn tlbi_vmid(&mut self, vmid: u16);
    /// DSB ISH (store completion / maintenance completion).
    fn dsb(&mut self);
    /// Clean and invalidate the data cache to the Point of Coherency for
    /// \[pa, pa+len).
    fn dcache_clean_inval_poc(&mut self, pa: u64, len: u64);
    /// Invalidate the instruction cache to PoU (whole I-cache is fine).
    fn icache_inval_pou(&mut self);
    /// Zero the MTE allocation tags of \[pa, pa+len) (whole pages), where
    /// the hardware stores tags; nothing elsewhere. RECLAIM calls it: tags
    /// are part of a page's contents (RULES.md S3).
    fn zero_tags(&mut self, _pa: u64, _len: u64) {}
}

/// Memory type of a stage-2 leaf, as the core chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// "Stage 1 decides": FWB MemAttr 0b0111. Without FWB encodes as normal
    /// write-back 0b1111 (decodes back as NormalWb).
    Stage1,
    /// Normal write-back cacheable: FWB 0b0110 (forced), non-FWB 0b1111.
    NormalWb,
    /// Normal non-cacheable: 0b0101 (both).
    NormalNc,
    /// Device-nGnRE: 0b0001 (both).
    Device,
}

impl MemType {
    /// Whether mappings of this type are cacheable. Non-cacheable mappings
    /// are page-granular (D6) and never executable.
    pub const fn is_cacheable(self) -> bool {
        matches!(self, MemType::Stage1 | MemType::NormalWb)
    }
}

/// pKVM page state kept in software bits 55-56 of valid leaf entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Bits 0b00.
    Owned,
    /// Bits 0b01.
    SharedOwned,
    /// Bits 0b10.
    SharedBorrowed,
}

/// Stage-2 access permissions of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Readable (S2AP\[0\], bit 6).
    pub r: bool,
    /// Writable (S2AP\[1\], bit 7).
    pub w: bool,
    /// Executable (XN\[1:0\] = 0b00; otherwise 0b10).
    pub x: bool,
}

/// Everything a valid leaf says besides its output address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Access permissions. `x` is forced off for NormalNc and Device.
    pub perms: Perms,
    /// Memory type.
    pub memtype: MemType,
    /// pKVM page state.
    pub state: PageState,
}

/// What one stage-2 address translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A valid leaf: page (level 3) or block (level 1/2). `pa` is the output
    /// address of THIS page (not the block base).
    Mapped {
        /// Output address of the page.
        pa: u64,
        /// Attributes.
        leaf: Leaf,
        /// Level of the descriptor: 3 for a page, 1 or 2 for a block.
        level: u8,
    },
    /// Nothing mapped; `annotation` (0..=1023, 0 = none) is the owner
    /// annotation the core stored in the invalid descriptor (bits \[11:2\]).
    Invalid {
        /// The annotation.
        annotation: u16,
    },
}

/// Why an update was refused. Nothing was written in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The table-page pool holds fewer pages than the operation needs;
    /// NOTHING was written.
    NoMem {
        /// Table pages the operation would allocate.
        needed: usize,
        /// Pages in the pool.
        available: usize,
    },
    /// Address range outside the table, unaligned, empty or overflowing;
    /// nothing written.
    Range,
    /// Annotation > 1023.
    Annotation,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NoMem { needed, available } => write!(
                f,
                "stage-2 needs {needed} table pages, pool holds {available}"
            ),
            Error::Range => f.write_str("address range outside the stage-2 or malformed"),
            Error::Annotation => f.write_str("annotation above 1023"),
        }
    }
}

/// Largest owner annotation an invalid descriptor can hold (10 bits).
pub const MAX_ANNOTATION: u16 = 1023;
