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

/// TLB and cache maintenance by instruction.
pub struct El2Maintenance {
    /// Smallest data cache line (CTR_EL0.DminLine), bytes.
    dline: u64,
}

impl El2Maintenance {
    /// Read the cache geometry.
    pub fn new() -> Self {
        Self {
            dline: 4 << ((sysreg::ctr_el0() >> 16) & 0xf),
        }
    }

    /// Run `f` with VTTBR_EL2 holding `vmid` (TLBIs by IPA act on the
    /// current VMID), then put the old value back.
    fn with_vmid(vmid: u16, f: impl FnOnce()) {
        let old = sysreg::vttbr_el2();
        let cur = (old >> 48) as u16;
        if cur != vmid {
            // SAFETY: only the VMID field changes, and only for the TLB
            // maintenance below; no guest runs on this CPU meanwhile (we are
            // in a hypercall) and the old value is restored before returning.
            unsafe { sysreg::set_vttbr_el2(u64::from(vmid) << 48) };
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
