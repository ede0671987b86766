//! The host's stage-1: an identity map of everything below [`mapped_end`]
//! — RAM, the hypervisor's and the COHERENT region Normal write-back, every
//! other address Device-nGnRE — built with aarch64-paging from a static
//! pool of table pages, before the MMU goes on. The image's text is
//! read-only and executable, everything else execute-never, and the page
//! below each stack (the boot CPU's, each secondary CPU's) is unmapped so an
//! overflow faults. [`SECONDARY_MMU`] keeps the translation settings for
//! the secondary CPUs, which turn their MMUs on with the same tables.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, PageTable, Translation, VaRange};
use aarch64_paging::Mapping;

use crate::arch;
use crate::entry::{SECONDARY_STACKS, STACK_SLOT};

/// 39-bit virtual addresses: a level-1 root covers 512 GiB.
const VA_BITS: u64 = 39;
const GIB: u64 = 1 << 30;
const TABLE_PAGES: usize = 32;

#[repr(C, align(4096))]
struct Pages([PageTable<El1Attributes>; TABLE_PAGES]);

/// Table pages; handed out once each and never freed.
static mut TABLES: Pages = Pages([PageTable::EMPTY; TABLE_PAGES]);

/// First address past the identity map (0 until the MMU is on).
static MAPPED_END: AtomicU64 = AtomicU64::new(0);

/// What a secondary CPU needs to turn its MMU on exactly like the boot CPU:
/// MAIR_EL1, TCR_EL1, TTBR0_EL1 and SCTLR_EL1, in that order. Written by
/// [`enable`] and cleaned to the point of coherency, because
/// `entry`'s `secondary_entry` reads it with its MMU (and caches) off.
pub static SECONDARY_MMU: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Hands out the pages of [`TABLES`] in order.
struct StaticTables {
    next: usize,
}

impl Translation<El1Attributes> for StaticTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        let i = self.next;
        assert!(i < TABLE_PAGES, "host page-table pool exhausted");
        self.next = i + 1;
        // SAFETY: only `enable` creates a `StaticTables`, once, at boot on the
        // one CPU; `i` is in bounds and each page is handed out once, so no
        // one else refers to it. BSS is zeroed: the page is an empty table.
        // The raw pointer creates no reference to the `static mut`.
        let p = unsafe { &raw mut TABLES.0[i] };
        let p = NonNull::new(p).unwrap_or(NonNull::dangling());
        (p, PhysicalAddress(p.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, _: NonNull<PageTable<El1Attributes>>) {}

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>).unwrap_or(NonNull::dangling())
    }
}

/// MAIR_EL1 index 0: Device-nGnRE; index 1: Normal, write-back
/// read/write-allocate, inner and outer, and Tagged where memory holds MTE
/// tags (MTE2), so that the `isolation` mode can read and write tags (tag
/// checks stay off: SCTLR_EL1.TCF is 0).
fn mair() -> u64 {
    let normal = if arch::mte2() { 0xf0 } else { 0xff };
    0x04 | (normal << 8)
}

/// Normal write-back memory, read/write, not executable.
const NORMAL: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);
/// The image's text: Normal, read-only, executable at EL1.
const TEXT: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::READ_ONLY)
    .union(El1Attributes::UXN);
/// Device-nGnRE, not executable.
const DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);

/// Addresses from the linker script.
pub struct ImageLayout {
    /// First byte of the image.
    pub start: usize,
    /// End of the text.
    pub text_end: usize,
    /// The unmapped page below the stack.
    pub stack_guard: usize,
    /// The secondary CPUs' stack slots, `[start, end)`: each
    /// [`crate::entry::STACK_SLOT`] bytes, an unmapped guard page first.
    pub secondary_stacks: (usize, usize),
    /// End of everything the image reserves (heap included).
    pub end: usize,
}

fn map(
    m: &mut Mapping<StaticTables, El1And0>,
    start: u64,
    end: u64,
    flags: El1Attributes,
) -> Result<(), &'static str> {
    let start = start & !0xfff;
    let end = end.saturating_add(0xfff) & !0xfff;
    let end = end.min(1 << VA_BITS);
    if start >= end {
        return Ok(());
    }
    let region = MemoryRegion::new(start as usize, end as usize);
    m.map_range(
        &region,
        PhysicalAddress(start as usize),
        flags,
        Constraints::empty(),
    )
    .map_err(|_| "cannot build the host's identity map")
}

/// Build the identity map and turn the MMU and caches on. `memory` are the
/// ranges to map Normal (`(base, size)`); everything else below
/// [`mapped_end`] (the low 4 GiB at least) is Device.
///
/// Runs with the MMU off: writes so far went to memory, not the cache.
pub fn enable(
    memory: impl Iterator<Item = (u64, u64)> + Clone,
    image: &ImageLayout,
) -> Result<(), &'static str> {
    let end = memory
        .clone()
        .map(|(base, size)| base.saturating_add(size))
        .fold(4 * GIB, u64::max)
        .saturating_add(GIB - 1)
        & !(GIB - 1);
    let end = end.min(1 << VA_BITS);
    let mut m =
        Mapping::with_asid_and_va_range(StaticTables { next: 0 }, 0, 1, El1And0, VaRange::Lower);
    map(&mut m, 0, end, DEVICE)?;
    for (base, size) in memory {
        map(&mut m, base, base.saturating_add(size), NORMAL)?;
    }
    let (start, text_end) = (image.start as u64, image.text_end as u64);
    map(&mut m, start, image.end as u64, NORMAL)?;
    map(&mut m, start, text_end, TEXT)?;
    let (slots, slots_end) = image.secondary_stacks;
    if slots_end - slots != SECONDARY_STACKS * STACK_SLOT {
        return Err("the linker script's secondary stacks do not match entry::SECONDARY_STACKS");
    }
    let guards = (0..SECONDARY_STACKS).map(|i| (slots + i * STACK_SLOT) as u64);
    for guard in core::iter::once(image.stack_guard as u64).chain(guards) {
        map(&mut m, guard, guard + 0x1000, El1Attributes::empty())?;
    }

    let root = m.root_address().0 as u64;
    // The tables live in static memory for good; the mapping must never be
    // dropped (that would deactivate it).
    core::mem::forget(m);

    // T0SZ for 39 bits (level-1 root), walks inner/outer write-back
    // cacheable and inner shareable, 4 KiB granule, TTBR1 walks off, IPS
    // from PARange.
    let ips = match arch::pa_bits() {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        _ => 5,
    };
    let tcr = (64 - VA_BITS) | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (ips << 32);
    // SAFETY: with the MMU off, everything written so far (tables, BSS,
    // stack) is in memory; stale cache lines over it would hide that once
    // the caches are on, so they are discarded. Nothing was written through
    // the cache.
    unsafe { arch::dcache_invalidate(image.start, image.end) };
    let mair = mair();
    // SAFETY: the tables identity-map the image (text executable, the rest
    // read/write), its stacks and heap, all RAM and the devices in the low
    // 4 GiB, including the UART; MAIR matches the attribute indices used.
    let sctlr = unsafe { arch::enable_mmu(mair, tcr, root) };
    MAPPED_END.store(end, Ordering::Relaxed);
    for (slot, value) in SECONDARY_MMU.iter().zip([mair, tcr, root, sctlr]) {
        slot.store(value, Ordering::Relaxed);
    }
    let params = SECONDARY_MMU.as_ptr() as usize;
    arch::dcache_clean(params, params + core::mem::size_of_val(&SECONDARY_MMU));
    Ok(())
}

/// First address past the identity map: the host can reach every address
/// below it (unless the page is the stack guard), and none above.
pub fn mapped_end() -> u64 {
    MAPPED_END.load(Ordering::Relaxed)
}
