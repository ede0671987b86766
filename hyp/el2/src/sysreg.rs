//! System register access and barriers, one small function each.

use core::arch::asm;

macro_rules! read_write {
    ($($read:ident, $write:ident, $reg:literal;)*) => {$(
        #[doc = concat!("Read ", $reg, ".")]
        #[inline(always)]
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading this system register has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
        #[doc = concat!("Write ", $reg, ".")]
        ///
        /// # Safety
        ///
        /// The value must be valid for the register and the caller must
        /// account for what the write changes (translation, traps, exception
        /// return state).
        #[inline(always)]
        pub unsafe fn $write(v: u64) {
            // SAFETY: the caller upholds this function's contract.
            unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    )*};
}

macro_rules! read_only {
    ($($read:ident, $reg:literal;)*) => {$(
        #[doc = concat!("Read ", $reg, ".")]
        #[inline(always)]
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading an ID or status register has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    )*};
}

read_write! {
    esr_el2, set_esr_el2, "esr_el2";
    elr_el2, set_elr_el2, "elr_el2";
    spsr_el2, set_spsr_el2, "spsr_el2";
    far_el2, set_far_el2, "far_el2";
    hcr_el2, set_hcr_el2, "hcr_el2";
    vtcr_el2, set_vtcr_el2, "vtcr_el2";
    vttbr_el2, set_vttbr_el2, "vttbr_el2";
    vbar_el2, set_vbar_el2, "vbar_el2";
    tpidr_el2, set_tpidr_el2, "tpidr_el2";
    mair_el2, set_mair_el2, "mair_el2";
    tcr_el2, set_tcr_el2, "tcr_el2";
    ttbr0_el2, set_ttbr0_el2, "ttbr0_el2";
    sctlr_el2, set_sctlr_el2, "sctlr_el2";
    cptr_el2, set_cptr_el2, "cptr_el2";
    mdcr_el2, set_mdcr_el2, "mdcr_el2";
    cnthctl_el2, set_cnthctl_el2, "cnthctl_el2";
    cntvoff_el2, set_cntvoff_el2, "cntvoff_el2";
    vpidr_el2, set_vpidr_el2, "vpidr_el2";
    vmpidr_el2, set_vmpidr_el2, "vmpidr_el2";
    esr_el1, set_esr_el1, "esr_el1";
    far_el1, set_far_el1, "far_el1";
    elr_el1, set_elr_el1, "elr_el1";
    spsr_el1, set_spsr_el1, "spsr_el1";
    vbar_el1, set_vbar_el1, "vbar_el1";
    sctlr_el1, set_sctlr_el1, "sctlr_el1";
    zcr_el2, set_zcr_el2, "S3_4_C1_C2_0";
    smcr_el2, set_smcr_el2, "S3_4_C1_C2_6";
    icc_sre_el2, set_icc_sre_el2, "S3_4_C12_C9_5";
    hcrx_el2, set_hcrx_el2, "S3_4_C1_C2_2";
    hfgrtr_el2, set_hfgrtr_el2, "S3_4_C1_C1_4";
    hfgwtr_el2, set_hfgwtr_el2, "S3_4_C1_C1_5";
    pmcntenset_el0, set_pmcntenset_el0, "pmcntenset_el0";
    pmcntenclr_el0, set_pmcntenclr_el0, "pmcntenclr_el0";
}

read_only! {
    hpfar_el2, "hpfar_el2";
    midr_el1, "midr_el1";
    mpidr_el1, "mpidr_el1";
    id_aa64mmfr0_el1, "id_aa64mmfr0_el1";
    id_aa64mmfr1_el1, "id_aa64mmfr1_el1";
    id_aa64mmfr2_el1, "id_aa64mmfr2_el1";
    id_aa64pfr0_el1, "id_aa64pfr0_el1";
    id_aa64pfr1_el1, "id_aa64pfr1_el1";
    ctr_el0, "ctr_el0";
    pmcr_el0, "pmcr_el0";
    cntvct_el0, "cntvct_el0";
    cntpct_el0, "cntpct_el0";
    cntfrq_el0, "cntfrq_el0";
}

/// Exception classes (ESR_EL2.EC, bits 31:26) the hypervisor decodes.
pub mod ec {
    /// WFI or WFE.
    pub const WFX: u64 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64 (trapped by HCR_EL2.TSC).
    pub const SMC64: u64 = 0x17;
    /// MSR/MRS/system instruction from AArch64.
    pub const SYSREG: u64 = 0x18;
    /// Instruction abort from a lower EL.
    pub const IABT_LOW: u64 = 0x20;
    /// Data abort from a lower EL.
    pub const DABT_LOW: u64 = 0x24;
}

/// ISB.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// DSB ISH.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// Invalidate all EL2 TLB entries of this CPU.
pub fn tlbi_alle2() {
    // SAFETY: TLB invalidation only drops cached translations.
    unsafe {
        asm!(
            "tlbi alle2",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Clean and invalidate one cache line to PoC by address.
#[inline(always)]
pub fn dc_civac(va: u64) {
    // SAFETY: cleaning and invalidating a line keeps its contents.
    unsafe { asm!("dc civac, {}", in(reg) va, options(nostack, preserves_flags)) };
}

/// Wait for an interrupt (idle).
pub fn wfi() {
    // SAFETY: WFI only idles the CPU.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}
