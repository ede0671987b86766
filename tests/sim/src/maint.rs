//! Maintenance backend of the simulator: counts what the core asked for
//! (TLB invalidations, cache cleans), so tests and benchmarks can see it.

use pagetables::Maintenance;

/// Counts of maintenance operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountingMaintenance {
    /// TLBI by IPA.
    pub tlbi_ipa: u64,
    /// TLBI by VMID.
    pub tlbi_vmid: u64,
    /// The VMID of the last TLBI by VMID.
    pub last_tlbi_vmid: u16,
    /// The VMID of the last TLBI by IPA.
    pub last_tlbi_ipa_vmid: u16,
    /// DSBs.
    pub dsb: u64,
    /// Bytes cleaned and invalidated to PoC.
    pub dcache_bytes: u64,
    /// I-cache invalidations.
    pub icache: u64,
    /// Bytes whose allocation tags were zeroed.
    pub tag_bytes: u64,
}

/// The simulator's maintenance backend: every copy the core makes (one
/// per call, whatever lock it holds) counts into the same
/// [`CountingMaintenance`].
#[derive(Clone, Debug, Default)]
pub struct SimMaintenance(std::sync::Arc<std::sync::Mutex<CountingMaintenance>>);

impl SimMaintenance {
    fn with(&mut self, f: impl FnOnce(&mut CountingMaintenance)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
    /// The counts so far.
    pub fn counts(&self) -> CountingMaintenance {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Maintenance for SimMaintenance {
    fn tlbi_ipa(&mut self, vmid: u16, _ipa: u64, _level: u8) {
        self.with(|c| {
            c.tlbi_ipa += 1;
            c.last_tlbi_ipa_vmid = vmid;
        });
    }
    fn tlbi_vmid(&mut self, vmid: u16) {
        self.with(|c| {
            c.tlbi_vmid += 1;
            c.last_tlbi_vmid = vmid;
        });
    }
    fn dsb(&mut self) {
        self.with(|c| c.dsb += 1);
    }
    fn dcache_clean_inval_poc(&mut self, _pa: u64, len: u64) {
        self.with(|c| c.dcache_bytes += len);
    }
    fn icache_inval_pou(&mut self) {
        self.with(|c| c.icache += 1);
    }
    fn zero_tags(&mut self, _pa: u64, len: u64) {
        self.with(|c| c.tag_bytes += len);
    }
}

/// The simulated SMMU's TLB: pages a device reached stay cached until an
/// invalidation that has been synced drops them, as on hardware. So a core
/// that forgot an invalidation would let a simulated device reach a page
/// the host no longer owns, and the DMA checks would catch it.
#[derive(Debug, Default)]
pub struct IoTlb {
    /// Pages (pa >> 12) cached as reachable.
    pub cached: std::collections::BTreeSet<u64>,
    /// Invalidations queued but not yet synced: (Some(pfn)) or all (None).
    pub queued: Vec<Option<u64>>,
    /// CMD_TLBI_S2_IPA issued.
    pub tlbi_ipa: u64,
    /// CMD_TLBI_S12_VMALL issued.
    pub tlbi_all: u64,
    /// CMD_SYNC issued.
    pub syncs: u64,
    /// The view told the SMMU to stop all DMA.
    pub failed_closed: bool,
}

/// The simulator's IOMMU: a handle on an [`IoTlb`] shared with the board.
#[derive(Clone, Debug, Default)]
pub struct SimIommu(pub std::sync::Arc<std::sync::Mutex<IoTlb>>);

impl SimIommu {
    fn with<R>(&self, f: impl FnOnce(&mut IoTlb) -> R) -> R {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }
    /// A snapshot of the counters: (TLBI by IPA, TLBI all, syncs).
    pub fn counts(&self) -> (u64, u64, u64) {
        self.with(|t| (t.tlbi_ipa, t.tlbi_all, t.syncs))
    }
    /// Invalidations issued but not completed by a sync.
    pub fn unsynced(&self) -> usize {
        self.with(|t| t.queued.len())
    }
    /// A device access to `pa`: reachable if cached, else if `view` allows
    /// it (and then cached).
    pub fn access(&self, pa: u64, view: impl Fn(u64) -> bool) -> bool {
        self.with(|t| {
            let pfn = pa >> 12;
            if t.failed_closed {
                return false;
            }
            if t.cached.contains(&pfn) {
                return true;
            }
            let ok = view(pa);
            if ok {
                t.cached.insert(pfn);
            }
            ok
        })
    }
}

impl hyp::DmaInvalidate for SimIommu {
    fn publish(&mut self) {}
    fn tlbi_ipa(&mut self, ipa: u64) {
        self.with(|t| {
            t.tlbi_ipa += 1;
            t.queued.push(Some(ipa >> 12));
        });
    }
    fn tlbi_all(&mut self) {
        self.with(|t| {
            t.tlbi_all += 1;
            t.queued.push(None);
        });
    }
    fn sync(&mut self) {
        self.with(|t| {
            t.syncs += 1;
            for q in core::mem::take(&mut t.queued) {
                match q {
                    Some(pfn) => {
                        t.cached.remove(&pfn);
                    }
                    None => t.cached.clear(),
                }
            }
        });
    }
    fn fail_closed(&mut self) {
        self.with(|t| t.failed_closed = true);
    }
}
