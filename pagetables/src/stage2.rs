//! [`Stage2`]: one stage-2 translation table, its pool, and the
//! break-before-make protocol around aarch64-paging's `map_range`.
//!
//! # How an update is done
//!
//! Every stage-2 is treated as live. [`Stage2::map`] and
//! [`Stage2::set_invalid`] work on *units*: the overlap of the range with
//! one non-table descriptor (a page, a block, or an invalid descriptor at any
//! level), or — for `set_invalid` — a whole table whose span lies inside the
//! range.
//!
//! 0. **Count.** The table pages the update allocates are counted exactly
//!    from the existing tables; if the pool is short: [`Error::NoMem`],
//!    nothing written. Only then is aarch64-paging called, whose
//!    `Translation::allocate_table` is infallible.
//! 1. **Break.** Every valid leaf that cannot be changed in place (output
//!    address or memory attributes change, or a block must be split) is
//!    made invalid; then `dsb`, `tlbi_ipa` for each, `dsb`.
//! 2. **Make.** Blocks that straddle the range get their replacement table,
//!    re-creating the old mapping outside the range; then the range's new
//!    entries are written. Units that already hold the requested content are
//!    left alone. A partly covered *invalid* block is split by
//!    aarch64-paging, which copies its attributes — the annotation — into
//!    the new table.
//! 3. **Complete.** `dsb`; `tlbi_ipa` for valid leaves changed in place
//!    (permissions) or removed, `tlbi_vmid` if a table was detached or the
//!    batch overflowed; `dsb`. Then detached table pages join the pool. If
//!    only invalid entries were replaced, a single `dsb` publishes them.
//!
//! The invalidations of one step are batched: up to
//! [`TlbBatch::CAPACITY`] `tlbi_ipa`s, beyond that one `tlbi_vmid`. Pure
//! software-bit changes get no TLBI. Cache maintenance is the core's (D9):
//! this module issues none.
//!
//! # Concatenated roots
//!
//! A stage-2 whose start level holds fewer IPA bits than the IPA space (a
//! 40-bit space starting at level 1 on a CPU without level-0 starts, see
//! [`stage2_root_geometry`]) has `N` physically contiguous root tables, which
//! the hardware walks as one table of `N * 512` entries. aarch64-paging's
//! `RootTable` holds one page, so each root page gets its own level-1
//! `RootTable` covering 512 GiB: root `k` translates the IPAs
//! `[k * 512 GiB, (k + 1) * 512 GiB)`, and is called with addresses relative
//! to its base (its walk callbacks report relative addresses, translated
//! back here). Updates and walks are split at the 512 GiB lines; this
//! module's own table reads pick the root page of the address (the entry
//! the hardware reads: `root_pa + (ipa >> 30) * 8`).

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion, RootTable, Stage2 as Stage2Regime};
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::desc::{
    attrs, decode_entry, granule, index, invalid_attrs, is_table, is_valid, leaf_attrs, LEAF_LEVEL,
    OA_LIMIT, OA_MASK, PAGE_SIZE, PERM_BITS, TABLE_OR_PAGE,
};
use crate::geometry::{effective_ipa_bits, stage2_root_geometry, RootGeometry, MAX_ROOT_PAGES};
use crate::pool::{drain_list, PoolTranslation};
use crate::{Entry, Error, Leaf, Maintenance, PhysMem, MAX_ANNOTATION};

type Root<P> = RootTable<Stage2Regime, PoolTranslation<P>>;

/// The next [`Stage2`]'s id.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One stage-2 translation table with its pool of table pages.
pub struct Stage2<P: PhysMem> {
    /// One `RootTable` per root page (`geometry.root_pages` of them, the
    /// rest `None`). The first one's translation holds the pool.
    roots: [Option<Root<P>>; MAX_ROOT_PAGES],
    geometry: RootGeometry,
    /// First root page; the others follow it.
    root_pa: u64,
    root_level: u8,
    /// IPA span of one root page.
    root_span: u64,
    ipa_bits: u32,
    fwb: bool,
    vmid: u16,
    /// Descriptor writes so far (wrapping): a [`LastLookup`] taken at
    /// another count is stale.
    writes: u64,
    /// Distinct for every table made in this program ([`Stage2::generation`]).
    id: u64,
    /// Where [`Stage2::lookup_for_update`] last found a page's descriptor, so that a
    /// one-page update of that page right after it (the core checks a
    /// page's state, then changes it) does not walk the tables again.
    last_lookup: Cell<Option<LastLookup>>,
}

/// The descriptor [`Stage2::lookup_for_update`] found for a page, valid while no
/// descriptor was written since (`writes` unchanged).
#[derive(Clone, Copy)]
struct LastLookup {
    page: u64,
    writes: u64,
    unit: Unit,
}

/// How [`Stage2::walk_raw`] reports.
struct RawWalk {
    skip_empty: bool,
    fwb: bool,
}

/// What an update writes into every page of its range.
#[derive(Clone, Copy)]
enum Write {
    /// Valid leaves with attribute bits `attrs`, output `pa + (ipa' - ipa)`.
    Map {
        ipa: u64,
        pa: u64,
        attrs: u64,
        /// Blocks may be used (allowed by the caller and the memory type).
        blocks: bool,
    },
    /// Invalid descriptors with attribute bits `attrs` (the annotation).
    Invalid { attrs: u64 },
}

impl Write {
    /// Output address (for `Invalid`: the IPA itself, which keeps
    /// aarch64-paging's address arithmetic in range) written for `ipa'`.
    fn pa_at(&self, at: u64) -> u64 {
        match *self {
            Write::Map { ipa, pa, .. } => pa + (at - ipa),
            Write::Invalid { .. } => at,
        }
    }

    fn attrs(&self) -> u64 {
        match *self {
            Write::Map { attrs, .. } | Write::Invalid { attrs } => attrs,
        }
    }

    /// Whether aarch64-paging's `map_range` writes one descriptor at `level`
    /// (< 3) for a chunk covering all of the descriptor starting at `at`,
    /// rather than a table.
    fn block_fits(&self, level: u8, at: u64) -> bool {
        level > 0
            && match *self {
                Write::Map { blocks, .. } => {
                    blocks && self.pa_at(at).is_multiple_of(granule(level))
                }
                Write::Invalid { .. } => true,
            }
    }

    /// Whether the unit `u` overlapping the range from `at` already holds
    /// exactly what this write would put there.
    fn holds(&self, u: &Unit, at: u64) -> bool {
        match *self {
            Write::Map { attrs: a, .. } => {
                is_valid(u.desc)
                    && attrs(u.desc) == a
                    && (u.desc & OA_MASK) + (at - u.start) == self.pa_at(at)
            }
            Write::Invalid { attrs: a } => u.desc == a,
        }
    }

    fn constraints(&self) -> Constraints {
        match *self {
            Write::Map { blocks: false, .. } => {
                Constraints::NO_BLOCK_MAPPINGS | Constraints::NO_CONTIGUOUS_HINT
            }
            _ => Constraints::NO_CONTIGUOUS_HINT,
        }
    }

    /// Table pages `map_range` allocates to write `[a, b)`, which lies
    /// inside one non-table descriptor at `level` that it replaces
    /// (splitting it if needed). Independent of the descriptor's content:
    /// a split copies the descriptor into a fresh table whose entries are
    /// again non-table descriptors.
    fn tables_for(&self, level: u8, a: u64, b: u64) -> usize {
        if level == LEAF_LEVEL {
            return 0;
        }
        let gran = granule(level);
        if a.is_multiple_of(gran) && b - a == gran && self.block_fits(level, a) {
            return 0;
        }
        // One new table at level + 1, then its entries overlapping [a, b).
        let child = granule(level + 1);
        let mut n = 1;
        let mut cur = a;
        if !cur.is_multiple_of(child) {
            let end = (cur - cur % child + child).min(b);
            n += self.tables_for(level + 1, cur, end);
            cur = end;
        }
        let full_end = b - b % child;
        if full_end > cur {
            // Entirely covered children all get the same treatment: their
            // output addresses have the same alignment.
            let count = ((full_end - cur) / child) as usize;
            n += count * self.tables_for(level + 1, cur, cur + child);
            cur = full_end;
        }
        if cur < b {
            n += self.tables_for(level + 1, cur, b);
        }
        n
    }
}

/// One page of a (possibly concatenated) root, as found by
/// [`Stage2::root_for`].
#[derive(Clone, Copy, Debug)]
struct RootPage {
    /// Index of the page (of its `RootTable`).
    k: usize,
    /// The IPA span it translates.
    base: u64,
    end: u64,
    /// Physical address of the page.
    table_pa: u64,
}

/// The descriptor translating an address, as found by [`Stage2::unit_at`].
#[derive(Clone, Copy, Debug)]
struct Unit {
    level: u8,
    /// Span of the descriptor.
    start: u64,
    end: u64,
    desc: u64,
    /// `desc` is a table whose span lies inside the searched range.
    table: bool,
    /// The table page holding `desc`.
    table_pa: u64,
}

/// A valid block that straddles the range and was broken: its mapping
/// outside the range is re-created before the range is written.
#[derive(Clone, Copy)]
struct Straddle {
    start: u64,
    end: u64,
    oa: u64,
    attrs: u64,
}

/// TLB invalidations collected while writing, issued in one go. Past a few
/// entries a whole-VMID invalidation is cheaper and covers them all.
struct TlbBatch {
    entries: [(u64, u8); Self::CAPACITY],
    len: usize,
    whole_vmid: bool,
}

impl TlbBatch {
    const CAPACITY: usize = 8;

    const fn new() -> Self {
        Self {
            entries: [(0, 0); Self::CAPACITY],
            len: 0,
            whole_vmid: false,
        }
    }

    fn add(&mut self, ipa: u64, level: u8) {
        if self.whole_vmid {
            return;
        }
        match self.entries.get_mut(self.len) {
            Some(slot) => {
                *slot = (ipa, level);
                self.len += 1;
            }
            None => self.whole_vmid = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && !self.whole_vmid
    }

    /// Issue the invalidations (no barriers).
    fn issue(&mut self, vmid: u16, mnt: &mut dyn Maintenance) {
        if self.whole_vmid {
            mnt.tlbi_vmid(vmid);
        } else {
            for &(ipa, level) in &self.entries[..self.len] {
                mnt.tlbi_ipa(vmid, ipa, level);
            }
        }
        *self = Self::new();
    }
}

impl<P: PhysMem> Stage2<P> {
    /// New empty table for an input address space of `ipa_bits` on a CPU
    /// whose physical address size (PAMax) is `pa_bits`; the start level and
    /// root concatenation are [`stage2_root_geometry`]`(ipa_bits, pa_bits)`.
    /// `ipa_bits` is clamped into 32..=48, and to at most 43 if
    /// `pa_bits < 44` (see [`Stage2::ipa_bits`]).
    ///
    /// `root_pa`: `geometry.root_pages` physically contiguous pages,
    /// aligned to [`RootGeometry::root_align`], taken over by the table
    /// (zeroed here). Panics if `root_pa` is not so aligned. `fwb`: which
    /// MemAttr encoding to use (HCR_EL2.FWB). `vmid`: for TLB maintenance.
    pub fn new(phys: P, root_pa: u64, ipa_bits: u32, pa_bits: u32, fwb: bool, vmid: u16) -> Self {
        let geometry = stage2_root_geometry(ipa_bits, pa_bits);
        let ipa_bits = effective_ipa_bits(ipa_bits, pa_bits);
        let root_level = geometry.start_level;
        let root_pa = root_pa & !(PAGE_SIZE - 1);
        assert!(
            root_pa.is_multiple_of(geometry.root_align()),
            "stage-2 root {root_pa:#x} not aligned for {geometry:?}"
        );
        // RootTable::new allocates (and we zero) its root from the pool,
        // whose head is then the root page; every root after the first
        // allocates from the stage-2's pool, lent to it.
        let new_root = |page: u64, first: Option<&Root<P>>| {
            let translation = PoolTranslation::new(phys.clone());
            if let Some(first) = first {
                first.translation().hand_over(&translation);
            }
            translation.pool_add(page);
            let root = RootTable::new(translation, usize::from(root_level), Stage2Regime);
            debug_assert_eq!(root.to_physical().0 as u64, page);
            if let Some(first) = first {
                root.translation().hand_over(first.translation());
            }
            root
        };
        let first = new_root(root_pa, None);
        let mut roots = [const { None }; MAX_ROOT_PAGES];
        for (k, slot) in roots
            .iter_mut()
            .enumerate()
            .take(geometry.root_pages)
            .skip(1)
        {
            *slot = Some(new_root(root_pa + k as u64 * PAGE_SIZE, Some(&first)));
        }
        roots[0] = Some(first);
        Self {
            roots,
            geometry,
            root_pa,
            root_level,
            root_span: granule(root_level) * 512,
            ipa_bits,
            fwb,
            vmid,
            writes: 0,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            last_lookup: Cell::new(None),
        }
    }

    /// Which table this is, and how many times its descriptors were
    /// written through its methods: equal generations are the same table
    /// with the same descriptors, so a checker may keep what it read of
    /// it. The count goes up before every write (`put`, the one-page
    /// update), whatever is written; a write to a table page that
    /// bypasses this type (a raw memory write) does not count.
    pub fn generation(&self) -> (u64, u64) {
        (self.id, self.writes)
    }

    /// Physical address of the (first page of the) root table (for
    /// VTTBR_EL2.BADDR).
    pub fn root_pa(&self) -> u64 {
        self.root_pa
    }

    /// Initial lookup level (for VTCR_EL2.SL0).
    pub fn root_level(&self) -> u8 {
        self.root_level
    }

    /// Start level and number of concatenated root pages.
    pub fn geometry(&self) -> RootGeometry {
        self.geometry
    }

    /// The `RootTable` of root page `k`.
    fn root(&self, k: usize) -> &Root<P> {
        match self.roots.get(k) {
            Some(Some(root)) => root,
            _ => panic!("no root page {k}"),
        }
    }

    /// The root page translating `at` (inside the table).
    fn root_for(&self, at: u64) -> RootPage {
        let k = (at / self.root_span) as usize;
        debug_assert!(k < self.geometry.root_pages, "{at:#x} outside the roots");
        let base = k as u64 * self.root_span;
        RootPage {
            k,
            base,
            end: base + self.root_span,
            table_pa: self.root_pa + k as u64 * PAGE_SIZE,
        }
    }

    /// The VMID used for TLB maintenance.
    pub fn vmid(&self) -> u16 {
        self.vmid
    }

    /// Size of the input address space (for VTCR_EL2.T0SZ).
    pub fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }

    /// Whether leaves use the FWB MemAttr encodings.
    pub fn fwb(&self) -> bool {
        self.fwb
    }

    fn pool(&self) -> &PoolTranslation<P> {
        self.root(0).translation()
    }

    /// Give a page to this table's pool (for future table pages). The pool
    /// is an intrusive free list (next pointer stored in the free page
    /// itself): no metadata outside the pages. `pa` must be page aligned
    /// (an unaligned address is ignored).
    pub fn pool_add(&mut self, pa: u64) {
        debug_assert!(pa.is_multiple_of(PAGE_SIZE), "unaligned pool page {pa:#x}");
        if pa.is_multiple_of(PAGE_SIZE) {
            self.pool().pool_add(pa);
        }
    }

    /// Pages in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool().pool_len()
    }

    /// Take a page out of the pool (used by the core for other per-VM
    /// metadata, e.g. vCPU contexts). Zeroed. The page is no longer owned by
    /// this table ([`Stage2::destroy`] does not report it).
    pub fn pool_take(&mut self) -> Option<u64> {
        self.pool().pool_take()
    }

    /// Number of table pages currently in use (root included).
    pub fn table_pages(&self) -> usize {
        self.pool().table_pages()
    }

    /// `[ipa, end)` for a well-formed range inside the table.
    fn range(&self, ipa: u64, nr_pages: u64) -> Result<u64, Error> {
        let end = nr_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| ipa.checked_add(len))
            .ok_or(Error::Range)?;
        if nr_pages == 0 || !ipa.is_multiple_of(PAGE_SIZE) || end > 1 << self.ipa_bits {
            return Err(Error::Range);
        }
        Ok(end)
    }

    /// The descriptor translating `at`: descends through tables, except
    /// (with `table_units`) a table whose span lies inside `[lo, hi)`.
    fn unit_at(&self, at: u64, lo: u64, hi: u64, table_units: bool) -> Unit {
        let pool = self.pool();
        let mut level = self.root_level;
        let mut table_pa = self.root_for(at).table_pa;
        loop {
            let gran = granule(level);
            let start = at & !(gran - 1);
            let end = start + gran;
            let desc = pool.read_entry(table_pa, index(at, level));
            let table = is_table(desc, level);
            if !table || (table_units && start >= lo && end <= hi) {
                return Unit {
                    level,
                    start,
                    end,
                    desc,
                    table,
                    table_pa,
                };
            }
            table_pa = desc & OA_MASK;
            level += 1;
        }
    }

    /// Table pages `w` allocates over `[a, b)`.
    fn count(&self, w: &Write, a: u64, b: u64, skip_held: bool) -> usize {
        let mut n = 0;
        let mut cur = a;
        while cur < b {
            let root = self.root_for(cur);
            let end = b.min(root.end);
            n += self.count_in(w, self.root_level, root.table_pa, cur, end, skip_held);
            cur = end;
        }
        n
    }

    fn count_in(
        &self,
        w: &Write,
        level: u8,
        table_pa: u64,
        a: u64,
        b: u64,
        skip_held: bool,
    ) -> usize {
        let gran = granule(level);
        let mut n = 0;
        let mut cur = a;
        while cur < b {
            let start = cur & !(gran - 1);
            let end = (start + gran).min(b);
            let desc = self.pool().read_entry(table_pa, index(cur, level));
            if is_table(desc, level) {
                // Existing tables are kept (or, fully covered by an unmap,
                // detached); only their non-table entries may need tables,
                // and entries of a last-level table never do.
                let detached =
                    matches!(w, Write::Invalid { .. }) && start == cur && end == start + gran;
                if !detached && level + 1 < LEAF_LEVEL {
                    n += self.count_in(w, level + 1, desc & OA_MASK, cur, end, skip_held);
                }
            } else {
                let u = Unit {
                    level,
                    start,
                    end: start + gran,
                    desc,
                    table: false,
                    table_pa,
                };
                if !(skip_held && w.holds(&u, cur)) {
                    n += w.tables_for(level, cur, end);
                }
            }
            cur = end;
        }
        n
    }

    fn check_pool(&self, w: &Write, a: u64, b: u64) -> Result<(), Error> {
        self.room(self.count(w, a, b, true))
    }

    /// Whether the pool holds `needed` table pages: `Ok`, or
    /// [`Error::NoMem`] with both counts. For a caller that makes several
    /// updates and counts their tables itself before writing any.
    pub fn room(&self, needed: usize) -> Result<(), Error> {
        let available = self.pool_len();
        if needed > available {
            return Err(Error::NoMem { needed, available });
        }
        Ok(())
    }

    /// Whether the pool holds the table pages an update of the range needs,
    /// as [`Stage2::tables_needed`] counts them: `Ok`, or [`Error::NoMem`].
    pub fn room_for(&self, ipa: u64, nr_pages: u64, allow_blocks: bool) -> Result<(), Error> {
        self.room(self.tables_needed(ipa, nr_pages, allow_blocks))
    }

    /// Whether the page with number `page` (its IPA over 4 KiB) lies inside
    /// the input address space. Any `u64` may be asked.
    pub fn covers_page(&self, page: u64) -> bool {
        page < 1 << (self.ipa_bits - 12)
    }

    /// Number of new table pages that map(..)/set_invalid(..) on this range
    /// would allocate right now, by walking the existing tables (block
    /// splits for break-before-make included). 0 for a malformed range.
    ///
    /// The count assumes the output address is congruent to the IPA modulo
    /// the block sizes (as for an identity map) and that no part of the
    /// range already holds the requested content. Hence it is exact for
    /// `set_invalid` with `allow_blocks = true`, and for `map` with
    /// `pa == ipa` (mod 1 GiB) of a cacheable memory type; it is an upper
    /// bound for `set_invalid` and, with `allow_blocks = false`, for `map`
    /// with any `pa` and leaf. [`Stage2::map_tables_needed`] and
    /// [`Stage2::set_invalid_tables_needed`] give the exact count of one
    /// particular update.
    pub fn tables_needed(&self, ipa: u64, nr_pages: u64, allow_blocks: bool) -> usize {
        let Ok(end) = self.range(ipa, nr_pages) else {
            return 0;
        };
        let w = Write::Map {
            ipa,
            pa: ipa,
            attrs: 0,
            blocks: allow_blocks,
        };
        self.count(&w, ipa, end, false)
    }

    /// Exactly the table pages `map(ipa, pa, nr_pages, leaf, allow_blocks, ..)`
    /// would take from the pool now (0 for a malformed request).
    pub fn map_tables_needed(
        &self,
        ipa: u64,
        pa: u64,
        nr_pages: u64,
        leaf: Leaf,
        allow_blocks: bool,
    ) -> usize {
        match self.map_write(ipa, pa, nr_pages, leaf, allow_blocks) {
            Ok((w, end)) => self.count(&w, ipa, end, true),
            Err(_) => 0,
        }
    }

    /// Exactly the table pages `set_invalid(ipa, nr_pages, annotation, ..)`
    /// would take from the pool now (0 for a malformed request).
    pub fn set_invalid_tables_needed(&self, ipa: u64, nr_pages: u64, annotation: u16) -> usize {
        match self.invalid_write(ipa, nr_pages, annotation) {
            Ok((w, end)) => self.count(&w, ipa, end, true),
            Err(_) => 0,
        }
    }

    fn map_write(
        &self,
        ipa: u64,
        pa: u64,
        nr_pages: u64,
        leaf: Leaf,
        allow_blocks: bool,
    ) -> Result<(Write, u64), Error> {
        let end = self.range(ipa, nr_pages)?;
        let pa_end = pa.checked_add(end - ipa).ok_or(Error::Range)?;
        if !pa.is_multiple_of(PAGE_SIZE) || pa_end > OA_LIMIT {
            return Err(Error::Range);
        }
        let w = Write::Map {
            ipa,
            pa,
            attrs: leaf_attrs(leaf, self.fwb),
            // D6: non-cacheable mappings are page-granular.
            blocks: allow_blocks && leaf.memtype.is_cacheable(),
        };
        Ok((w, end))
    }

    fn invalid_write(
        &self,
        ipa: u64,
        nr_pages: u64,
        annotation: u16,
    ) -> Result<(Write, u64), Error> {
        let end = self.range(ipa, nr_pages)?;
        if annotation > MAX_ANNOTATION {
            return Err(Error::Annotation);
        }
        Ok((
            Write::Invalid {
                attrs: invalid_attrs(annotation),
            },
            end,
        ))
    }

    /// aarch64-paging's `map_range` on `[a, b)`. Callers keep it from
    /// failing: the range is inside the table, and attributes never carry
    /// the table/page bit. They also keep it away from its "block already
    /// maps this" shortcut for a non-table entry whose attributes equal the
    /// new ones, which computes `pa - (offset of the chunk in the block)` and
    /// would underflow (a panic with overflow checks) for a `pa` below that
    /// offset: unmaps pass the IPA as `pa`, and a map never writes over a
    /// valid entry with equal attributes (such units hold the content
    /// already and are skipped, or map another address and were broken).
    ///
    /// `[a, b)` is split at the root pages' boundaries; each part goes to
    /// its root's `RootTable` relative to the root's base. An empty `[a, b)`
    /// (`b <= a`) writes nothing.
    fn put(&mut self, a: u64, b: u64, pa: u64, attrs: u64, constraints: Constraints) {
        self.writes = self.writes.wrapping_add(1);
        let flags = Stage2Attributes::from_bits_retain(attrs as usize);
        let mut cur = a;
        while cur < b {
            let RootPage { k, base, end, .. } = self.root_for(cur);
            let end = b.min(end);
            let region = MemoryRegion::new((cur - base) as usize, (end - base) as usize);
            let oa = PhysicalAddress((pa + (cur - a)) as usize);
            let r = if k == 0 {
                match &mut self.roots[0] {
                    Some(root) => root.map_range(&region, oa, flags, constraints),
                    None => panic!("no root page 0"),
                }
            } else {
                // Lend the pool to root k for the call.
                let (first, rest) = self.roots.split_at_mut(1);
                let (Some(first), Some(Some(root))) = (&first[0], rest.get_mut(k - 1)) else {
                    panic!("no root page {k}");
                };
                first.translation().hand_over(root.translation());
                let r = root.map_range(&region, oa, flags, constraints);
                root.translation().hand_over(first.translation());
                r
            };
            debug_assert!(r.is_ok(), "map_range {cur:#x}..{end:#x}: {r:?}");
            cur = end;
        }
    }

    /// Make the valid leaf `u` invalid (the "break" of break-before-make).
    fn break_leaf(&mut self, u: &Unit, tlb: &mut TlbBatch) {
        self.put(u.start, u.end, u.start, 0, Constraints::NO_CONTIGUOUS_HINT);
        tlb.add(u.start, u.level);
    }

    /// Map [ipa, ipa + nr_pages*4K) to [pa, ...) with `leaf`. Blocks (2 MiB
    /// level 2, 1 GiB level 1) are used where the IPA and PA are aligned and
    /// allow_blocks is true; never for NormalNc/Device (D6). First checks the
    /// pool holds the table pages needed, else Error::NoMem and NOTHING is
    /// written. Break-before-make as described in the module docs; pages
    /// already mapped exactly so are left alone (an existing block that maps
    /// part of the range exactly as requested stays a block).
    pub fn map(
        &mut self,
        ipa: u64,
        pa: u64,
        nr_pages: u64,
        leaf: Leaf,
        allow_blocks: bool,
        mnt: &mut dyn Maintenance,
    ) -> Result<(), Error> {
        let (w, end) = self.map_write(ipa, pa, nr_pages, leaf, allow_blocks)?;
        if nr_pages == 1 && self.write_one_page(&w, ipa, mnt) {
            return Ok(());
        }
        self.check_pool(&w, ipa, end)?;
        let new = w.attrs();

        // Break: valid leaves that cannot change in place.
        let mut tlb = TlbBatch::new();
        let mut straddles = [None; 2];
        let mut cur = ipa;
        while cur < end {
            let u = self.unit_at(cur, ipa, end, false);
            let b = u.end.min(end);
            if is_valid(u.desc) && !w.holds(&u, cur) {
                let whole = cur == u.start && b == u.end;
                let in_place = whole
                    && (u.level == LEAF_LEVEL || w.block_fits(u.level, cur))
                    && u.desc & OA_MASK == w.pa_at(cur)
                    && bbm_safe(attrs(u.desc), new);
                if !in_place {
                    self.break_leaf(&u, &mut tlb);
                    if !whole {
                        straddles[usize::from(cur != ipa)] = Some(Straddle {
                            start: u.start,
                            end: u.end,
                            oa: u.desc & OA_MASK,
                            attrs: attrs(u.desc),
                        });
                    }
                }
            }
            cur = b;
        }
        self.complete(&mut tlb, false, mnt);

        // Make.
        let rebuilt = self.rebuild(&straddles, ipa, end);
        let wrote = self.write_units(&w, ipa, end, &mut tlb);
        if rebuilt || wrote {
            self.complete(&mut tlb, true, mnt);
        }
        Ok(())
    }

    /// Make [ipa, ..+nr) invalid, storing `annotation` (0 = plain unmapped)
    /// in every covered invalid descriptor; a table whose whole span is in
    /// the range is replaced by one invalid descriptor carrying the
    /// annotation and its pages return to the pool after the TLB
    /// maintenance. Valid entries removed get dsb+TLBI. Blocks straddling
    /// the range are split (BBM) so pages outside the range keep their
    /// mapping/annotation. Same NoMem contract as [`Stage2::map`].
    pub fn set_invalid(
        &mut self,
        ipa: u64,
        nr_pages: u64,
        annotation: u16,
        mnt: &mut dyn Maintenance,
    ) -> Result<(), Error> {
        let (w, end) = self.invalid_write(ipa, nr_pages, annotation)?;
        if nr_pages == 1 && self.write_one_page(&w, ipa, mnt) {
            return Ok(());
        }
        self.check_pool(&w, ipa, end)?;

        // Break: only a valid block sticking out of the range needs it;
        // everything inside is simply overwritten.
        let mut tlb = TlbBatch::new();
        let mut straddles = [None; 2];
        for (slot, at) in [ipa, end - PAGE_SIZE].into_iter().enumerate() {
            let u = self.unit_at(at, ipa, end, false);
            if is_valid(u.desc) && (u.start < ipa || u.end > end) {
                self.break_leaf(&u, &mut tlb);
                straddles[slot] = Some(Straddle {
                    start: u.start,
                    end: u.end,
                    oa: u.desc & OA_MASK,
                    attrs: attrs(u.desc),
                });
            }
        }
        self.complete(&mut tlb, false, mnt);

        let rebuilt = self.rebuild(&straddles, ipa, end);
        let wrote = self.write_units(&w, ipa, end, &mut tlb);
        if rebuilt || wrote {
            self.complete(&mut tlb, true, mnt);
        }
        Ok(())
    }

    /// The one-page update of `w` at `ipa` when a last-level table already
    /// holds the page's descriptor: no table page is needed (so no count),
    /// no block straddles the page, and the generic walk, `map_range` and
    /// their range iterators are skipped. The descriptor, the barriers and
    /// the invalidations are exactly those of the generic path: a valid
    /// page whose output address or memory attributes change is broken
    /// first (invalid, `dsb`, `tlbi_ipa`, `dsb`), a valid page removed or
    /// whose permissions change is invalidated after the write, and a
    /// write over an invalid entry needs only the `dsb` that publishes it.
    /// Returns false, having done nothing, when the page sits in a block or
    /// an invalid descriptor above the last level.
    fn write_one_page(&mut self, w: &Write, ipa: u64, mnt: &mut dyn Maintenance) -> bool {
        // The lookup just before (the core's state check) found where the
        // descriptor lives; no descriptor was written since, so the tables
        // above it are the same. The descriptor itself is read again.
        let u = match self.last_lookup.take() {
            Some(l) if l.page == ipa && l.writes == self.writes => Unit {
                desc: self
                    .pool()
                    .read_entry(l.unit.table_pa, index(ipa, l.unit.level)),
                ..l.unit
            },
            _ => self.unit_at(ipa, 0, 0, false),
        };
        if u.level != LEAF_LEVEL {
            return false;
        }
        if w.holds(&u, ipa) {
            return true;
        }
        let idx = index(ipa, LEAF_LEVEL);
        let new = match *w {
            Write::Map { .. } => w.pa_at(ipa) | w.attrs() | TABLE_OR_PAGE,
            Write::Invalid { attrs } => attrs,
        };
        self.writes = self.writes.wrapping_add(1);
        // The generic path's `complete` for one TLBI by IPA (no table was
        // detached, so no page waits for it).
        let vmid = self.vmid;
        let invalidate = |mnt: &mut dyn Maintenance| {
            mnt.dsb();
            mnt.tlbi_ipa(vmid, u.start, LEAF_LEVEL);
            mnt.dsb();
        };
        let mut tlbi_after = false;
        if is_valid(u.desc) {
            let unmap = matches!(w, Write::Invalid { .. });
            let in_place =
                unmap || (u.desc & OA_MASK == w.pa_at(ipa) && bbm_safe(attrs(u.desc), w.attrs()));
            if !in_place {
                // Break: the generic path's `break_leaf` and `complete`.
                self.pool().write_entry(u.table_pa, idx, 0);
                invalidate(mnt);
            } else {
                tlbi_after = unmap || (u.desc ^ w.attrs()) & PERM_BITS != 0;
            }
        }
        self.pool().write_entry(u.table_pa, idx, new);
        if tlbi_after {
            invalidate(mnt);
        } else {
            mnt.dsb();
        }
        true
    }

    /// Re-create, after their break, the parts of straddling blocks outside
    /// `[ipa, end)` with their old attributes one level down. Returns
    /// whether there was any.
    fn rebuild(&mut self, straddles: &[Option<Straddle>; 2], ipa: u64, end: u64) -> bool {
        let mut any = false;
        for s in straddles.iter().flatten() {
            any = true;
            // The part before the range and the part after it; `put`
            // writes nothing for a part that is empty (`s.start` is below
            // `end`: the block holds the range's first or last page).
            self.put(s.start, ipa, s.oa, s.attrs, Constraints::NO_CONTIGUOUS_HINT);
            self.put(
                end,
                s.end,
                s.oa + (end - s.start),
                s.attrs,
                Constraints::NO_CONTIGUOUS_HINT,
            );
        }
        any
    }

    /// Write `w` over `[ipa, end)` after the breaks: runs of units that
    /// change go to `map_range` together; fully covered tables are detached
    /// (unmaps only). Valid leaves that are overwritten here (permission
    /// changes, removals) are added to `tlb`. Returns whether anything was
    /// written.
    fn write_units(&mut self, w: &Write, ipa: u64, end: u64, tlb: &mut TlbBatch) -> bool {
        let unmap = matches!(w, Write::Invalid { .. });
        let mut run: Option<u64> = None;
        let mut wrote = false;
        let mut cur = ipa;
        while cur < end {
            let u = self.unit_at(cur, ipa, end, unmap);
            let b = u.end.min(end);
            if u.table {
                self.flush_run(w, &mut run, cur);
                // map_range replaces the table descriptor by an invalid one
                // and lets go of the hierarchy without touching it; park its
                // pages until the TLB maintenance below.
                self.put(u.start, u.end, u.start, w.attrs(), w.constraints());
                self.pool().defer_free_tree(u.desc & OA_MASK, u.level + 1);
                tlb.whole_vmid = true;
                wrote = true;
            } else if w.holds(&u, cur) {
                self.flush_run(w, &mut run, cur);
            } else {
                if is_valid(u.desc) {
                    // Removal, or (map) an in-place change: the breaks
                    // handled everything else.
                    debug_assert!(unmap || (u.desc & OA_MASK) + (cur - u.start) == w.pa_at(cur));
                    if unmap || (u.desc ^ w.attrs()) & PERM_BITS != 0 {
                        tlb.add(u.start, u.level);
                    }
                }
                run.get_or_insert(cur);
                wrote = true;
            }
            cur = b;
        }
        self.flush_run(w, &mut run, end);
        wrote
    }

    fn flush_run(&mut self, w: &Write, run: &mut Option<u64>, end: u64) {
        if let Some(start) = run.take() {
            self.put(start, end, w.pa_at(start), w.attrs(), w.constraints());
        }
    }

    /// Barriers and TLB maintenance after a batch of writes; then pages of
    /// detached tables may be reused. With `always_dsb`, a DSB is issued even
    /// without invalidations (new entries become visible to walkers).
    fn complete(&mut self, tlb: &mut TlbBatch, always_dsb: bool, mnt: &mut dyn Maintenance) {
        if tlb.is_empty() {
            if always_dsb {
                mnt.dsb();
            }
            return;
        }
        mnt.dsb();
        tlb.issue(self.vmid, mnt);
        mnt.dsb();
        self.pool().release_pending();
    }

    /// The entry translating one page (the page containing `ipa`). Outside
    /// the input address space: `Invalid { annotation: 0 }`.
    pub fn lookup(&self, ipa: u64) -> Entry {
        if ipa >> self.ipa_bits != 0 {
            return Entry::Invalid { annotation: 0 };
        }
        let page = ipa & !(PAGE_SIZE - 1);
        let u = self.unit_at(page, 0, 0, false);
        decode_entry(u.desc, u.level, page, self.fwb)
    }

    /// [`Stage2::lookup`] of a page about to be updated on its own: where
    /// its descriptor lives is remembered, and a one-page `map` or
    /// `set_invalid` of the page that follows with no write in between
    /// reuses it instead of walking the tables again.
    pub fn lookup_for_update(&self, ipa: u64) -> Entry {
        if ipa >> self.ipa_bits != 0 {
            return Entry::Invalid { annotation: 0 };
        }
        let page = ipa & !(PAGE_SIZE - 1);
        let u = self.unit_at(page, 0, 0, false);
        self.last_lookup.set(Some(LastLookup {
            page,
            writes: self.writes,
            unit: u,
        }));
        decode_entry(u.desc, u.level, page, self.fwb)
    }

    /// The raw non-table descriptor translating `ipa` and its level (for
    /// tests and invariant checkers). Outside the input address space:
    /// `(0, root level)`.
    pub fn descriptor(&self, ipa: u64) -> (u64, u8) {
        if ipa >> self.ipa_bits != 0 {
            return (0, self.root_level);
        }
        let u = self.unit_at(ipa & !(PAGE_SIZE - 1), 0, 0, false);
        (u.desc, u.level)
    }

    /// Physical address of the descriptor that translates `ipa` (the leaf,
    /// or the invalid entry at whatever level the walk stops), for tests
    /// that corrupt a table on purpose to show a checker notices. Outside
    /// the input address space: `None`.
    pub fn descriptor_pa(&self, ipa: u64) -> Option<u64> {
        if ipa >> self.ipa_bits != 0 {
            return None;
        }
        let pool = self.pool();
        let mut level = self.root_level;
        let mut table_pa = self.root_for(ipa).table_pa;
        loop {
            let desc = pool.read_entry(table_pa, index(ipa, level));
            if !is_table(desc, level) {
                return Some(table_pa + 8 * index(ipa, level) as u64);
            }
            table_pa = desc & OA_MASK;
            level += 1;
        }
    }

    /// Visit the range in maximal runs: f(ipa_of_run_start,
    /// nr_pages_in_run, entry_of_first_page). A run is one descriptor's
    /// overlap with the range (one block, one page, or one invalid
    /// descriptor at any level); for Mapped runs the entry's pa is the first
    /// page's pa. Returns early if f returns false.
    pub fn walk(
        &self,
        ipa: u64,
        nr_pages: u64,
        f: &mut dyn FnMut(u64, u64, Entry) -> bool,
    ) -> Result<(), Error> {
        let end = self.range(ipa, nr_pages)?;
        let fwb = self.fwb;
        let mut cur = ipa;
        while cur < end {
            let root = self.root_for(cur);
            let (k, base) = (root.k, root.base);
            let part_end = end.min(root.end);
            // Root k sees addresses relative to its base.
            let region = MemoryRegion::new((cur - base) as usize, (part_end - base) as usize);
            // An error from walk_range can only be our early stop: the region
            // was checked above.
            let r = self.root(k).walk_range(&region, &mut |chunk, desc, level| {
                let bits = (desc.output_address().0 | desc.flags().bits()) as u64;
                let start = base + chunk.start().0 as u64;
                let pages = chunk.len() as u64 / PAGE_SIZE;
                if f(start, pages, decode_entry(bits, level as u8, start, fwb)) {
                    Ok(())
                } else {
                    Err(())
                }
            });
            if r.is_err() {
                break;
            }
            cur = part_end;
        }
        Ok(())
    }

    /// A walk for checkers that read whole address spaces after every step:
    /// like [`Stage2::walk`], in the same order and with the same entry for
    /// every page, but reading the descriptors itself rather than through
    /// aarch64-paging's visitor, and in longer runs: consecutive descriptors
    /// of one table that map consecutive output addresses with the same
    /// attributes, or are invalid with the same annotation, make one run.
    /// Invalid descriptors without an annotation are left out when
    /// `skip_empty`.
    pub fn walk_raw(
        &self,
        ipa: u64,
        nr_pages: u64,
        skip_empty: bool,
        f: &mut dyn FnMut(u64, u64, Entry) -> bool,
    ) -> Result<(), Error> {
        let end = self.range(ipa, nr_pages)?;
        let mut cur = ipa;
        while cur < end {
            let root = self.root_for(cur);
            let part_end = end.min(root.end);
            let w = RawWalk {
                skip_empty,
                fwb: self.fwb,
            };
            if !self.walk_raw_in(&w, self.root_level, root.table_pa, cur, part_end, f) {
                break;
            }
            cur = part_end;
        }
        Ok(())
    }

    fn walk_raw_in(
        &self,
        w: &RawWalk,
        level: u8,
        table_pa: u64,
        a: u64,
        b: u64,
        f: &mut dyn FnMut(u64, u64, Entry) -> bool,
    ) -> bool {
        let table = self.pool().table(table_pa);
        let gran = granule(level);
        // The run being built: first address, end, first entry, and the
        // descriptor that would continue it.
        let mut run: Option<(u64, u64, Entry, u64)> = None;
        let flush =
            |run: &mut Option<(u64, u64, Entry, u64)>,
             f: &mut dyn FnMut(u64, u64, Entry) -> bool| match run.take() {
                Some((start, end, e, _)) => f(start, (end - start) / PAGE_SIZE, e),
                None => true,
            };
        let mut cur = a;
        while cur < b {
            if w.skip_empty && table[index(cur, level)].load(Ordering::Acquire) == 0 {
                // Invalid, without an annotation: ends a run, reports
                // nothing. Skip to the next descriptor that is not empty.
                if !flush(&mut run, f) {
                    return false;
                }
                let first = index(cur, level);
                let last = index(b - 1, level);
                let Some(k) = table[first..=last]
                    .iter()
                    .position(|d| d.load(Ordering::Acquire) != 0)
                else {
                    return true;
                };
                if k > 0 {
                    cur = ((cur & !(gran - 1)) + k as u64 * gran).min(b);
                    continue;
                }
            }
            let end = ((cur & !(gran - 1)) + gran).min(b);
            let desc = table[index(cur, level)].load(Ordering::Acquire);
            let next = if is_valid(desc) { desc + gran } else { desc };
            match &mut run {
                Some((_, run_end, _, want)) if *run_end == cur && *want == desc => {
                    *run_end = end;
                    *want = next;
                }
                _ => {
                    if !flush(&mut run, f) {
                        return false;
                    }
                    if is_table(desc, level) {
                        if !self.walk_raw_in(w, level + 1, desc & OA_MASK, cur, end, f) {
                            return false;
                        }
                    } else {
                        let e = decode_entry(desc, level, cur, w.fwb);
                        if !(w.skip_empty && e == (Entry::Invalid { annotation: 0 })) {
                            run = Some((cur, end, e, next));
                        }
                    }
                }
            }
            cur = end;
        }
        flush(&mut run, f)
    }

    /// Tear down: free every table page (all root pages included) and every
    /// pool page, calling `f(pa)` once for each page this Stage2 owns
    /// (tables + pool; not pages handed out by [`Stage2::pool_take`]). `f`
    /// runs after the table is gone, so it may scrub or hand on each page at
    /// once. No TLB maintenance is issued: the caller invalidates the VMID.
    pub fn destroy(self, f: &mut dyn FnMut(u64)) {
        let pool = self.pool();
        let (root_pa, root_pages) = (self.root_pa, self.geometry.root_pages);
        pool.dismantle(root_pa, root_pages, self.root_level);
        let phys = pool.phys().clone();
        let list = pool.free_list();
        // Dropping the RootTables reads only the emptied roots.
        drop(self);
        drain_list(&phys, list, f);
        for k in 0..root_pages as u64 {
            f(root_pa + k * PAGE_SIZE);
        }
    }
}

/// Whether a live valid leaf may go from attributes `old` to `new` (same
/// output address) without break-before-make: only permissions and software
/// bits differ (aarch64-paging's rule for stage 2).
fn bbm_safe(old: u64, new: u64) -> bool {
    use aarch64_paging::descriptor::PagingAttributes;
    Stage2Attributes::is_bbm_safe(
        Stage2Attributes::from_bits_retain(old as usize),
        Stage2Attributes::from_bits_retain(new as usize),
    )
}
