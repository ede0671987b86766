//! The memory map: every physical page's class (shared/spec/RULES.md,
//! "Memory classes"), fixed at boot from the device tree, the boot manifest
//! and the hypervisor's own footprint.

use alloc::vec::Vec;

use crate::dt;
use crate::error::{Origin, PlatformError};
use crate::manifest::{pa_limit, Manifest, ManifestKind};
use crate::PAGE_SHIFT;

/// The class of a physical page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemClass {
    /// The `/memory` ranges handed to the host.
    Ram,
    /// Cacheable-capable device memory declared by the manifest.
    Coherent,
    /// Every other physical address.
    Mmio,
    /// The hypervisor's own memory.
    Hyp,
}

/// A contiguous run of pages of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First page frame number.
    pub base_pfn: u64,
    /// Number of pages, at least one.
    pub nr_pages: u64,
    /// The class of every page in the region.
    pub class: MemClass,
    /// MMIO only: guests may map the region NORMAL_NC as well as DEVICE.
    pub uncached_ok: bool,
    /// MMIO: declared by the manifest as assignable to guests. RAM and
    /// COHERENT: true. HYP: false.
    pub assignable: bool,
}

impl Region {
    /// One past the last page frame number.
    pub fn end_pfn(&self) -> u64 {
        self.base_pfn + self.nr_pages
    }

    /// Whether the core keeps per-page metadata (owner, state) for the region.
    pub fn is_tracked(&self) -> bool {
        match self.class {
            MemClass::Ram | MemClass::Coherent => true,
            MemClass::Mmio => self.assignable,
            MemClass::Hyp => false,
        }
    }

    fn contains(&self, pfn: u64) -> bool {
        self.base_pfn <= pfn && pfn < self.end_pfn()
    }
}

/// The board's physical memory map: sorted, non-overlapping regions over a
/// `pa_bits` physical address space. Pages in no region are undeclared MMIO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    regions: Vec<Region>,
    /// For each region, the dense index of its first page when tracked.
    dense_base: Vec<Option<u64>>,
    tracked_pages: u64,
    pa_bits: u32,
    /// The manifest's `withheld` ranges (pfn spans, sorted): MMIO the host
    /// may never map.
    withheld: Vec<Span>,
}

/// Half-open page frame interval `[start, end)`.
type Span = (u64, u64);

/// Sort and merge overlapping or touching spans.
fn union(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// `from` minus `cut`, both sorted and disjoint.
fn subtract(from: &[Span], cut: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    for &(mut start, end) in from {
        for &(cs, ce) in cut {
            if ce <= start || cs >= end {
                continue;
            }
            if cs > start {
                out.push((start, cs));
            }
            start = start.max(ce);
            if start >= end {
                break;
            }
        }
        if start < end {
            out.push((start, end));
        }
    }
    out
}

fn overlaps(a: Span, spans: &[Span]) -> bool {
    spans.iter().any(|&(s, e)| a.0 < e && s < a.1)
}

impl Platform {
    /// Build the memory map from the board's flattened device tree and the
    /// boot manifest (format: crate documentation).
    ///
    /// `hyp_reserved` are the physical ranges `(base, size)` in bytes that
    /// the hypervisor itself occupies (image, stacks, heap); they are rounded
    /// out to whole pages, empty ones are ignored, and they may overlap each
    /// other, RAM and the manifest's `hyp` lines (not its `coherent` or
    /// `mmio` lines).
    ///
    /// - RAM: the `/memory` ranges (rounded in to whole pages) minus HYP
    ///   minus COHERENT. Adjacent or overlapping memory ranges merge.
    /// - COHERENT: the manifest's `coherent` lines, inside `/memory` (carved
    ///   out of host RAM) or outside it.
    /// - HYP: `hyp_reserved` plus the manifest's `hyp` lines.
    /// - MMIO: declared `mmio`/`mmio-uc` lines (assignable; these may not
    ///   overlap `/memory`), and every other address (not assignable).
    ///
    /// `/reserved-memory` and the FDT memory reservation block are not
    /// consulted: such memory stays host RAM, and the host kernel honours
    /// those reservations itself. Memory the hypervisor must keep from the
    /// host is declared with `hyp` lines.
    pub fn new(
        fdt: &[u8],
        manifest: &str,
        hyp_reserved: &[(u64, u64)],
        pa_bits: u32,
    ) -> Result<Platform, PlatformError> {
        let pa_limit = pa_limit(pa_bits)?;
        let manifest = Manifest::parse(manifest, pa_bits)?;
        let page = 1u64 << PAGE_SHIFT;

        let mut memory = Vec::new();
        for (base, size) in dt::memory_ranges(fdt)? {
            let at = Origin::Memory { base };
            let end = base
                .checked_add(size)
                .filter(|&end| end <= pa_limit)
                .ok_or(PlatformError::OutsidePaSpace { at })?;
            let start = base.div_ceil(page);
            let end = end / page;
            if start < end {
                memory.push((start, end));
            }
        }
        if memory.is_empty() {
            return Err(PlatformError::NoMemoryNode);
        }
        let memory = union(memory);

        let mut hyp = Vec::new();
        for (index, &(base, size)) in hyp_reserved.iter().enumerate() {
            if size == 0 {
                continue;
            }
            let at = Origin::HypReserved { index };
            let end = base
                .checked_add(size)
                .and_then(|end| end.checked_next_multiple_of(page))
                .filter(|&end| end <= pa_limit)
                .ok_or(PlatformError::OutsidePaSpace { at })?;
            hyp.push((index, (base / page, end / page)));
        }

        let mut regions = Vec::new();
        let mut coherent = Vec::new();
        let mut withheld = Vec::new();
        for e in manifest.entries() {
            let span = (e.base_pfn(), e.end_pfn());
            let at = Origin::Manifest { line: e.line };
            let device = |uncached_ok| Region {
                base_pfn: span.0,
                nr_pages: span.1 - span.0,
                class: MemClass::Mmio,
                uncached_ok,
                assignable: true,
            };
            match e.kind {
                ManifestKind::Hyp => continue,
                ManifestKind::Withheld => {
                    if overlaps(span, &memory) {
                        return Err(PlatformError::Overlap { at });
                    }
                    withheld.push(span);
                    continue;
                }
                ManifestKind::Coherent => {
                    coherent.push(span);
                    regions.push(Region {
                        class: MemClass::Coherent,
                        ..device(false)
                    });
                }
                ManifestKind::Mmio | ManifestKind::MmioUncached => {
                    if overlaps(span, &memory) {
                        return Err(PlatformError::Overlap { at });
                    }
                    regions.push(device(e.kind == ManifestKind::MmioUncached));
                }
            }
            if let Some(&(index, _)) = hyp.iter().find(|(_, h)| overlaps(*h, &[span])) {
                return Err(PlatformError::Overlap {
                    at: Origin::HypReserved { index },
                });
            }
        }

        let hyp_lines = manifest
            .entries()
            .iter()
            .filter(|e| e.kind == ManifestKind::Hyp)
            .map(|e| (e.base_pfn(), e.end_pfn()));
        let hyp = union(
            hyp.into_iter()
                .map(|(_, span)| span)
                .chain(hyp_lines)
                .collect(),
        );
        let coherent = union(coherent);
        let ram = subtract(&subtract(&memory, &hyp), &coherent);
        if ram.is_empty() {
            return Err(PlatformError::NoHostRam);
        }
        let whole = |(start, end): Span, class| Region {
            base_pfn: start,
            nr_pages: end - start,
            class,
            uncached_ok: false,
            assignable: class == MemClass::Ram,
        };
        regions.extend(ram.into_iter().map(|s| whole(s, MemClass::Ram)));
        regions.extend(hyp.into_iter().map(|s| whole(s, MemClass::Hyp)));
        regions.sort_unstable_by_key(|r| r.base_pfn);
        let mut p = Self::from_regions(regions, pa_bits)?;
        p.withheld = union(withheld);
        Ok(p)
    }

    /// Build the memory map from an explicit region list, sorted by base,
    /// non-overlapping, non-empty, inside the `pa_bits` address space, with
    /// flags that agree with the class (see [`PlatformError::BadRegionFlags`]).
    pub fn from_regions(regions: Vec<Region>, pa_bits: u32) -> Result<Platform, PlatformError> {
        let pa_pages = pa_limit(pa_bits)? >> PAGE_SHIFT;
        let mut prev_end = 0;
        for (index, r) in regions.iter().enumerate() {
            let at = Origin::Region { index };
            if r.nr_pages == 0 {
                return Err(PlatformError::Empty { at });
            }
            match r.base_pfn.checked_add(r.nr_pages) {
                Some(end) if end <= pa_pages => {}
                _ => return Err(PlatformError::OutsidePaSpace { at }),
            }
            let flags_ok = match r.class {
                MemClass::Ram | MemClass::Coherent => r.assignable && !r.uncached_ok,
                MemClass::Hyp => !r.assignable && !r.uncached_ok,
                MemClass::Mmio => true,
            };
            if !flags_ok {
                return Err(PlatformError::BadRegionFlags { index });
            }
            if index > 0 {
                if r.base_pfn < regions[index - 1].base_pfn {
                    return Err(PlatformError::Unsorted { index });
                }
                if r.base_pfn < prev_end {
                    return Err(PlatformError::Overlap { at });
                }
            }
            prev_end = r.end_pfn();
        }
        let mut dense_base = Vec::with_capacity(regions.len());
        let mut tracked_pages = 0;
        for r in &regions {
            if r.is_tracked() {
                dense_base.push(Some(tracked_pages));
                tracked_pages += r.nr_pages;
            } else {
                dense_base.push(None);
            }
        }
        Ok(Platform {
            regions,
            dense_base,
            tracked_pages,
            pa_bits,
            withheld: Vec::new(),
        })
    }

    /// Whether the host may never map `pfn` (a `withheld` manifest range).
    pub fn is_withheld(&self, pfn: u64) -> bool {
        self.withheld.iter().any(|&(s, e)| pfn >= s && pfn < e)
    }

    /// The `withheld` ranges as (base, size) in bytes.
    pub fn withheld(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.withheld
            .iter()
            .map(|&(s, e)| (s << PAGE_SHIFT, (e - s) << PAGE_SHIFT))
    }

    /// Size of the physical address space in bits.
    pub fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    /// Number of page frames in the physical address space.
    pub fn pa_pages(&self) -> u64 {
        1 << (self.pa_bits - PAGE_SHIFT)
    }

    /// The regions, sorted by base.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Index of the last region starting at or before `pfn`.
    fn region_at_or_before(&self, pfn: u64) -> Option<usize> {
        self.regions
            .partition_point(|r| r.base_pfn <= pfn)
            .checked_sub(1)
    }

    /// Index of the region holding `pfn`.
    fn region_of(&self, pfn: u64) -> Option<usize> {
        self.region_at_or_before(pfn)
            .filter(|&i| self.regions.get(i).is_some_and(|r| r.contains(pfn)))
    }

    /// The class of one page and the index of its region. Pages in no region
    /// (including pages beyond the physical address space) are undeclared
    /// MMIO: `(Mmio, None)`, not assignable.
    pub fn classify(&self, pfn: u64) -> (MemClass, Option<usize>) {
        match self.region_of(pfn) {
            Some(i) => (self.regions[i].class, Some(i)),
            None => (MemClass::Mmio, None),
        }
    }

    /// The class and region of the whole range `[pfn, pfn + nr)`, or `Err`
    /// when it is empty, leaves the physical address space, or is not inside
    /// one region (for undeclared MMIO: inside one gap between regions).
    /// O(log regions).
    #[allow(clippy::result_unit_err)]
    pub fn range_class(&self, pfn: u64, nr: u64) -> Result<(MemClass, Option<usize>), ()> {
        let end = pfn.checked_add(nr).ok_or(())?;
        if nr == 0 || end > self.pa_pages() {
            return Err(());
        }
        match self.region_at_or_before(pfn) {
            Some(i) if self.regions[i].contains(pfn) => {
                let r = &self.regions[i];
                if end <= r.end_pfn() {
                    Ok((r.class, Some(i)))
                } else {
                    Err(())
                }
            }
            before => {
                let next = before.map_or(0, |i| i + 1);
                match self.regions.get(next) {
                    Some(r) if r.base_pfn < end => Err(()),
                    _ => Ok((MemClass::Mmio, None)),
                }
            }
        }
    }

    /// The regions that carry per-page metadata in the core — RAM, COHERENT
    /// and assignable MMIO, in address order — as (region index, dense index
    /// of the region's first page). Dense indexes run from 0 to
    /// [`Self::tracked_pages`] without gaps.
    pub fn tracked_regions(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.dense_base
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i, d)))
    }

    /// Total number of tracked pages.
    pub fn tracked_pages(&self) -> u64 {
        self.tracked_pages
    }

    /// The dense index of a tracked page; `None` for HYP, undeclared or
    /// non-assignable MMIO pages. O(log regions).
    pub fn tracked_index(&self, pfn: u64) -> Option<u64> {
        let i = self.region_of(pfn)?;
        let base = (*self.dense_base.get(i)?)?;
        Some(base + (pfn - self.regions[i].base_pfn))
    }

    /// [`Self::tracked_index`] of a page already known to lie in region
    /// `region` (as [`Self::range_class`] or [`Self::classify`] found it):
    /// O(1). `None` when it does not lie there or the region is untracked.
    pub fn tracked_index_in(&self, region: Option<usize>, pfn: u64) -> Option<u64> {
        let i = region?;
        let r = self.regions.get(i)?;
        if !r.contains(pfn) {
            return None;
        }
        let base = (*self.dense_base.get(i)?)?;
        Some(base + (pfn - r.base_pfn))
    }

    /// The host's RAM as (base, size) in bytes, in address order, for
    /// rewriting the host's device tree.
    pub fn host_ram(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .filter(|r| r.class == MemClass::Ram)
            .map(|r| (r.base_pfn << PAGE_SHIFT, r.nr_pages << PAGE_SHIFT))
    }
}
