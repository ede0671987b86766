//! The DMA view (RULES.md S1): what devices behind the hypervisor's IOMMU
//! may reach. It is a stage-2 table of its own, an identity map of every
//! RAM and COHERENT page the host may touch (OWNED, SHARED_OWNED,
//! SHARED_BORROWED, or owned and not yet faulted in) and of nothing else:
//! never a HYP page, a guest-owned page, or a page waiting for RECLAIM.
//!
//! Why not share the host's stage-2 with the IOMMU: that table is filled
//! lazily on the host's CPU faults, so a device would fault on host pages
//! the CPU has not touched yet; it uses the FWB MemAttr encodings, which
//! mean something else to an SMMU without FWB (QEMU's has none); and it
//! maps MMIO, which devices should not reach peer to peer. The cost of a
//! separate table is its pages (reserved at boot for the worst case, one
//! last-level table per 2 MiB of tracked memory, so no update can fail) and
//! a second table update whenever the host's ownership changes.
//!
//! The core keeps it in step in one place: the host stage-2 writers
//! (`host_map` and `host_unmap`, which MEM_SHARE/MEM_UNSHARE use too) call
//! [`Hypervisor::dma_follow`]. Taking a page away invalidates the IOMMU's
//! TLB for it and waits for completion ([`DmaInvalidate::sync`]) before the
//! call returns.

use alloc::boxed::Box;

use pagetables::{
    stage2_root_geometry, Entry, Leaf, Maintenance, MemType, PageState, Perms, PhysMem, Stage2,
};
use platform::{MemClass, Platform};

use crate::hypervisor::{HostSide, Hypervisor};

/// TLB maintenance of the IOMMU that walks the DMA view. The EL2 image
/// implements it with SMMUv3 commands; the simulator records the calls.
pub trait DmaInvalidate: Send {
    /// Make the CPU's table writes visible to the IOMMU's walker (DSB).
    fn publish(&mut self);
    /// Invalidate the translations of the 4 KiB page at `ipa`
    /// (CMD_TLBI_S2_IPA).
    fn tlbi_ipa(&mut self, ipa: u64);
    /// Invalidate every translation of the view (CMD_TLBI_S12_VMALL).
    fn tlbi_all(&mut self);
    /// Wait until every invalidation issued so far has taken effect
    /// (CMD_SYNC). An implementation that cannot complete it must stop all
    /// DMA instead of returning with stale translations live.
    fn sync(&mut self);
    /// Stop all DMA: the view could not be updated.
    fn fail_closed(&mut self);
}

/// Runs the table's break-before-make protocol on the IOMMU: TLBIs are
/// queued, and the barrier after them waits for a sync.
struct IommuMaintenance<'a> {
    iommu: &'a mut dyn DmaInvalidate,
    pending: bool,
}

impl Maintenance for IommuMaintenance<'_> {
    fn tlbi_ipa(&mut self, _vmid: u16, ipa: u64, level: u8) {
        // A block entry covers more than one page: drop the whole view's
        // entries rather than issue up to 512 page invalidations.
        if level == 3 {
            self.iommu.tlbi_ipa(ipa);
        } else {
            self.iommu.tlbi_all();
        }
        self.pending = true;
    }
    fn tlbi_vmid(&mut self, _vmid: u16) {
        self.iommu.tlbi_all();
        self.pending = true;
    }
    fn dsb(&mut self) {
        self.iommu.publish();
        if self.pending {
            self.iommu.sync();
            self.pending = false;
        }
    }
    fn dcache_clean_inval_poc(&mut self, _pa: u64, _len: u64) {}
    fn icache_inval_pou(&mut self) {}
}

/// The DMA view: its table and the IOMMU that walks it.
pub struct DmaView<P: PhysMem> {
    s2: Stage2<P>,
    iommu: Box<dyn DmaInvalidate>,
    /// A table update failed (a bookkeeping bug): the IOMMU was told to
    /// stop all DMA.
    failed: bool,
    /// Updates so far: the EL2 image drains the IOMMU's event queue after a
    /// call that changed the view.
    updates: u64,
}

/// Why the DMA view could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaViewError {
    /// Fewer pages than the worst case needs, or no aligned root run.
    NotEnoughMemory {
        /// Pages needed.
        needed: u64,
    },
}

/// The leaf of every page devices may reach: read/write, never executed,
/// write-back in the non-FWB encoding.
const DMA_LEAF: Leaf = Leaf {
    perms: Perms {
        r: true,
        w: true,
        x: false,
    },
    memtype: MemType::NormalWb,
    state: PageState::Owned,
};

impl<P: PhysMem> DmaView<P> {
    /// Pages the view needs for `platform` with an input size of
    /// `ipa_bits`: its root plus one last-level table per 2 MiB of RAM and
    /// COHERENT memory and the levels above, so that no update can run out.
    pub fn pages_needed(platform: &Platform, ipa_bits: u32) -> u64 {
        let pages: u64 = platform
            .regions()
            .iter()
            .filter(|r| matches!(r.class, MemClass::Ram | MemClass::Coherent))
            .map(|r| r.nr_pages)
            .sum();
        let l3 = pages.div_ceil(512) + 2 * platform.regions().len() as u64;
        // The root's pages come out of the same pages: those skipped to
        // align it feed the pool like the rest.
        let roots = stage2_root_geometry(ipa_bits, ipa_bits).root_pages as u64;
        l3 + l3.div_ceil(512) + 8 + roots
    }

    /// A view of nothing yet, on the pages `pages` (hypervisor memory,
    /// consecutive from a page aligned to the root's size is best) for an
    /// IOMMU whose input and output size is `ipa_bits`.
    pub fn new(
        phys: P,
        platform: &Platform,
        ipa_bits: u32,
        pages: &mut dyn Iterator<Item = u64>,
        iommu: Box<dyn DmaInvalidate>,
    ) -> Result<Self, DmaViewError> {
        let needed = Self::pages_needed(platform, ipa_bits);
        let geometry = stage2_root_geometry(ipa_bits, ipa_bits);
        let mut all: alloc::vec::Vec<u64> = pages.collect();
        all.sort_unstable();
        if (all.len() as u64) < needed {
            return Err(DmaViewError::NotEnoughMemory { needed });
        }
        let n = geometry.root_pages;
        let root = (0..all.len())
            .find(|&i| {
                all[i].is_multiple_of(geometry.root_align())
                    && all.get(i + n - 1) == Some(&(all[i] + (n as u64 - 1) * 4096))
            })
            .ok_or(DmaViewError::NotEnoughMemory { needed })?;
        let root_pa = all[root];
        let mut s2 = Stage2::new(phys, root_pa, ipa_bits, ipa_bits, false, 0);
        for (i, &p) in all.iter().enumerate() {
            if i < root || i >= root + n {
                s2.pool_add(p);
            }
        }
        Ok(Self {
            s2,
            iommu,
            failed: false,
            updates: 0,
        })
    }

    /// The table (its root, geometry and entries).
    pub fn stage2(&self) -> &Stage2<P> {
        &self.s2
    }

    /// Whether a device may reach the page at `pa`.
    pub fn allows(&self, pa: u64) -> bool {
        matches!(self.s2.lookup(pa & !0xfff), Entry::Mapped { pa: out, .. } if out == pa & !0xfff)
    }

    /// How many updates the view has had (wrapping).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Whether an update failed and all DMA was stopped.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Allow or forbid DMA to [pfn, pfn+nr), which lies in RAM or COHERENT.
    fn set(&mut self, pfn: u64, nr: u64, allow: bool) {
        self.updates = self.updates.wrapping_add(1);
        let mut mnt = IommuMaintenance {
            iommu: &mut *self.iommu,
            pending: false,
        };
        let r = if allow {
            self.s2
                .map(pfn << 12, pfn << 12, nr, DMA_LEAF, true, &mut mnt)
        } else {
            self.s2.set_invalid(pfn << 12, nr, 0, &mut mnt)
        };
        if mnt.pending {
            mnt.dsb();
        }
        if r.is_err() && !self.failed {
            // Cannot happen with the worst case reserved; if it does, no
            // device may keep a view the core no longer agrees with.
            self.failed = true;
            self.iommu.fail_closed();
        }
    }
}

impl<P: PhysMem, M: Maintenance> Hypervisor<P, M> {
    /// Give the core a DMA view. It is filled from the host's ownership as
    /// it stands (at boot: every RAM and COHERENT page), and from then on
    /// kept in step with every host stage-2 change.
    pub fn attach_dma_view(&mut self, mut view: DmaView<P>) {
        let h = self.host.get_mut();
        for r in self.platform.regions() {
            if !matches!(r.class, MemClass::Ram | MemClass::Coherent) {
                continue;
            }
            let (base, n) = (r.base_pfn, r.nr_pages);
            view.set(base, n, true);
            // Runs of the host's table: a valid entry, or an invalid one
            // without an annotation, is the host's (owned, shared or borrowed).
            let mut taken: alloc::vec::Vec<(u64, u64)> = alloc::vec::Vec::new();
            let _ = h.s2.walk(base << 12, n, &mut |ipa, cnt, e| {
                if matches!(e, Entry::Invalid { annotation } if annotation != 0) {
                    taken.push((ipa >> 12, cnt));
                }
                true
            });
            for (pfn, cnt) in taken {
                view.set(pfn, cnt, false);
            }
        }
        let updates = view.updates();
        h.dma = Some(view);
        self.note_dma_updates(updates);
    }

    /// The DMA view, if the platform has an IOMMU the hypervisor owns, with
    /// the host's lock held while the answer lives (for inspection).
    pub fn dma_view(&self) -> Option<impl core::ops::Deref<Target = DmaView<P>> + '_> {
        let h = self.host.lock();
        h.dma.as_ref()?;
        Some(crate::hypervisor::Locked::new(h, |h| {
            match h.dma.as_ref() {
                Some(v) => v,
                None => unreachable!(),
            }
        }))
    }
}

impl<P: PhysMem, M: Maintenance + Clone> Hypervisor<P, M> {
    /// The hook of every host stage-2 writer: the host's ownership of
    /// [pfn, pfn+nr) changed, so `allow` says whether its devices may now
    /// reach those pages. Only the RAM and COHERENT parts are in the view.
    pub(crate) fn dma_follow(&self, h: &mut HostSide<P>, pfn: u64, nr: u64, allow: bool) {
        let Some(view) = h.dma.as_mut() else {
            return;
        };
        for r in self.platform.regions() {
            if !matches!(r.class, MemClass::Ram | MemClass::Coherent) {
                continue;
            }
            let start = pfn.max(r.base_pfn);
            let end = (pfn + nr).min(r.base_pfn + r.nr_pages);
            if start < end {
                view.set(start, end - start, allow);
            }
        }
        self.note_dma_updates(view.updates());
    }
}
