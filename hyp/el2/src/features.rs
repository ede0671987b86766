//! Which optional CPU state exists on this machine, read once from the boot
//! CPU's ID registers: the world switch saves and loads a register only
//! where the CPU has it (an access to a register the CPU lacks is
//! UNDEFINED at EL2), and sets the traps that keep the rest from guests.

use core::arch::asm;

/// Optional architecture features the world switch and the EL2 trap
/// settings depend on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// Pointer authentication: the five key pairs exist.
    pub pauth: bool,
    /// MTE2 (allocation tags in memory): GCR_EL1, RGSR_EL1, TFSR_EL1,
    /// TFSRE0_EL1 exist, and HCR_EL2.ATA means something.
    pub mte2: bool,
    /// SVE: ZCR_EL2, CPTR_EL2.TZ.
    pub sve: bool,
    /// SME: SMCR_EL2, CPTR_EL2.TSM, TPIDR2_EL0.
    pub sme: bool,
    /// A PMUv3: PMCNTENSET_EL0 and friends.
    pub pmu: bool,
    /// PMUv3p1 or later: MDCR_EL2.HPMD stops counting at EL2.
    pub pmuv3p1: bool,
    /// Fine-grained traps: HFGRTR_EL2 and HFGWTR_EL2, whose reset values
    /// are UNKNOWN, so EL2 writes them.
    pub fgt: bool,
    /// HCRX_EL2 exists (reset value UNKNOWN).
    pub hcx: bool,
    /// FEAT_MOPS: HCRX_EL2.MSCEn lets EL1 use the memory-copy instructions.
    pub mops: bool,
    /// FEAT_TCR2: HCRX_EL2.TCR2En gives EL1 its TCR2_EL1.
    pub tcr2: bool,
    /// FEAT_SCTLR2: HCRX_EL2.SCTLR2En gives EL1 its SCTLR2_EL1.
    pub sctlr2: bool,
}

macro_rules! id {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading an ID register has no side effects; these
        // encodings are in the ID space, which reads as zero where a
        // register is not allocated.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

fn field(v: u64, shift: u32) -> u64 {
    (v >> shift) & 0xf
}

impl Features {
    /// Read this CPU's ID registers.
    pub fn probe() -> Self {
        let pfr0 = id!("id_aa64pfr0_el1");
        let pfr1 = id!("id_aa64pfr1_el1");
        let dfr0 = id!("id_aa64dfr0_el1");
        let isar1 = id!("id_aa64isar1_el1");
        let isar2 = id!("S3_0_C0_C6_2");
        let mmfr0 = id!("id_aa64mmfr0_el1");
        let mmfr1 = id!("id_aa64mmfr1_el1");
        let mmfr3 = id!("S3_0_C0_C7_3");
        let pmuver = field(dfr0, 8);
        Self {
            // APA, API, GPA, GPI in ISAR1; APA3, GPA3 in ISAR2.
            pauth: field(isar1, 4) != 0
                || field(isar1, 8) != 0
                || field(isar1, 24) != 0
                || field(isar1, 28) != 0
                || field(isar2, 12) != 0
                || field(isar2, 8) != 0,
            mte2: field(pfr1, 8) >= 2,
            sve: field(pfr0, 32) != 0,
            sme: field(pfr1, 24) != 0,
            // 0xf: an IMPLEMENTATION DEFINED PMU, not PMUv3.
            pmu: pmuver != 0 && pmuver != 0xf,
            pmuv3p1: pmuver >= 4 && pmuver != 0xf,
            fgt: field(mmfr0, 56) != 0,
            hcx: field(mmfr1, 40) != 0,
            mops: field(isar2, 16) != 0,
            tcr2: field(mmfr3, 0) != 0,
            sctlr2: field(mmfr3, 4) != 0,
        }
    }

    /// HCRX_EL2 for the host: the EL1 features it may use without traps.
    pub fn hcrx_host(&self) -> u64 {
        (u64::from(self.mops) << 11) | (u64::from(self.tcr2) << 14) | (u64::from(self.sctlr2) << 15)
    }

    /// HCRX_EL2 for guests: the memory-copy instructions only (they carry
    /// no state). TCR2_EL1 and SCTLR2_EL1 are not switched, so they trap,
    /// and the guest's ID registers do not offer them.
    pub fn hcrx_guest(&self) -> u64 {
        u64::from(self.mops) << 11
    }

    /// HFGRTR_EL2 / HFGWTR_EL2 for the host: the "n" bits of the SME
    /// registers set (no trap) where SME exists; every other bit 0, so the
    /// registers of features the hypervisor does not know trap.
    pub fn fgt_host(&self) -> u64 {
        if self.sme {
            (1 << 55) | (1 << 54) // nTPIDR2_EL0, nSMPRI_EL1
        } else {
            0
        }
    }

    /// The same for guests: SME is trapped, so its registers are too.
    pub fn fgt_guest(&self) -> u64 {
        0
    }
}
