//! The world switch: running a vCPU at EL1 under its VM's stage-2 and
//! coming back at its traps, for `traps.rs`'s VCPU_RUN.
//!
//! [`load`] saves the host's EL1 system registers, FP/SIMD state and virtual
//! timer, loads the guest's, and switches VTTBR_EL2 (the VM's tables and
//! VMID), HCR_EL2 (interrupts to EL2, WFI and SMC trapped), VBAR_EL2 (the
//! guest vectors) and the virtual CPU interface. [`enter`] `eret`s to the
//! guest; a trap comes back through `__guest_exit`, which saves the guest's
//! general registers into its context and returns to the caller of
//! `__guest_run` as if from a function call, and the trap is decoded for the
//! core. [`unload`] puts everything back the other way.

use core::arch::{asm, global_asm};

use hyp::{Trap, VcpuContext};

use crate::sysreg::ec;
use crate::{gic, sysreg, HOST_REGS};

/// EL1 registers switched with the vCPU, in `VcpuContext::sys` order.
/// (PSTATE is word 0; word 31 says the context has been initialised.)
const SYS_SPSR: usize = 0;
const SYS_INIT: usize = 31;

macro_rules! el1_regs {
    ($m:ident) => {
        $m!(1, "sctlr_el1");
        $m!(2, "ttbr0_el1");
        $m!(3, "ttbr1_el1");
        $m!(4, "tcr_el1");
        $m!(5, "mair_el1");
        $m!(6, "amair_el1");
        $m!(7, "vbar_el1");
        $m!(8, "contextidr_el1");
        $m!(9, "tpidr_el0");
        $m!(10, "tpidrro_el0");
        $m!(11, "tpidr_el1");
        $m!(12, "sp_el0");
        $m!(13, "sp_el1");
        $m!(14, "elr_el1");
        $m!(15, "spsr_el1");
        $m!(16, "esr_el1");
        $m!(17, "far_el1");
        $m!(18, "afsr0_el1");
        $m!(19, "afsr1_el1");
        $m!(20, "par_el1");
        $m!(21, "cpacr_el1");
        $m!(22, "cntkctl_el1");
        $m!(23, "cntv_ctl_el0");
        $m!(24, "cntv_cval_el0");
        $m!(25, "mdscr_el1");
        $m!(26, "csselr_el1");
    };
}

/// The MTE registers (with MTE2), switched only for VMs created with MTE:
/// other VMs trap them (HCR_EL2.ATA clear).
macro_rules! mte_regs {
    ($m:ident) => {
        $m!(27, "S3_0_C1_C0_6"); // GCR_EL1
        $m!(28, "S3_0_C1_C0_5"); // RGSR_EL1
        $m!(29, "S3_0_C5_C6_0"); // TFSR_EL1
        $m!(30, "S3_0_C5_C6_1"); // TFSRE0_EL1
    };
}

/// The pointer-authentication keys, switched for every world where the CPU
/// has them.
macro_rules! pauth_regs {
    ($m:ident) => {
        $m!(32, "S3_0_C2_C1_0"); // APIAKeyLo_EL1
        $m!(33, "S3_0_C2_C1_1"); // APIAKeyHi_EL1
        $m!(34, "S3_0_C2_C1_2"); // APIBKeyLo_EL1
        $m!(35, "S3_0_C2_C1_3"); // APIBKeyHi_EL1
        $m!(36, "S3_0_C2_C2_0"); // APDAKeyLo_EL1
        $m!(37, "S3_0_C2_C2_1"); // APDAKeyHi_EL1
        $m!(38, "S3_0_C2_C2_2"); // APDBKeyLo_EL1
        $m!(39, "S3_0_C2_C2_3"); // APDBKeyHi_EL1
        $m!(40, "S3_0_C2_C3_0"); // APGAKeyLo_EL1
        $m!(41, "S3_0_C2_C3_1"); // APGAKeyHi_EL1
    };
}

/// Read the switched EL1 registers into `s`: the base set, the PAC keys
/// where the CPU has them, the MTE registers when `mte`.
fn save_el1(s: &mut [u64; hyp::SYS_WORDS], pauth: bool, mte: bool) {
    macro_rules! save {
        ($i:expr, $r:literal) => {
            // SAFETY: reading an EL1 register from EL2 has no side effects;
            // optional ones are read only where the CPU has them.
            unsafe { asm!(concat!("mrs {}, ", $r), out(reg) s[$i], options(nomem, nostack, preserves_flags)) };
        };
    }
    el1_regs!(save);
    if pauth {
        pauth_regs!(save);
    }
    if mte {
        mte_regs!(save);
    }
}

/// Load the switched EL1 registers from `s` (the same sets as
/// [`save_el1`]).
///
/// # Safety
///
/// EL1 must not run between this and the next `eret` with registers it does
/// not own: the caller enters the context these registers belong to.
unsafe fn load_el1(s: &[u64; hyp::SYS_WORDS], pauth: bool, mte: bool) {
    macro_rules! load {
        ($i:expr, $r:literal) => {
            // SAFETY: the caller enters the owner of these values before EL1
            // runs again; EL2 itself does not depend on EL1 registers.
            unsafe { asm!(concat!("msr ", $r, ", {}"), in(reg) s[$i], options(nomem, nostack, preserves_flags)) };
        };
    }
    el1_regs!(load);
    if pauth {
        pauth_regs!(load);
    }
    if mte {
        mte_regs!(load);
    }
}

global_asm!(
    r#"
.arch armv8-a+fp+simd

// __fp_save(buf): V0..V31, FPSR, FPCR into 66 words.
.global __fp_save
__fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpsr
    mrs     x2, fpcr
    add     x0, x0, #512
    stp     x1, x2, [x0]
    ret

// __fp_load(buf)
.global __fp_load
__fp_load:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    add     x0, x0, #512
    ldp     x1, x2, [x0]
    msr     fpsr, x1
    msr     fpcr, x2
    ret

// __guest_run(gprs): enter the guest with x0..x30 = gprs[0..31]
// (ELR/SPSR/VTTBR/HCR/VBAR already set). Returns 0 for a synchronous
// trap, 1 for an interrupt, with the guest's registers saved in gprs.
.global __guest_run
__guest_run:
    stp     x29, x30, [sp, #-112]!
    stp     x27, x28, [sp, #16]
    stp     x25, x26, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x21, x22, [sp, #64]
    stp     x19, x20, [sp, #80]
    str     x0, [sp, #96]
    mov     x29, x0
    ldp     x0, x1, [x29, #0]
    ldp     x2, x3, [x29, #16]
    ldp     x4, x5, [x29, #32]
    ldp     x6, x7, [x29, #48]
    ldp     x8, x9, [x29, #64]
    ldp     x10, x11, [x29, #80]
    ldp     x12, x13, [x29, #96]
    ldp     x14, x15, [x29, #112]
    ldp     x16, x17, [x29, #128]
    ldp     x18, x19, [x29, #144]
    ldp     x20, x21, [x29, #160]
    ldp     x22, x23, [x29, #176]
    ldp     x24, x25, [x29, #192]
    ldp     x26, x27, [x29, #208]
    ldr     x28, [x29, #224]
    ldr     x30, [x29, #240]
    ldr     x29, [x29, #232]
    eret

// Guest vectors: only lower-EL entries can happen while a guest runs.
.balign 2048
.global guest_vectors
guest_vectors:
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_serror
    // Lower EL, AArch64: sync, IRQ, FIQ, SError. An HVC may be a call
    // answered from its registers alone: __guest_hvc tries that first when
    // the function number (x0's low 16 bits) is one such a call can have,
    // below 0x200 or 0xFF01 (a superset: the Rust side decides), so that
    // other calls do not pay for the attempt.
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mrs     x1, esr_el2
    lsr     x1, x1, #26
    cmp     x1, #0x16
    b.ne    1f
    and     x1, x0, #0xffff
    cmp     x1, #0x200
    b.lo    __guest_hvc
    mov     x0, #0xff01
    cmp     x1, x0
    b.eq    __guest_hvc
1:
    mov     x0, #0
    b       __guest_exit
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #1
    b       __guest_exit
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #1
    b       __guest_exit
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #2
    b       __guest_exit
    // Lower EL, AArch32: a guest cannot get there (HCR_EL2.RW).
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected

// A guest HVC (EC 0x16), the guest's x0, x1 at [sp] (the registers are
// reloaded from there): if guest_hvc_fast
// answers it from x0..x3 (hyp::answer_guest_call_regs: versions, features,
// UID, MEMINFO, host-call IDs), straight back to the guest with the answer
// in x0..x3; else the registers as the vector found them and the full
// exit. Only what a Rust call may change is saved: x2..x18 and x30 (x19..x29
// are callee-saved; EL2 has no FP/SIMD; ELR/SPSR_EL2 are untouched, and
// the HVC's return address is already past the instruction). An interrupt
// that came meanwhile is taken as soon as the guest runs again.
__guest_hvc:
    sub     sp, sp, #160
    ldp     x0, x1, [sp, #160]
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    mov     x0, sp
    bl      guest_hvc_fast
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    cbz     x0, 1f
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #176
    eret
1:
    ldp     x2, x3, [sp, #16]
    add     sp, sp, #160
    mov     x0, #0
    b       __guest_exit

// x0 = exit kind; the guest's x0, x1 are at [sp]; gprs pointer at [sp, #16+96].
__guest_exit:
    ldr     x1, [sp, #112]
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    ldp     x27, x28, [sp, #16]
    ldp     x25, x26, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #64]
    ldp     x19, x20, [sp, #80]
    ldp     x29, x30, [sp], #112
    ret

// __serror_window(): unmask SError for a moment after a guest exit, so an
// SError the guest caused is taken here (el2_serror records it) and not
// later by the host. Returns 1 if one was taken, else 0.
.global __serror_window
__serror_window:
    mrs     x1, tpidr_el2
    adrp    x2, GUEST_SERROR
    ldr     x2, [x2, :lo12:GUEST_SERROR]
    str     xzr, [x2, x1, lsl #3]
    dsb     sy
    isb
    msr     daifclr, #4
    isb
    msr     daifset, #4
    ldr     x0, [x2, x1, lsl #3]
    ret
"#
);

/// Called by `__guest_hvc` with the trapping guest's x0..x3: 1 if the call
/// was answered (the answer is in `regs`), else 0 (`regs` unchanged).
///
/// # Safety
/// `regs` points to four words on this CPU's EL2 stack.
#[no_mangle]
unsafe extern "C" fn guest_hvc_fast(regs: *mut [u64; 4]) -> u64 {
    // SAFETY: by the contract above; nothing else refers to those words.
    let regs = unsafe { &mut *regs };
    u64::from(hyp::answer_guest_call_regs(regs))
}

extern "C" {
    fn __fp_save(buf: *mut u64);
    fn __fp_load(buf: *const u64);
    fn __guest_run(gprs: *mut u64) -> u64;
    fn __serror_window() -> u64;
    fn guest_vectors();
}

/// EL1 state of the host while a guest runs.
struct HostEl1 {
    sys: [u64; hyp::SYS_WORDS],
    fp: [u64; hyp::FP_WORDS],
    cntvoff: u64,
    mdcr: u64,
    elr: u64,
    spsr: u64,
    /// PMCNTENSET_EL0: the host's counters, stopped while a protected
    /// guest runs.
    pmcnten: u64,
}

/// What the loaded vCPU's VM has, for the switch and the trap decoding.
#[derive(Clone, Copy, Default)]
pub struct VmKind {
    /// A protected VM: the host's PMU stops counting while it runs.
    pub protected: bool,
    /// Created with MTE: tags and the MTE registers are the guest's.
    pub mte: bool,
}

/// A vCPU loaded on this CPU: the host state to put back when it leaves.
/// Kept in place (it is about 1 KiB) from [`load`] to [`unload`].
pub struct Loaded {
    host: HostEl1,
    gic: gic::HostGic,
    kind: VmKind,
    /// The MTE registers are switched (MTE2 and an MTE VM).
    mte: bool,
    /// FP/SIMD holds the guest's registers (switched at its first FP trap).
    fp_guest: bool,
    /// The PAC keys are the guest's (switched at its first PAC trap).
    pauth_guest: bool,
    /// HCR_EL2 while the guest runs (API and APK set once its keys are in).
    hcr: u64,
}

impl Loaded {
    /// Room for the host's state, filled by [`load`].
    pub const fn new() -> Self {
        Self {
            host: HostEl1 {
                sys: [0; hyp::SYS_WORDS],
                fp: [0; hyp::FP_WORDS],
                cntvoff: 0,
                mdcr: 0,
                elr: 0,
                spsr: 0,
                pmcnten: 0,
            },
            gic: gic::HostGic::NONE,
            kind: VmKind {
                protected: false,
                mte: false,
            },
            mte: false,
            fp_guest: false,
            pauth_guest: false,
            hcr: 0,
        }
    }
}

/// HCR_EL2 for a guest: VM, SWIO, FMO, IMO, AMO, TWI, TID3 (ID registers
/// are emulated), TSC, TACR (ACTLR_EL1 is not switched), RW, TLOR and TERR (LORegions and RAS error records
/// trap), FWB as the host, ATA only for an MTE VM. EnSCXT stays clear, so
/// SCXTNUM_ELx trap. APK/API start clear: the guest's first use of a PAC
/// instruction or key register traps, and the keys are switched then
/// ([`HCR_PAUTH`]).
fn guest_hcr(host_hcr: u64, mte: bool) -> u64 {
    (host_hcr & (1 << 46))
        | (u64::from(mte) << 56)
        | (1 << 0)
        | (1 << 1)
        | (1 << 3)
        | (1 << 4)
        | (1 << 5)
        | (1 << 13)
        | (1 << 18)
        | (1 << 19)
        | (1 << 21)
        | (1 << 31)
        | (1 << 35)
        | (1 << 36)
}

/// HCR_EL2.APK and API: PAC key registers and instructions not trapped.
const HCR_PAUTH: u64 = (1 << 40) | (1 << 41);

/// CPTR_EL2 for a guest: FP/SIMD its own (switched), SVE (TZ), SME (TSM)
/// and the activity monitors (TAM) trapped: their state is not switched.
const CPTR_GUEST: u64 = 0x22ff | (1 << 8) | (1 << 12) | (1 << 30);
/// CPTR_EL2.TFP: FP/SIMD trapped until the guest first uses it; the host's
/// registers stay in place (unreadable by the guest) until then.
const CPTR_TFP: u64 = 1 << 10;

/// Save the host's EL1 state and load the vCPU's (EL1 registers, PAC keys,
/// MTE registers for an MTE VM, FP/SIMD, the virtual CPU interface, the
/// preemption deadline `slice_end` or the host's timer deadline, whichever
/// is first). Until [`unload`], EL2 may run the guest again and again with
/// [`enter`] and handle its traps in between; `ctx` then holds only its
/// general registers and pc. `false` (nothing loaded) before the host's EL2
/// settings exist.
pub fn load(
    l: &mut Loaded,
    vttbr: u64,
    vcpu: u64,
    kind: VmKind,
    ctx: &mut VcpuContext,
    slice_end: u64,
) -> bool {
    let Some(host) = HOST_REGS.get() else {
        return false;
    };
    let f = host.features;
    l.kind = kind;
    l.mte = f.mte2 && kind.mte;
    if ctx.sys[SYS_INIT] == 0 {
        // First entry: EL1h, interrupts masked, MMU and caches off; keys,
        // tags and every other register zero.
        ctx.sys = [0; hyp::SYS_WORDS];
        ctx.sys[SYS_SPSR] = 0x3c5;
        ctx.sys[1] = 0x30d0_0800;
        ctx.sys[SYS_INIT] = 1;
    }
    let saved = &mut l.host;
    saved.cntvoff = sysreg::cntvoff_el2();
    saved.mdcr = sysreg::mdcr_el2();
    // The host's own return state: its VCPU_RUN trap returns with these
    // after the guest has used ELR_EL2/SPSR_EL2.
    saved.elr = sysreg::elr_el2();
    saved.spsr = sysreg::spsr_el2();
    save_el1(&mut saved.sys, false, l.mte);
    l.fp_guest = false;
    l.pauth_guest = false;
    let hcr = guest_hcr(host.hcr, l.mte);
    l.hcr = hcr;
    // SAFETY: the world switch in. Every EL1 register the guest can change
    // is saved above and restored by `unload`, or trapped by the HCR_EL2,
    // CPTR_EL2, MDCR_EL2, HCRX_EL2 and fine-grained trap values set here;
    // the guest will run under its own stage-2 (its VMID and tables) with
    // physical interrupts, WFI and SMC trapped to EL2, and come back through
    // `guest_vectors` to `__guest_run`'s caller. FP/SIMD and the PAC keys
    // stay the host's, trapped (CPTR_EL2.TFP, HCR_EL2.API/APK clear), until
    // the guest first uses them (`switch_lazy`).
    l.gic = unsafe {
        if kind.protected && f.pmu {
            // The host's counters do not count a protected guest.
            saved.pmcnten = sysreg::pmcntenset_el0();
            sysreg::set_pmcntenclr_el0(saved.pmcnten);
        }
        load_el1(&ctx.sys, false, l.mte);
        sysreg::set_cntvoff_el2(0);
        // The guest reads the counter but may not program the physical
        // timer (the host's): EL1PCEN clear traps it.
        sysreg::set_cnthctl_el2(1);
        // PMU and debug registers are the host's and not switched: trap the
        // guest's accesses to them (TPMCR, TPM, TDA, TDOSA, TDRA).
        sysreg::set_mdcr_el2(saved.mdcr | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11));
        sysreg::set_cptr_el2(CPTR_GUEST | CPTR_TFP);
        if f.hcx && f.hcrx_guest() != f.hcrx_host() {
            sysreg::set_hcrx_el2(f.hcrx_guest());
        }
        if f.fgt && f.fgt_guest() != f.fgt_host() {
            sysreg::set_hfgrtr_el2(f.fgt_guest());
            sysreg::set_hfgwtr_el2(f.fgt_guest());
        }
        sysreg::set_vmpidr_el2(vcpu & 0xff);
        sysreg::set_vttbr_el2(vttbr);
        sysreg::set_hcr_el2(hcr);
        sysreg::set_vbar_el2(guest_vectors as *const () as u64);
        let deadline = slice_end.min(gic::host_deadline(&saved.sys, saved.cntvoff));
        gic::enter(ctx, deadline)
    };
    true
}

/// Run the loaded guest from `ctx.pc` with `ctx.x` until its next trap.
pub fn enter(l: &mut Loaded, ctx: &mut VcpuContext) -> Trap {
    let mut irq = Trap::Irq;
    // SAFETY: the guest's state is loaded (`load`); its general registers
    // and exception return state come from `ctx` and go back there.
    let kind = unsafe {
        sysreg::set_elr_el2(ctx.pc);
        sysreg::set_spsr_el2(ctx.sys[SYS_SPSR]);
        sysreg::isb();
        let kind = __guest_run(ctx.x.as_mut_ptr());
        if kind == 1 {
            irq = gic::classify();
        }
        ctx.pc = sysreg::elr_el2();
        ctx.sys[SYS_SPSR] = sysreg::spsr_el2();
        kind
    };
    match kind {
        0 => decode_sync(l, ctx),
        1 => irq,
        _ => Trap::Fatal,
    }
}

/// Before [`unload`]: whether the guest left an SError behind. One the
/// guest caused may still be pending after its exit; EL2 runs with SErrors
/// masked, so it stays pending while EL2 handles traps and goes back into
/// the guest (which then exits with it: FATAL). Only before anything of the
/// host's is loaded back must it be taken, here at EL2 where it is the
/// guest's, so this window opens once per exit to the host, not per trap.
pub fn serror_pending() -> bool {
    // SAFETY: the window only unmasks SErrors for two instructions; the
    // vector `el2_serror` records one for this CPU and returns. ELR_EL2 and
    // SPSR_EL2 of the guest were saved by `enter`.
    unsafe { __serror_window() != 0 }
}

/// Between a trap EL2 handled and the next [`enter`]: interrupts injected
/// meanwhile and the timer into the list registers.
pub fn resync(l: &mut Loaded, ctx: &mut VcpuContext) {
    gic::resync(ctx, &mut l.gic);
}

/// Save the guest's state into `ctx` and put the host's back.
pub fn unload(l: &mut Loaded, ctx: &mut VcpuContext) {
    let Some(host) = HOST_REGS.get() else { return };
    let f = host.features;
    let saved = &l.host;
    // SAFETY: the world switch out: the guest's EL1, FP/SIMD and GIC state
    // go to `ctx`, the host's (read by `load`) come back, and EL2 is set
    // for the host again.
    unsafe {
        let init = ctx.sys[SYS_INIT];
        let spsr = ctx.sys[SYS_SPSR];
        save_el1(&mut ctx.sys, l.pauth_guest, l.mte);
        ctx.sys[SYS_INIT] = init;
        ctx.sys[SYS_SPSR] = spsr;
        gic::exit(ctx, &l.gic);
        if l.fp_guest {
            // CPTR_EL2.TFP is clear since the switch.
            __fp_save(ctx.fp.as_mut_ptr());
            __fp_load(saved.fp.as_ptr());
        }
        load_el1(&saved.sys, l.pauth_guest, l.mte);
        sysreg::set_cntvoff_el2(saved.cntvoff);
        sysreg::set_cnthctl_el2(3);
        sysreg::set_mdcr_el2(saved.mdcr);
        sysreg::set_cptr_el2(host.cptr);
        if f.hcx && f.hcrx_guest() != f.hcrx_host() {
            sysreg::set_hcrx_el2(f.hcrx_host());
        }
        if f.fgt && f.fgt_guest() != f.fgt_host() {
            sysreg::set_hfgrtr_el2(f.fgt_host());
            sysreg::set_hfgwtr_el2(f.fgt_host());
        }
        sysreg::set_vmpidr_el2(sysreg::mpidr_el1());
        sysreg::set_vbar_el2(crate::entry::el2_vectors as *const () as u64);
        sysreg::set_vttbr_el2(host.vttbr);
        sysreg::set_hcr_el2(host.hcr);
        sysreg::isb();
        if l.kind.protected && f.pmu {
            sysreg::set_pmcntenset_el0(saved.pmcnten);
        }
        sysreg::set_elr_el2(saved.elr);
        sysreg::set_spsr_el2(saved.spsr);
    }
}

/// Emulate a read of the ID register `S3_0_C0_<crm>_<op2>` (trapped by
/// HCR_EL2.TID3): the hardware's value as the VM may see it.
fn id_register(crm: u64, op2: u64, mte: bool) -> u64 {
    macro_rules! read_id {
        ($($crm:literal, $op2:literal;)*) => {
            match (crm, op2) {
                $(($crm, $op2) => {
                    let v: u64;
                    // SAFETY: reading the ID space has no side effects;
                    // unallocated encodings read as zero.
                    unsafe {
                        asm!(
                            concat!("mrs {}, S3_0_C0_C", $crm, "_", $op2),
                            out(reg) v,
                            options(nomem, nostack, preserves_flags)
                        )
                    };
                    v
                })*
                _ => 0,
            }
        };
    }
    let hw = read_id! {
        1, 0; 1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6; 1, 7;
        2, 0; 2, 1; 2, 2; 2, 3; 2, 4; 2, 5; 2, 6; 2, 7;
        3, 0; 3, 1; 3, 2; 3, 3; 3, 4; 3, 5; 3, 6; 3, 7;
        4, 0; 4, 1; 4, 2; 4, 3; 4, 4; 4, 5; 4, 6; 4, 7;
        5, 0; 5, 1; 5, 2; 5, 3; 5, 4; 5, 5; 5, 6; 5, 7;
        6, 0; 6, 1; 6, 2; 6, 3; 6, 4; 6, 5; 6, 6; 6, 7;
        7, 0; 7, 1; 7, 2; 7, 3; 7, 4; 7, 5; 7, 6; 7, 7;
    };
    hyp::idregs::guest_view((crm as u8, op2 as u8), hw, mte)
}

/// The guest's first FP/SIMD access or PAC use since [`load`]: save the
/// host's registers of that kind and load the guest's, stop trapping them,
/// and let the guest execute the instruction again. `false` if the trap is
/// not one of those (or the CPU has no PAC: the guest gets what the trap
/// means otherwise).
fn switch_lazy(l: &mut Loaded, ctx: &VcpuContext, esr: u64) -> bool {
    let Some(host) = HOST_REGS.get() else {
        return false;
    };
    match esr >> 26 {
        ec::FP if !l.fp_guest => {
            // SAFETY: FP/SIMD is untrapped for EL2 first (it traps EL2 too);
            // the host's registers go to `l`, to be put back by `unload`,
            // and the guest's come from its context: from here on the
            // guest sees only its own.
            unsafe {
                sysreg::set_cptr_el2(CPTR_GUEST);
                sysreg::isb();
                __fp_save(l.host.fp.as_mut_ptr());
                __fp_load(ctx.fp.as_ptr());
            }
            l.fp_guest = true;
            true
        }
        ec::PAC | ec::SYSREG if host.features.pauth && !l.pauth_guest => {
            if esr >> 26 == ec::SYSREG && !is_pauth_key(esr) {
                return false;
            }
            macro_rules! swap {
                ($i:expr, $r:literal) => {
                    // SAFETY: the host's key goes to `l` (put back by
                    // `unload`) before the guest's is loaded; EL2 does not
                    // use the EL1 keys.
                    unsafe {
                        asm!(concat!("mrs {}, ", $r), out(reg) l.host.sys[$i], options(nomem, nostack, preserves_flags));
                        asm!(concat!("msr ", $r, ", {}"), in(reg) ctx.sys[$i], options(nomem, nostack, preserves_flags));
                    }
                };
            }
            pauth_regs!(swap);
            l.pauth_guest = true;
            l.hcr |= HCR_PAUTH;
            // SAFETY: the guest's keys are loaded: its PAC instructions and
            // key registers no longer need to trap.
            unsafe { sysreg::set_hcr_el2(l.hcr) };
            true
        }
        _ => false,
    }
}

/// Whether a trapped system-register access (EC 0x18) is to a PAC key
/// register (Op0 3, Op1 0, CRn 2, CRm 1..=3).
fn is_pauth_key(esr: u64) -> bool {
    let iss = esr & 0x1ff_ffff;
    let (op0, op1, crn, crm) = (
        (iss >> 20) & 3,
        (iss >> 14) & 7,
        (iss >> 10) & 0xf,
        (iss >> 1) & 0xf,
    );
    (op0, op1, crn) == (3, 0, 2) && (1..=3).contains(&crm)
}

/// What a synchronous trap from the guest means.
fn decode_sync(l: &mut Loaded, ctx: &mut VcpuContext) -> Trap {
    let esr = sysreg::esr_el2();
    if switch_lazy(l, ctx, esr) {
        return Trap::Resume;
    }
    match esr >> 26 {
        ec::HVC64 => Trap::Hvc,
        ec::SMC64 => {
            // A trapped SMC returns past the instruction; treat it as a call,
            // answered here without any lock when its registers suffice (an
            // HVC's was already tried in the vector, `__guest_hvc`).
            ctx.pc = ctx.pc.wrapping_add(4);
            if hyp::answer_guest_call(ctx) {
                Trap::Resume
            } else {
                Trap::Hvc
            }
        }
        // A WFI with an interrupt waiting for the guest does not idle.
        ec::WFX if esr & 1 == 0 && !gic::guest_has_pending(ctx, &l.gic) => Trap::Wfi,
        ec::WFX => {
            ctx.pc = ctx.pc.wrapping_add(4);
            Trap::Resume
        }
        ec::SYSREG => {
            // Writes to ICC_SGI1R_EL1, ICC_ASGI1R_EL1 and ICC_SGI0R_EL1
            // (Op0 3, Op1 0, CRn 12, CRm 11, Op2 5..=7) trap with IMO set.
            let iss = esr & 0x1ff_ffff;
            let (op0, op2, op1) = ((iss >> 20) & 3, (iss >> 17) & 7, (iss >> 14) & 7);
            let (crn, rt, crm, read) = (
                (iss >> 10) & 0xf,
                (iss >> 5) & 0x1f,
                (iss >> 1) & 0xf,
                iss & 1,
            );
            if (op0, op1, crn, crm, read) == (3, 0, 12, 11, 0) && (5..=7).contains(&op2) {
                let value = ctx.x.get(rt as usize).copied().unwrap_or(0);
                ctx.pc = ctx.pc.wrapping_add(4);
                Trap::Sgi { value }
            } else if read == 1 && hyp::idregs::is_id_space(op0, op1, crn, crm) {
                // A read of XZR discards the value.
                let value = id_register(crm, op2, l.kind.mte);
                if let Some(r) = ctx.x.get_mut(rt as usize) {
                    *r = value;
                }
                ctx.pc = ctx.pc.wrapping_add(4);
                Trap::Resume
            } else if read == 0 && hyp::debugregs::write_ignored(op0, op1) {
                ctx.pc = ctx.pc.wrapping_add(4);
                Trap::Resume
            } else {
                Trap::Fatal
            }
        }
        ec::DABT_LOW | ec::IABT_LOW => {
            let fsc = esr & 0x3f;
            if !(0x04..=0x0f).contains(&fsc) {
                return Trap::Fatal;
            }
            let ipa = ((sysreg::hpfar_el2() >> 4) << 12) | (sysreg::far_el2() & 0xfff);
            if esr >> 26 == ec::IABT_LOW {
                return Trap::InstAbort { ipa, esr };
            }
            let isv = esr & (1 << 24) != 0;
            let (size, reg) = if isv {
                (1u8 << ((esr >> 22) & 3), ((esr >> 16) & 0x1f) as u8)
            } else {
                (8, 31)
            };
            Trap::DataAbort {
                ipa,
                write: esr & (1 << 6) != 0,
                size,
                reg,
                esr,
            }
        }
        _ => Trap::Fatal,
    }
}
