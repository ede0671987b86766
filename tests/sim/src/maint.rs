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
    /// DSBs.
    pub dsb: u64,
    /// Bytes cleaned and invalidated to PoC.
    pub dcache_bytes: u64,
    /// I-cache invalidations.
    pub icache: u64,
    /// Bytes whose allocation tags were zeroed.
    pub tag_bytes: u64,
}

impl Maintenance for CountingMaintenance {
    fn tlbi_ipa(&mut self, _vmid: u16, _ipa: u64, _level: u8) {
        self.tlbi_ipa += 1;
    }
    fn tlbi_vmid(&mut self, _vmid: u16) {
        self.tlbi_vmid += 1;
    }
    fn dsb(&mut self) {
        self.dsb += 1;
    }
    fn dcache_clean_inval_poc(&mut self, _pa: u64, len: u64) {
        self.dcache_bytes += len;
    }
    fn icache_inval_pou(&mut self) {
        self.icache += 1;
    }
    fn zero_tags(&mut self, _pa: u64, len: u64) {
        self.tag_bytes += len;
    }
}
