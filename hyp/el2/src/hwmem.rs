//! The core's hardware backends at EL2: physical memory through the identity
//! map, and TLB/cache maintenance instructions.

use core::arch::asm;

use pagetables::{Maintenance, PhysMem};

use crate::sysreg;

/// Physical memory as EL2 sees it: identity mapped (RAM, COHERENT, HYP).
#[derive(Clone, Copy)]
pub struct El2Phys;

impl PhysMem for El2Phys {
    fn phys_to_virt(&self, pa: u64) -> *mut u8 {
        pa as *mut u8
    }
}

/// A stage-2 root of invalid entries, as large and as aligned as the
/// largest concatenated root (16 pages): what VTTBR_EL2 points at while it
/// holds another VMID only for TLB maintenance.
#[repr(C, align(65536))]
struct EmptyRoot([u64; 8192]);

static EMPTY_ROOT: EmptyRoot = EmptyRoot([0; 8192]);

/// TLB and cache maintenance by instruction.
#[derive(Clone, Copy)]
pub struct El2Maintenance {
    /// Smallest data cache line (CTR_EL0.DminLine), bytes.
    dline: u64,
    /// Block `dc gzva` zeroes (DCZID_EL0), bytes; 0 without MTE2, where
    /// memory holds no tags.
    tag_block: u64,
}

impl El2Maintenance {
    /// Read the cache geometry.
    pub fn new() -> Self {
        let mte2 = (sysreg::id_aa64pfr1_el1() >> 8) & 0xf >= 2;
        let dczid: u64;
        // SAFETY: reading DCZID_EL0 has no side effects.
        unsafe {
            asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags))
        };
        // DZP (bit 4) set: DC ZVA and DC GZVA are prohibited.
        let tag_block = if mte2 && dczid & (1 << 4) == 0 {
            4 << (dczid & 0xf)
        } else {
            0
        };
        Self {
            dline: 4 << ((sysreg::ctr_el0() >> 16) & 0xf),
            tag_block,
        }
    }

    /// Run `f` with VTTBR_EL2 holding `vmid` (TLBIs by IPA act on the
    /// current VMID), then put the old value back. Meanwhile the table
    /// address is [`EMPTY_ROOT`]: a walk the CPU makes speculatively for
    /// that VMID finds nothing, so nothing is cached for it.
    fn with_vmid(vmid: u16, f: impl FnOnce()) {
        let old = sysreg::vttbr_el2();
        let cur = (old >> 48) as u16;
        if cur != vmid {
            let empty = (&raw const EMPTY_ROOT) as u64;
            // SAFETY: only for the TLB maintenance below, VTTBR_EL2 names
            // this VMID with a root of invalid entries; no guest runs on
            // this CPU meanwhile (we are in a hypercall) and the old value
            // is restored before returning.
            unsafe { sysreg::set_vttbr_el2((u64::from(vmid) << 48) | empty) };
            sysreg::isb();
        }
        f();
        if cur != vmid {
            // SAFETY: restores the value read above.
            unsafe { sysreg::set_vttbr_el2(old) };
            sysreg::isb();
        }
    }
}

impl Maintenance for El2Maintenance {
    fn tlbi_ipa(&mut self, vmid: u16, ipa: u64, _level: u8) {
        Self::with_vmid(vmid, || {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe {
                asm!(
                    "tlbi ipas2e1is, {ipa}",
                    "dsb ish",
                    "tlbi vmalle1is",
                    "dsb ish",
                    "isb",
                    ipa = in(reg) ipa >> 12,
                    options(nostack, preserves_flags)
                )
            };
        });
    }

    fn tlbi_vmid(&mut self, vmid: u16) {
        Self::with_vmid(vmid, || {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe {
                asm!(
                    "tlbi vmalls12e1is",
                    "dsb ish",
                    "isb",
                    options(nostack, preserves_flags)
                )
            };
        });
    }

    fn dsb(&mut self) {
        sysreg::dsb_ish();
    }

    fn dcache_clean_inval_poc(&mut self, pa: u64, len: u64) {
        let mut a = pa & !(self.dline - 1);
        while a < pa + len {
            sysreg::dc_civac(a);
            a += self.dline;
        }
        sysreg::dsb_ish();
    }

    fn zero_tags(&mut self, pa: u64, len: u64) {
        if self.tag_block == 0 {
            return;
        }
        let mut a = pa & !(self.tag_block - 1);
        while a < pa + len {
            // SAFETY: the core passes only pages it owns at this moment
            // (being reclaimed), identity mapped Tagged Normal memory at
            // EL2; DC GZVA zeroes the block's data and allocation tags.
            unsafe {
                asm!(".arch_extension memtag", "dc gzva, {}", in(reg) a, options(nostack, preserves_flags))
            };
            a += self.tag_block;
        }
        sysreg::dsb_ish();
    }

    fn icache_inval_pou(&mut self) {
        // SAFETY: invalidating the instruction cache keeps memory unchanged.
        unsafe {
            asm!(
                "ic ialluis",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }
}
