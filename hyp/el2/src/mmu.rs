//! The hypervisor's own stage-1 (EL2) translation: an identity map built
//! from a static pool of table pages, so the MMU can go on before anything
//! takes a lock or allocates. Image text is read-only and executable, every
//! other page execute-never, the boot stack's guard page unmapped. The room
//! between the image and the heap stays unmapped until the boot CPU maps
//! the other CPUs' stacks there ([`map_stacks`]), their guard pages never.

#![allow(
    clippy::deref_addrof,
    reason = "`*(&raw mut MAP)` avoids a reference to a `static mut`; the suggested `MAP` would create one"
)]

use core::ptr::NonNull;

use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El2, MemoryRegion, PageTable, Translation};
use aarch64_paging::Mapping;

use hyp::cpu_area::{CpuArea, GUARD_SIZE};

use crate::entry::{BOOT_PARAMS, BOOT_STACK};
use crate::sysreg;

const TABLE_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pages([PageTable<El23Attributes>; TABLE_PAGES]);

static mut TABLES: Pages = Pages([PageTable::EMPTY; TABLE_PAGES]);
static mut NEXT_TABLE: usize = 0;

/// Table pages come from [`TABLES`]; they are never freed.
struct StaticTables;

impl Translation<El23Attributes> for StaticTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El23Attributes>>, PhysicalAddress) {
        // SAFETY: only the primary CPU builds and extends the EL2 map, at
        // boot, before any other CPU runs: nothing else touches these statics.
        let i = unsafe { NEXT_TABLE };
        assert!(i < TABLE_PAGES, "EL2 page-table pool exhausted");
        // SAFETY: as above; `i` is in bounds, and each page is handed out once.
        unsafe { NEXT_TABLE = i + 1 };
        // SAFETY: in bounds (checked above); BSS is zeroed, so the page is an
        // empty table. The raw pointer does not create a reference.
        let p = unsafe { &raw mut TABLES.0[i] };
        let p = NonNull::new(p).expect("static table");
        (p, PhysicalAddress(p.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, _: NonNull<PageTable<El23Attributes>>) {}

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El23Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El23Attributes>).expect("table address")
    }
}

static mut MAP: Option<Mapping<StaticTables, El2>> = None;

/// Normal write-back memory, not executable.
pub const NORMAL: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_1)
    .union(El23Attributes::INNER_SHAREABLE)
    .union(El23Attributes::ACCESSED)
    .union(El23Attributes::XN);
/// Device-nGnRE, not executable.
pub const DEVICE: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_0)
    .union(El23Attributes::ACCESSED)
    .union(El23Attributes::XN);

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
}

fn sym(s: &u8) -> usize {
    s as *const u8 as usize
}

/// Map `[start, end)` with `flags`. Only the primary CPU at boot calls this.
pub fn map(start: usize, end: usize, flags: El23Attributes) {
    // SAFETY: single-threaded boot (see StaticTables).
    let map = unsafe { (*(&raw mut MAP)).as_mut() }.expect("EL2 map not built");
    let r = MemoryRegion::new(start, end);
    map.map_range(&r, PhysicalAddress(start), flags, Constraints::empty())
        .expect("EL2 map");
}

/// Build the identity map of the hypervisor region but `[hole_start,
/// hole_end)` (the room for the other CPUs' stacks) and the UART, turn the
/// MMU and caches on, and publish the settings for secondary CPUs.
pub fn enable(hyp_start: usize, hyp_end: usize, hole: (usize, usize), uart: usize, pa_range: u64) {
    // SAFETY: single-threaded boot; MAP is written once here.
    unsafe { *(&raw mut MAP) = Some(Mapping::new(StaticTables, 1, El2)) };
    // SAFETY: linker-defined symbols; only their addresses are used.
    let (image, text_end, rodata_end) =
        unsafe { (sym(&__image_start), sym(&__text_end), sym(&__rodata_end)) };
    let ro = El23Attributes::READ_ONLY;
    map(hyp_start, image, NORMAL);
    map(image, text_end, (NORMAL | ro) - El23Attributes::XN);
    map(text_end, rodata_end, NORMAL | ro);
    map(rodata_end, hole.0, NORMAL);
    map(hole.1, hyp_end, NORMAL);
    // The boot stack's guard page: unmapped, so an overflow faults instead
    // of corrupting what lies below.
    let guard = (&raw const BOOT_STACK) as usize;
    map(guard, guard + GUARD_SIZE as usize, El23Attributes::empty());
    map(uart, uart + 4096, DEVICE);

    // SAFETY: single-threaded boot.
    let root = unsafe { (*(&raw const MAP)).as_ref() }
        .expect("EL2 map")
        .root_address()
        .0 as u64;
    // MAIR: 0 = Device-nGnRE, 1 = Normal write-back read/write-allocate,
    // Tagged where memory holds MTE tags (MTE2), so that RECLAIM can zero
    // them (SCTLR_EL2.ATA below; EL2 never checks tags: TCF is 0).
    let mte2 = (sysreg::id_aa64pfr1_el1() >> 8) & 0xf >= 2;
    let mair = 0x04 | (if mte2 { 0xf0 } else { 0xff } << 8);
    // T0SZ 25 (39-bit VA, level-1 root), inner/outer WBWA, inner shareable,
    // 4 KiB granule, PS from PARange, RES1 bits 23 and 31. Bit 32 (DS) stays 0.
    let tcr =
        25 | (1 << 8) | (1 << 10) | (3 << 12) | (pa_range.min(5) << 16) | (1 << 23) | (1 << 31);
    // RES1 bits, then M, C, SA, I.
    let sctlr = 0x30c5_0830 | 1 | (1 << 2) | (1 << 3) | (1 << 12) | (u64::from(mte2) << 43);
    BOOT_PARAMS.0[0].store(mair, core::sync::atomic::Ordering::Relaxed);
    BOOT_PARAMS.0[1].store(tcr, core::sync::atomic::Ordering::Relaxed);
    BOOT_PARAMS.0[2].store(root, core::sync::atomic::Ordering::Relaxed);
    BOOT_PARAMS.0[3].store(sctlr, core::sync::atomic::Ordering::Relaxed);
    sysreg::dsb_ish();
    // SAFETY: the map covers everything the image touches from here on
    // (text, data, BSS, stacks, the UART); identity mapping keeps every
    // address valid across the switch.
    unsafe {
        sysreg::set_mair_el2(mair);
        sysreg::set_tcr_el2(tcr);
        sysreg::set_ttbr0_el2(root);
        sysreg::isb();
        sysreg::tlbi_alle2();
        sysreg::set_sctlr_el2(sctlr);
    }
    sysreg::isb();
    // SAFETY: single-threaded boot.
    unsafe { (*(&raw const MAP)).as_ref() }
        .expect("EL2 map")
        .mark_active();
    // Secondaries read BOOT_PARAMS with their MMU off: push it to PoC.
    sysreg::dc_civac((&raw const BOOT_PARAMS) as u64);
    sysreg::dsb_ish();
}

/// Map the stacks of CPUs 1.. (not their guard pages), in the hole
/// [`enable`] left, and publish their base for `secondary_entry`. Only the
/// primary CPU at boot, before any other CPU starts.
pub fn map_stacks(area: &CpuArea) {
    for i in 1..area.cpus() {
        if let Some((lo, hi)) = area.stack(i) {
            map(lo as usize, hi as usize, NORMAL);
        }
    }
    BOOT_PARAMS.0[4].store(area.stacks_base(), core::sync::atomic::Ordering::Relaxed);
    sysreg::dsb_ish();
    // Read with the MMU off, as the rest of BOOT_PARAMS (one cache line:
    // 40 bytes, 64-byte aligned).
    sysreg::dc_civac((&raw const BOOT_PARAMS) as u64);
    sysreg::dsb_ish();
}
