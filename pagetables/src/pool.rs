//! The table-page pool and every raw memory access of the crate.
//!
//! [`PoolTranslation`] is the [`Translation`] aarch64-paging allocates table
//! pages from. It hands out pages only from an intrusive free list the core
//! fills: each free page holds the link to the next one in its first 8 bytes,
//! so the pool needs no memory of its own. `RootTable` only lends `&T` to its
//! owner, so the list heads sit in [`Cell`]s.
//!
//! A concatenated root is one `RootTable` per root page, each with its own
//! [`PoolTranslation`]. The stage-2's one pool lives in the first; for a call
//! into another root's `RootTable` it is lent to that root's translation
//! ([`PoolTranslation::hand_over`]) and taken back afterwards.
//!
//! Table pages detached by an unmap wait on a second list, `pending`, until
//! the TLB maintenance for them was issued; only then do they join the free
//! list. A link is stored as `next_pa | 0b10` (0 ends the list): bit 0 is
//! clear, so a hardware walker still holding a stale pointer to a detached
//! table reads the overwritten first entry as an invalid descriptor — the
//! same outcome as the unmap that detached it.

use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{PageTable, Translation};

use crate::desc::{is_table, LEAF_LEVEL, OA_MASK, PAGE_SIZE};
use crate::PhysMem;

// Descriptors and addresses are handled as u64 and handed to aarch64-paging
// as usize.
const _: () = assert!(size_of::<usize>() == size_of::<u64>());

const LINK: u64 = 0b10;

/// An intrusive singly linked list of pages.
struct PageList {
    /// Encoded link to the first page (0: empty).
    head: Cell<u64>,
    /// Physical address of the last page (valid when non-empty).
    tail: Cell<u64>,
    len: Cell<usize>,
}

impl PageList {
    const fn new() -> Self {
        Self {
            head: Cell::new(0),
            tail: Cell::new(0),
            len: Cell::new(0),
        }
    }
}

const fn decode_link(link: u64) -> Option<u64> {
    if link & LINK != 0 {
        Some(link & OA_MASK)
    } else {
        None
    }
}

/// Pool, physical memory access and table-page accounting of one stage-2.
pub(crate) struct PoolTranslation<P: PhysMem> {
    phys: P,
    free: PageList,
    pending: PageList,
    /// Table pages in use (root included).
    tables: Cell<usize>,
}

impl<P: PhysMem> PoolTranslation<P> {
    pub(crate) const fn new(phys: P) -> Self {
        Self {
            phys,
            free: PageList::new(),
            pending: PageList::new(),
            tables: Cell::new(0),
        }
    }

    pub(crate) fn phys(&self) -> &P {
        &self.phys
    }

    /// Word `idx` of the page at `pa`, as an atomic (the hardware walker may
    /// read table pages concurrently).
    fn word(&self, pa: u64, idx: usize) -> &AtomicU64 {
        debug_assert!(pa.is_multiple_of(PAGE_SIZE) && idx < 512);
        let ptr = self.phys.phys_to_virt(pa).cast::<u64>().wrapping_add(idx);
        // SAFETY: `pa` is a page this stage-2 owns (a table page, a pool page
        // or a page being handed to it), which the PhysMem contract maps
        // readable and writable, 4 KiB aligned, for its whole size at
        // `phys_to_virt(pa)`; `idx < 512` keeps the 8-byte word inside the
        // page and aligned. Every access to owned pages from Rust goes
        // through atomics (here and in aarch64-paging's `Descriptor`), so no
        // non-atomic reference to the word exists.
        unsafe { AtomicU64::from_ptr(ptr) }
    }

    /// The 512 descriptors of the table page at `table_pa`, for walks that
    /// read many of them.
    pub(crate) fn table(&self, table_pa: u64) -> &[AtomicU64] {
        debug_assert!(table_pa.is_multiple_of(PAGE_SIZE));
        let ptr = self.phys.phys_to_virt(table_pa).cast::<AtomicU64>();
        // SAFETY: as for `word`: a page this stage-2 owns, mapped readable
        // and writable, 4 KiB aligned, for its whole size (512 words), and
        // only ever accessed through atomics (`AtomicU64` has the layout of
        // `u64`).
        unsafe { core::slice::from_raw_parts(ptr, 512) }
    }

    /// Descriptor `idx` of the table page at `table_pa`.
    pub(crate) fn read_entry(&self, table_pa: u64, idx: usize) -> u64 {
        self.word(table_pa, idx).load(Ordering::Acquire)
    }

    /// Write descriptor `idx` of the table page at `table_pa` (Release, as
    /// aarch64-paging writes descriptors: the walker sees the entry whole).
    pub(crate) fn write_entry(&self, table_pa: u64, idx: usize, desc: u64) {
        self.word(table_pa, idx).store(desc, Ordering::Release);
    }

    fn zero_page(&self, pa: u64) {
        for i in 0..512 {
            self.word(pa, i).store(0, Ordering::Relaxed);
        }
    }

    fn push(&self, list: &PageList, pa: u64) {
        self.word(pa, 0).store(list.head.get(), Ordering::Release);
        if list.len.get() == 0 {
            list.tail.set(pa);
        }
        list.head.set(pa | LINK);
        list.len.set(list.len.get() + 1);
    }

    fn pop(&self, list: &PageList) -> Option<u64> {
        let pa = decode_link(list.head.get())?;
        list.head.set(self.word(pa, 0).load(Ordering::Acquire));
        list.len.set(list.len.get() - 1);
        Some(pa)
    }

    /// Give a page to the pool.
    pub(crate) fn pool_add(&self, pa: u64) {
        self.push(&self.free, pa);
    }

    pub(crate) fn pool_len(&self) -> usize {
        self.free.len.get()
    }

    /// Take a zeroed page out of the pool.
    pub(crate) fn pool_take(&self) -> Option<u64> {
        let pa = self.pop(&self.free)?;
        self.zero_page(pa);
        Some(pa)
    }

    pub(crate) fn table_pages(&self) -> usize {
        self.tables.get()
    }

    /// A table page was detached from the tree: park it until the TLB
    /// maintenance for it was issued.
    fn defer_free(&self, pa: u64) {
        self.tables.set(self.tables.get() - 1);
        self.push(&self.pending, pa);
    }

    /// Park every table page of a detached hierarchy whose top table (at
    /// `level`) is at `table_pa`. Each page is parked only after all its
    /// entries were read, so the links written by parking never hide a
    /// subtable.
    pub(crate) fn defer_free_tree(&self, table_pa: u64, level: u8) {
        if level < LEAF_LEVEL {
            for idx in 0..512 {
                let desc = self.read_entry(table_pa, idx);
                if is_table(desc, level) {
                    self.defer_free_tree(desc & OA_MASK, level + 1);
                }
            }
        }
        self.defer_free(table_pa);
    }

    /// The TLB maintenance for the parked pages was issued: they may be
    /// reused.
    pub(crate) fn release_pending(&self) {
        let n = self.pending.len.get();
        if n == 0 {
            return;
        }
        self.word(self.pending.tail.get(), 0)
            .store(self.free.head.get(), Ordering::Release);
        if self.free.len.get() == 0 {
            self.free.tail.set(self.pending.tail.get());
        }
        self.free.head.set(self.pending.head.get());
        self.free.len.set(self.free.len.get() + n);
        self.pending.head.set(0);
        self.pending.len.set(0);
    }

    /// Call `f` with every table page of the tree under the table at
    /// `table_pa` (at `level`), children before their parent. No writes.
    pub(crate) fn for_each_table(&self, table_pa: u64, level: u8, f: &mut dyn FnMut(u64)) {
        if level < LEAF_LEVEL {
            for idx in 0..512 {
                let desc = self.read_entry(table_pa, idx);
                if is_table(desc, level) {
                    self.for_each_table(desc & OA_MASK, level + 1, f);
                }
            }
        }
        f(table_pa);
    }

    /// Teardown: move every table page below the `root_pages` root pages
    /// from `root_pa` on (tables at `root_level`) to the free list and clear
    /// the roots, so that dropping the `RootTable`s reads nothing but the
    /// (now empty) roots.
    pub(crate) fn dismantle(&self, root_pa: u64, root_pages: usize, root_level: u8) {
        self.release_pending();
        for k in 0..root_pages as u64 {
            let root = root_pa + k * PAGE_SIZE;
            for idx in 0..512 {
                let desc = self.read_entry(root, idx);
                if is_table(desc, root_level) {
                    self.for_each_table(desc & OA_MASK, root_level + 1, &mut |pa| {
                        self.push(&self.free, pa);
                    });
                    self.word(root, idx).store(0, Ordering::Release);
                }
            }
        }
        self.tables.set(root_pages);
    }

    /// Move the whole pool state (free and pending lists, table count) to
    /// `to`, whose state must be empty, leaving this one empty. Used to lend
    /// the one pool of a stage-2 to the `RootTable` of another page of a
    /// concatenated root for the duration of a call into aarch64-paging.
    pub(crate) fn hand_over(&self, to: &Self) {
        debug_assert!(
            to.free.len.get() == 0 && to.pending.len.get() == 0 && to.tables.get() == 0,
            "pool handed over to a non-empty pool"
        );
        for (from, into) in [(&self.free, &to.free), (&self.pending, &to.pending)] {
            into.head.set(from.head.replace(0));
            into.tail.set(from.tail.replace(0));
            into.len.set(from.len.replace(0));
        }
        to.tables.set(self.tables.replace(0));
    }

    /// The free list's head link and length, for walking it after the
    /// `RootTable` (and with it this pool) is gone.
    pub(crate) fn free_list(&self) -> u64 {
        self.free.head.get()
    }

    fn table_ptr(&self, pa: u64) -> NonNull<PageTable<Stage2Attributes>> {
        match NonNull::new(self.phys.phys_to_virt(pa).cast()) {
            Some(p) => p,
            None => panic!("PhysMem maps table page {pa:#x} at null"),
        }
    }
}

/// Walk a free list detached from its pool (see
/// [`PoolTranslation::free_list`]): `f` gets every page, after its link was
/// read, so `f` may reuse the page at once.
pub(crate) fn drain_list<P: PhysMem>(phys: &P, mut link: u64, f: &mut dyn FnMut(u64)) {
    while let Some(pa) = decode_link(link) {
        let ptr = phys.phys_to_virt(pa).cast::<u64>();
        // SAFETY: `pa` is a page of the dismantled stage-2's free list, still
        // owned by it (the caller hands it on only through `f`, after this
        // read); the PhysMem contract maps it aligned and readable.
        link = unsafe { AtomicU64::from_ptr(ptr) }.load(Ordering::Acquire);
        f(pa);
    }
}

impl<P: PhysMem> Translation<Stage2Attributes> for PoolTranslation<P> {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        // Every caller counted the tables it needs against the pool before
        // calling into aarch64-paging (Stage2::check_pool), so the pool
        // cannot be empty here.
        let Some(pa) = self.pop(&self.free) else {
            panic!("stage-2 table pool exhausted despite the pre-count");
        };
        self.zero_page(pa);
        self.tables.set(self.tables.get() + 1);
        (self.table_ptr(pa), PhysicalAddress(pa as usize))
    }

    unsafe fn deallocate_table(&mut self, _page_table: NonNull<PageTable<Stage2Attributes>>) {
        // Nothing to do: aarch64-paging frees tables only when an unmap
        // covers a whole table (`Stage2::set_invalid`), and Stage2 then parks
        // the detached pages itself (`defer_free_tree`), knowing their
        // physical addresses; and on drop, which Stage2 precedes by
        // `dismantle` or which happens with the pages still owned.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        self.table_ptr(pa.0 as u64)
    }
}
