//! System registers, barriers, cache maintenance and the two conduits out
//! of EL1 (HVC to the hypervisor, SMC or HVC to PSCI), one small function
//! each.

use core::arch::asm;

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

read_only! {
    current_el, "CurrentEL";
    id_aa64mmfr0_el1, "id_aa64mmfr0_el1";
    ctr_el0, "ctr_el0";
    esr_el1, "esr_el1";
    elr_el1, "elr_el1";
    far_el1, "far_el1";
    spsr_el1, "spsr_el1";
    sctlr_el1, "sctlr_el1";
    cntfrq_el0, "cntfrq_el0";
}

/// The virtual counter (CNTVCT_EL0), read after an ISB so that it is not
/// taken early, before the instructions in front of it. Under QEMU's
/// `-icount shift=0` it counts one tick per instruction.
#[inline(always)]
pub fn cntvct() -> u64 {
    let v: u64;
    // SAFETY: ISB and a counter read have no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Physical address bits the CPU implements (ID_AA64MMFR0_EL1.PARange),
/// at most 48: the host uses 4 KiB pages without FEAT_LPA2.
pub fn pa_bits() -> u32 {
    match id_aa64mmfr0_el1() & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    }
}

/// Smallest data cache line, in bytes (CTR_EL0.DminLine).
pub fn dcache_line() -> usize {
    4 << ((ctr_el0() >> 16) & 0xf)
}

/// Apply `op` to the address of every data cache line over `[start, end)`,
/// then wait for it all to complete (DSB SY).
fn each_dcache_line(start: usize, end: usize, op: impl Fn(usize)) {
    let line = dcache_line();
    let mut at = start & !(line - 1);
    while at < end {
        op(at);
        at += line;
    }
    // SAFETY: a barrier has no other effect.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidate the data cache lines over `[start, end)` to the point of
/// coherency, discarding what they hold.
///
/// # Safety
///
/// Nothing in the range may have been written through the cache (only with
/// the MMU off), or those writes are lost.
pub unsafe fn dcache_invalidate(start: usize, end: usize) {
    each_dcache_line(start, end, |at| {
        // SAFETY: the caller guarantees no cached write is discarded.
        unsafe { asm!("dc ivac, {}", in(reg) at, options(nostack, preserves_flags)) };
    });
}

/// Clean the data cache lines over `[start, end)` to the point of
/// coherency, so that a CPU with its MMU (and so its caches) still off reads
/// what this one wrote.
pub fn dcache_clean(start: usize, end: usize) {
    each_dcache_line(start, end, |at| {
        // SAFETY: cleaning writes dirty lines back; memory contents, as the
        // program sees them, do not change.
        unsafe { asm!("dc cvac, {}", in(reg) at, options(nostack, preserves_flags)) };
    });
}

/// Clean and invalidate the data cache lines over `[start, end)` to the
/// point of coherency, so that the next read fetches what another observer
/// (a guest with its MMU off) wrote to memory.
pub fn dcache_clean_invalidate(start: usize, end: usize) {
    each_dcache_line(start, end, |at| {
        // SAFETY: dirty lines are written back before they are dropped, so
        // memory contents, as the program sees them, do not change.
        unsafe { asm!("dc civac, {}", in(reg) at, options(nostack, preserves_flags)) };
    });
}

/// Turn the MMU and caches on with the given translation settings; returns
/// the SCTLR_EL1 value written (for [`crate::mmu`] to hand to secondaries).
///
/// # Safety
///
/// `ttbr0` must be the root of valid EL1 tables that identity-map
/// everything the program touches from here on (code, data, stack, heap,
/// console), with attributes that match `mair`.
pub unsafe fn enable_mmu(mair: u64, tcr: u64, ttbr0: u64) -> u64 {
    // M, C, I on; alignment checks stay off; ATA (tag access at EL1) with
    // MTE2.
    let sctlr = sctlr_el1() | 1 | (1 << 2) | (1 << 12) | (u64::from(mte2()) << 43);
    // SAFETY: the caller vouches for the tables; the TLB and instruction
    // cache are invalidated before translation starts, and the identity map
    // keeps the next instruction's address valid.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr0}",
            "isb",
            "tlbi vmalle1",
            "ic iallu",
            "dsb nsh",
            "isb",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr0 = in(reg) ttbr0,
            sctlr = in(reg) sctlr,
            options(nostack, preserves_flags),
        );
    }
    sctlr
}

// __smccc_hvc(regs) / __smccc_smc(regs): load x0..x30 from regs[0..31],
// make the call, store x0..x30 back into regs. Callee-saved registers, the
// frame pointer and the link register are kept on the stack around it.
core::arch::global_asm!(
    r#"
.macro SMCCC_CHECKED name, insn
.global \name
\name:
    sub     sp, sp, #112
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    str     x0, [sp, #96]
    mov     x30, x0
    ldp     x0, x1, [x30, #0]
    ldp     x2, x3, [x30, #16]
    ldp     x4, x5, [x30, #32]
    ldp     x6, x7, [x30, #48]
    ldp     x8, x9, [x30, #64]
    ldp     x10, x11, [x30, #80]
    ldp     x12, x13, [x30, #96]
    ldp     x14, x15, [x30, #112]
    ldp     x16, x17, [x30, #128]
    ldp     x18, x19, [x30, #144]
    ldp     x20, x21, [x30, #160]
    ldp     x22, x23, [x30, #176]
    ldp     x24, x25, [x30, #192]
    ldp     x26, x27, [x30, #208]
    ldp     x28, x29, [x30, #224]
    ldr     x30, [x30, #240]
    \insn  #0
    str     x30, [sp, #-16]!
    ldr     x30, [sp, #112]
    stp     x0, x1, [x30, #0]
    stp     x2, x3, [x30, #16]
    stp     x4, x5, [x30, #32]
    stp     x6, x7, [x30, #48]
    stp     x8, x9, [x30, #64]
    stp     x10, x11, [x30, #80]
    stp     x12, x13, [x30, #96]
    stp     x14, x15, [x30, #112]
    stp     x16, x17, [x30, #128]
    stp     x18, x19, [x30, #144]
    stp     x20, x21, [x30, #160]
    stp     x22, x23, [x30, #176]
    stp     x24, x25, [x30, #192]
    stp     x26, x27, [x30, #208]
    stp     x28, x29, [x30, #224]
    ldr     x0, [sp], #16
    str     x0, [x30, #240]
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    add     sp, sp, #112
    ret
.endm
SMCCC_CHECKED __smccc_hvc, hvc
SMCCC_CHECKED __smccc_smc, smc
"#
);

extern "C" {
    fn __smccc_hvc(regs: *mut u64);
    fn __smccc_smc(regs: *mut u64);
}

/// Which instruction a call goes through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Conduit {
    Hvc,
    Smc,
}

/// Calls made through [`smccc_call`]: each fills x7..x30 with values of
/// its own, so a register the callee leaks from an earlier call shows.
static CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// An SMCCC call with x0..x6 from `regs` and every other register set to a
/// pattern; returns x0..x4. It panics, naming the register, if the callee
/// changed a register ABI.md says it keeps:
/// - NOT_SUPPORTED (x0 = -1) changes x0 only;
/// - host calls that name an x4 output (HYP_FEATURES, PAGE_QUERY) change
///   x0..x4, every other call x0..x3;
/// - x5..x30 never change.
pub fn smccc_call(conduit: Conduit, regs: [u64; 7]) -> [u64; 5] {
    let n = CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut x = [0u64; 31];
    x[..7].copy_from_slice(&regs);
    for (i, r) in x.iter_mut().enumerate().skip(7) {
        *r = 0x5a5a_0000_0000_0000 | (n << 8) | i as u64;
    }
    let before = x;
    // SAFETY: the routine saves and restores every register Rust relies
    // on; the call enters the hypervisor or firmware, which touch only
    // memory the host shared with them (run pages), which Rust does not
    // hold references to across this call.
    unsafe {
        match conduit {
            Conduit::Hvc => __smccc_hvc(x.as_mut_ptr()),
            Conduit::Smc => __smccc_smc(x.as_mut_ptr()),
        }
    }
    let id = regs[0];
    let x4_output = conduit == Conduit::Hvc
        && (id == u64::from(host_interface::HostCallId::HypFeatures.id())
            || id == u64::from(host_interface::HostCallId::PageQuery.id()));
    let first_kept = if x[0] == u64::MAX {
        1
    } else if x4_output {
        5
    } else {
        4
    };
    for i in first_kept..31 {
        if x[i] != before[i] {
            panic!(
                "SMCCC: {conduit:?} {id:#x} changed x{i} from {:#x} to {:#x} (x0 = {:#x})",
                before[i], x[i], x[0]
            );
        }
    }
    [x[0], x[1], x[2], x[3], x[4]]
}

/// Whether memory holds MTE allocation tags (ID_AA64PFR1_EL1.MTE >= 2).
pub fn mte2() -> bool {
    let v: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64pfr1_el1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    (v >> 8) & 0xf >= 2
}

/// The allocation tag of the granule at `pa` (LDG; the host maps memory
/// Tagged with MTE2).
pub fn load_tag(pa: u64) -> u64 {
    let mut t = pa;
    // SAFETY: LDG only reads the tag of a granule of memory the caller
    // knows is mapped for the host.
    unsafe {
        asm!(".arch_extension memtag", "ldg {t}, [{a}]", t = inout(reg) t, a = in(reg) pa, options(nostack, preserves_flags))
    };
    (t >> 56) & 0xf
}

/// Set the allocation tag of the granule at `pa` to `tag` (STG).
pub fn store_tag(pa: u64, tag: u64) {
    let t = pa | ((tag & 0xf) << 56);
    // SAFETY: STG changes only the tag of a granule of host memory the
    // caller owns; nothing the test host runs checks tags (TCF is 0).
    unsafe {
        asm!(".arch_extension memtag", "stg {t}, [{a}]", t = in(reg) t, a = in(reg) pa, options(nostack, preserves_flags))
    };
}

/// A host call (ABI.md 1): `hvc #0` with x0..x6; x0..x4 as they are after
/// the call (x4 and, for an unknown ID, x1..x3 keep the caller's values),
/// every register the ABI keeps checked by [`smccc_call`].
pub fn hvc_host_call(regs: [u64; 7]) -> [u64; 5] {
    smccc_call(Conduit::Hvc, regs)
}

/// A host call's answer as ABI.md 1 states it: x0..x3, x4 for the calls
/// that name an x4 output and 0 for the others, and `[-1, 0, 0, 0, 0]` for
/// an unknown ID. The registers the call keeps are checked on the way.
pub fn host_call_answer(regs: [u64; 7]) -> [u64; 5] {
    let mut r = hvc_host_call(regs);
    if r[0] == u64::MAX {
        return [u64::MAX, 0, 0, 0, 0];
    }
    let id = regs[0];
    if id != u64::from(host_interface::HostCallId::HypFeatures.id())
        && id != u64::from(host_interface::HostCallId::PageQuery.id())
    {
        r[4] = 0;
    }
    r
}

/// PSCI SYSTEM_OFF.
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// PSCI CPU_ON (SMC64): start the CPU `target` (an MPIDR) at `entry`
/// (physical) with x0 = `context`, at EL1 with its MMU off.
const PSCI_CPU_ON64: u64 = 0xC400_0003;

/// PSCI CPU_ON through the conduit the device tree names. Returns PSCI's
/// status (0 = SUCCESS).
pub fn psci_cpu_on(use_hvc: bool, target: u64, entry: u64, context: u64) -> u64 {
    let conduit = if use_hvc { Conduit::Hvc } else { Conduit::Smc };
    smccc_call(conduit, [PSCI_CPU_ON64, target, entry, context, 0, 0, 0])[0]
}

/// PSCI SYSTEM_OFF through the conduit the device tree names (`hvc` or
/// `smc`). Returns only if the call failed.
pub fn psci_system_off(use_hvc: bool) {
    // SAFETY: SYSTEM_OFF either powers the machine off or returns an error
    // code in x0; it takes no memory arguments. SMCCC lets the callee corrupt x1..x17.
    unsafe {
        if use_hvc {
            asm!(
                "hvc #0",
                inout("x0") PSCI_SYSTEM_OFF => _,
                out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
                out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _,
                out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            );
        } else {
            asm!(
                "smc #0",
                inout("x0") PSCI_SYSTEM_OFF => _,
                out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
                out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _,
                out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            );
        }
    }
}

/// Wait for an interrupt (which never comes: they stay masked).
pub fn wfi() {
    // SAFETY: WFI only pauses the CPU.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}
