//! The guest program of the `abifuzz` mode ([`crate::abi_fuzz`]): a
//! position-independent EL1 program, entered with its MMU off, that the
//! host copies to [`CODE_IPA`] and drives through HVC exits.
//!
//! Layout of the VM's memory (IPAs):
//!
//! | IPA | what |
//! |---|---|
//! | [`CODE_IPA`], [`CODE_PAGES`] pages | this program, R+X |
//! | [`STATUS_IPA`] | the status page: one [`SLOT_SIZE`] slot per vCPU (by MPIDR Aff0), RW |
//! | [`SCRATCH_IPA`], [`SCRATCH_PAGES`] pages | donated RW memory the guest may touch |
//! | [`DATA_NEAR_IPA`], [`NEAR_PAGES`] pages | nothing mapped: data accesses fault, the host may map pages |
//! | [`EXEC_NEAR_IPA`], [`NEAR_PAGES`] pages | nothing mapped: instruction fetches fault, the host may map `ret` pages |
//! | [`GUARD_IPA`], [`GUARD_PAGES`] pages | MMIO_GUARD'ed at boot: accesses are MMIO exits |
//!
//! **Boot.** `fg_start` (the run page's entry point) sets SP to its slot
//! and VBAR_EL1 to its vectors, MEM_SHAREs the status page (so that a
//! protected VM's host can read it; in a normal VM the page is already the
//! host's and the call fails), MMIO_GUARDs the guard pages and reports
//! [`BOOT_PRIMARY`]. `fuzz_guest_secondary` (the entry point guest PSCI
//! CPU_ON gives, [`secondary_offset`]) does the same without the calls and
//! reports [`BOOT_SECONDARY`].
//!
//! **Commands.** The guest then loops: HVC [`FG_NEXT`] with x1 = what the
//! last command did (an [`op`] code, or a boot kind) and x2..x6 its
//! results; the host answers with x0 = the next command (low 8 bits an
//! [`op`] code; for [`op::CALL`] and [`op::SMC_CALL`] the rest is the
//! call's x3), x1..x3 its
//! operands. See [`op`] for each command's operands and results.
//!
//! **Fuzzing** ([`op::FUZZ`]): iterations `start..end` of random
//! operations from an xorshift64* generator seeded by the host. Before each
//! operation the guest writes it to its slot's record ([`rec`]): the
//! iteration, the generator state after choosing it (to resume in a fresh
//! VM when the host ends this one), and the operation. An operation is:
//!
//! - 70%: a guest call, HVC or SMC, with a function ID that is 45% one of
//!   ABI.md 2's guest calls ([`GUEST_CALL_IDS`]), else from the PSCI,
//!   host-call (0xC600_01xx), vendor-hypervisor and Arm-architecture ranges
//!   or any value; and x1..x6 biased towards 0, small numbers, IPAs of its
//!   own pages (aligned or not), the guard, near, far and beyond-40-bit
//!   IPAs, MPIDRs and function IDs; three times in four x1 is of the kind
//!   the call takes (a function ID for the FEATURES calls, an MPIDR for
//!   CPU_ON and AFFINITY_INFO, one of its own pages for MEM_SHARE and
//!   MEM_UNSHARE, a guard page for MMIO_GUARD). Three calls in four have
//!   x2..x6 zero (CPU_ON keeps a random entry point and context). CPU_OFF,
//!   SYSTEM_OFF and SYSTEM_RESET are kept one time in sixteen (they end the
//!   VM), and MEM_UNSHARE never names the status page.
//! - 21%: a load or store of 1, 2, 4 or 8 bytes, to scratch memory, a guard
//!   page, a near page, a far or beyond-40-bit IPA, or misaligned.
//! - 6%: a branch (`blr`) to a near exec page, a scratch page (not
//!   executable), a far or beyond-40-bit IPA or a guard page.
//! - 3%: WFI.
//!
//! After each call the guest checks that x4..x30 did not change and, for
//! the calls the hypervisor answers itself, the results ABI.md 2 gives
//! (the host-call range answers NOT_SUPPORTED; every other ID is the
//! host's, which answers [`forwarded_answer`]). After each access it
//! checks the EL1 exception it did or did not take and the value a read
//! returned ([`expected_read`]): a misaligned access may take an alignment
//! fault at EL1 or none (with FWB the hypervisor's stage 2 makes guest RAM
//! Normal memory, where misaligned accesses are allowed; one to a guard
//! page then reaches the host as MMIO). Each mismatch is reported with HVC
//! [`FG_VIOLATION`]: x1 = iteration, x2 = a [`violation`] code, x3 = the
//! function ID, x4 = got, x5 = wanted, x6 = detail; the guest then goes on.
//!
//! **Exceptions at EL1.** A synchronous exception (an alignment fault, an
//! address-size fault, an undefined instruction) is recorded in the slot
//! ([`rec::EXC_ESR`], [`rec::EXC_FAR`]) and skipped: an instruction abort
//! returns to x30 (the caller of `blr`), anything else resumes after the
//! faulting instruction. Any other exception is reported with HVC
//! [`FG_UNEXPECTED`] (x1 = ESR, x2 = ELR, x3 = FAR, x4 = vector index),
//! again each time the vCPU runs.

use core::arch::{asm, global_asm};

/// IPA of the program.
pub const CODE_IPA: u64 = 0x4000_0000;
/// Pages of the program.
pub const CODE_PAGES: u64 = 3;
/// IPA of the status page.
pub const STATUS_IPA: u64 = CODE_IPA + CODE_PAGES * 0x1000;
/// IPA of the first scratch page.
pub const SCRATCH_IPA: u64 = STATUS_IPA + 0x1000;
/// Scratch pages.
pub const SCRATCH_PAGES: u64 = 4;
/// Pages at [`CODE_IPA`] the host gives the VM before it runs: the
/// program, the status page, the scratch pages.
pub const OWN_PAGES: u64 = CODE_PAGES + 1 + SCRATCH_PAGES;
/// First page of the near data region.
pub const DATA_NEAR_IPA: u64 = 0x4010_0000;
/// First page of the near exec region.
pub const EXEC_NEAR_IPA: u64 = 0x4020_0000;
/// Pages in each near region.
pub const NEAR_PAGES: u64 = 16;
/// First guard page.
pub const GUARD_IPA: u64 = 0x5000_0000;
/// Guard pages.
pub const GUARD_PAGES: u64 = 8;
/// Bytes of one vCPU's slot in the status page.
pub const SLOT_SIZE: u64 = 0x800;
/// First IPA beyond the guest's 40-bit IPA space.
pub const IPA_LIMIT: u64 = 1 << host_interface::GUEST_IPA_BITS;

/// Guest-to-host: the last command is done; x1 = what it was, x2..x6 its
/// results. The host answers with the next command.
pub const FG_NEXT: u64 = 0xC600_0F20;
/// Guest-to-host: a check failed (see the module documentation).
pub const FG_VIOLATION: u64 = 0xC600_0F21;
/// Guest-to-host: an exception the guest cannot continue from.
pub const FG_UNEXPECTED: u64 = 0xC600_0F22;

/// x1 of the first [`FG_NEXT`] after `fg_start`: x2 = x0 at entry, x3 =
/// MPIDR_EL1, x4 = MEM_SHARE's x0 for the status page, x5 = how many
/// MMIO_GUARD calls failed.
pub const BOOT_PRIMARY: u64 = 0x100;
/// x1 of the first [`FG_NEXT`] after `fuzz_guest_secondary`: x2 = x0 at entry
/// (the CPU_ON context), x3 = MPIDR_EL1.
pub const BOOT_SECONDARY: u64 = 0x101;

/// Commands (x0 of the host's answer to [`FG_NEXT`], low 8 bits) and the
/// results they report (x1 = the command, then x2..).
pub mod op {
    /// Fuzz: x1 = generator state, x2 = `start | end << 32` (iterations),
    /// x3 = [`super::flags`]. Reports x2 = the iteration reached (`end`),
    /// x3 = the generator state.
    pub const FUZZ: u64 = 1;
    /// Load x2 (1, 2, 4, 8) bytes at x1 (`ldrb`/`ldrh`/`ldr w`/`ldr x` into
    /// x1). Reports x2 = the value, x3 = ESR_EL1 of an EL1 exception (0:
    /// none), x4 = its FAR.
    pub const READ: u64 = 2;
    /// Store x2 bytes of x3 at x1. Reports x3 = ESR, x4 = FAR.
    pub const WRITE: u64 = 3;
    /// `blr x1`. Reports x3 = ESR, x4 = FAR.
    pub const EXEC: u64 = 4;
    /// `hvc #0` with x0 = x1, x1 = x2, x2 = x3, x3 = the command's bits
    /// 63:8, x4..x6 = 0. Reports x2..x5 = x0..x3 after the call.
    pub const CALL: u64 = 5;
    /// As [`CALL`], with `smc #0`.
    pub const SMC_CALL: u64 = 6;
    /// PSCI CPU_ON (SMC64) of MPIDR x1 at `fuzz_guest_secondary` with
    /// context x2.
    /// Reports x2 = x0 after the call.
    pub const CPU_ON: u64 = 7;
    /// Store 1 at x2, then spin (loads only, no trap) until the 8 bytes at
    /// x1 are not zero or x3 ticks of CNTVCT_EL0 passed. Reports x2 = 0
    /// (released) or 1 (timed out).
    pub const SPIN: u64 = 8;
    /// Access a register the hypervisor traps but does not emulate, by x1:
    /// [`super::sysreg`]. Reports (if it ever returns) x2 = the value read,
    /// x3 = ESR of an EL1 exception.
    pub const SYSREG: u64 = 9;
    /// `wfi`. Reports nothing more.
    pub const WFI: u64 = 10;
    /// x1 of the report when the command was not one of these (x2 = it).
    pub const UNKNOWN: u64 = 0xff;
}

/// [`op::FUZZ`] flags (x3).
pub mod flags {
    /// The VM is protected.
    pub const PROTECTED: u64 = 1 << 0;
    /// Shift of the VM's vCPU count (bits 15:8).
    pub const VCPUS_SHIFT: u32 = 8;
}

/// [`op::SYSREG`] selectors.
pub mod sysreg {
    /// `mrs PMCR_EL0` (MDCR_EL2.TPM/TPMCR).
    pub const PMCR_READ: u64 = 0;
    /// `mrs CNTP_CTL_EL0` (CNTHCTL_EL2.EL1PCEN clear).
    pub const CNTP_CTL_READ: u64 = 1;
    /// `msr CNTP_CTL_EL0, xzr`.
    pub const CNTP_CTL_WRITE: u64 = 2;
    /// `mrs DBGBVR0_EL1` (MDCR_EL2.TDA).
    pub const DBGBVR0_READ: u64 = 3;
    /// `mrs OSLSR_EL1` (MDCR_EL2.TDOSA).
    pub const OSLSR_READ: u64 = 4;
}

/// Byte offsets in a vCPU's slot.
pub mod rec {
    /// x4..x30 before the last fuzz call (27 words).
    pub const SAVE_A: u64 = 0x000;
    /// x4..x30 after it.
    pub const SAVE_B: u64 = 0x0e0;
    /// Iteration of the current operation (`u64::MAX`: none yet, written
    /// by the host).
    pub const ITER: u64 = 0x1c0;
    /// Generator state after choosing the operation.
    pub const STATE: u64 = 0x1c8;
    /// The operation's [`super::kind`].
    pub const KIND: u64 = 0x1d0;
    /// A call's function ID; an access's or branch's address.
    pub const ADDR: u64 = 0x1d8;
    /// x1..x6 of a call; size, value and [`super::category`] of an access;
    /// category of a branch.
    pub const ARGS: u64 = 0x1e0;
    /// 0: HVC, 1: SMC.
    pub const CONDUIT: u64 = 0x210;
    /// ESR_EL1 of the last EL1 exception (cleared before an access).
    pub const EXC_ESR: u64 = 0x218;
    /// FAR_EL1 of it.
    pub const EXC_FAR: u64 = 0x220;
    /// x0..x3 after the last fuzz call.
    pub const RESULTS: u64 = 0x228;
    /// One byte per own page ([`super::OWN_PAGES`] of them): 0 owned, 1
    /// shared (MEM_SHARE), 2 borrowed.
    pub const OWN_STATE: u64 = 0x250;
}

/// [`rec::KIND`] values.
pub mod kind {
    /// A guest call.
    pub const CALL: u64 = 1;
    /// A load.
    pub const READ: u64 = 2;
    /// A store.
    pub const WRITE: u64 = 3;
    /// A `blr`.
    pub const EXEC: u64 = 4;
    /// A `wfi`.
    pub const WFI: u64 = 5;
}

/// Where an access or a branch goes (the record's third argument).
pub mod category {
    /// Scratch memory (mapped RW, not executable).
    pub const SCRATCH: u64 = 1;
    /// A guard page.
    pub const GUARD: u64 = 2;
    /// The near data or exec region.
    pub const NEAR: u64 = 3;
    /// A random IPA below 2^40.
    pub const FAR: u64 = 4;
    /// At or above 2^40.
    pub const BEYOND: u64 = 5;
    /// Misaligned (scratch or guard).
    pub const UNALIGNED: u64 = 6;
}

/// [`FG_VIOLATION`] codes (x2).
pub mod violation {
    /// x(x6) changed across a call (x4 after, x5 before).
    pub const CLOBBERED: u64 = 1;
    /// x0 after the call (x4) is not x5.
    pub const X0: u64 = 2;
    /// x1 after the call.
    pub const X1: u64 = 3;
    /// x2 after the call.
    pub const X2: u64 = 4;
    /// x3 after the call.
    pub const X3: u64 = 5;
    /// x0 is neither x5 nor x6.
    pub const X0_EITHER: u64 = 6;
    /// The call returned (x4 = x0), which it must not.
    pub const RETURNED: u64 = 7;
    /// A load gave x4, not x5.
    pub const READ_VALUE: u64 = 8;
    /// ESR_EL1 after the access or branch is x4, not x5 (0: no exception).
    pub const EL1_EXCEPTION: u64 = 9;
}

/// Guest-call function IDs the guest draws from, in the order of its
/// table: ABI.md 2's calls, PSCI's SMC32 forms included. Index 0 and 8..
/// are the IDs PSCI_FEATURES reports.
pub const GUEST_CALL_IDS: [u64; 20] = [
    0x8000_0000,
    0x8000_0001,
    0x8600_FF01,
    0x8600_0000,
    0xC600_0002,
    0xC600_0003,
    0xC600_0004,
    0xC600_0007,
    0x8400_0000,
    0xC400_0001,
    0x8400_0001,
    0x8400_0002,
    0xC400_0003,
    0x8400_0003,
    0xC400_0004,
    0x8400_0004,
    0x8400_0006,
    0x8400_0008,
    0x8400_0009,
    0x8400_000A,
];

/// [`rec::OWN_STATE`] of a protected VM at the start of fuzzing: the
/// status page shared (the guest's MEM_SHARE at boot), the rest owned.
const OWN_STATE_PROTECTED: u64 = 1 << (8 * CODE_PAGES);
/// [`rec::OWN_STATE`] of a normal VM: the program and the status page
/// borrowed (GUEST_SHARE), the scratch pages owned (GUEST_DONATE).
const OWN_STATE_NORMAL: u64 = 0x0202_0202_0202_0202 & ((1 << (8 * (CODE_PAGES + 1))) - 1);

const _: () = assert!(OWN_PAGES <= 8, "one byte of OWN_STATE per own page");

/// Multiplier of [`expected_read`]'s word function.
pub const F_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// What a load of `size` bytes at `ipa` (aligned to `size`) must give
/// where the host provides the data (MMIO, emulated MEM_FAULT, a page it
/// mapped): the bytes of the little-endian word `(ipa & !7) * F_MUL`.
pub fn expected_read(ipa: u64, size: u64) -> u64 {
    let word = (ipa & !7).wrapping_mul(F_MUL) >> ((ipa & 7) * 8);
    match size {
        1 => word & 0xff,
        2 => word & 0xffff,
        4 => word & 0xffff_ffff,
        _ => word,
    }
}

/// The host's answer (x0..x3) to a call `args` (x0..x6) forwarded to it as
/// an HVC exit; the guest checks it got exactly this.
pub fn forwarded_answer(args: &[u64; 7]) -> [u64; 4] {
    [
        args[0] ^ args[4],
        args[1] ^ args[5],
        args[2] ^ args[6],
        !args[3],
    ]
}

/// Two `ret` instructions: the content of the pages the host maps at
/// instruction-fetch faults.
pub const RET_PAIR: u64 = 0xd65f_03c0_d65f_03c0;

global_asm!(
    r#"
.macro fg_mov64 reg, val
    movz    \reg, #((\val) & 0xffff)
    movk    \reg, #(((\val) >> 16) & 0xffff), lsl #16
    movk    \reg, #(((\val) >> 32) & 0xffff), lsl #32
    movk    \reg, #(((\val) >> 48) & 0xffff), lsl #48
.endm

// A mismatch between registers `got` and `want` is violation `code`.
.macro fg_check got, want, code
    cmp     \got, \want
    b.eq    9999f
    mov     x4, \got
    mov     x5, \want
    mov     x6, xzr
    mov     x2, #\code
    bl      fg_violation
9999:
.endm

.macro fg_check_imm got, imm, code
    fg_mov64 x17, \imm
    fg_check \got, x17, \code
.endm

// `got` must be `a` or `b` (registers other than x4..x6).
.macro fg_check_either got, a, b, code
    cmp     \got, \a
    b.eq    9999f
    cmp     \got, \b
    b.eq    9999f
    mov     x4, \got
    mov     x5, \a
    mov     x6, \b
    mov     x2, #\code
    bl      fg_violation
9999:
.endm

// x4..x30 into the slot at `base`.
.macro fg_save base
    stp     x4, x5, [sp, #(\base)]
    stp     x6, x7, [sp, #(\base + 16)]
    stp     x8, x9, [sp, #(\base + 32)]
    stp     x10, x11, [sp, #(\base + 48)]
    stp     x12, x13, [sp, #(\base + 64)]
    stp     x14, x15, [sp, #(\base + 80)]
    stp     x16, x17, [sp, #(\base + 96)]
    stp     x18, x19, [sp, #(\base + 112)]
    stp     x20, x21, [sp, #(\base + 128)]
    stp     x22, x23, [sp, #(\base + 144)]
    stp     x24, x25, [sp, #(\base + 160)]
    stp     x26, x27, [sp, #(\base + 176)]
    stp     x28, x29, [sp, #(\base + 192)]
    str     x30, [sp, #(\base + 208)]
.endm

.section .rodata.fuzz_guest, "a"
.balign 4096
.global fuzz_guest_start
fuzz_guest_start:
fg_start:
    mov     x19, x0
    adr     x20, fg_start
    bl      fg_setup
    // MEM_SHARE the status page.
    fg_mov64 x0, 0xC6000003
    add     x1, x20, #{status_off}
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
    mov     x26, x0
    // MMIO_GUARD the guard pages; x25 counts failures.
    mov     x25, xzr
    mov     x24, xzr
1:  fg_mov64 x0, 0xC6000007
    fg_mov64 x1, {guard_ipa}
    add     x1, x1, x24, lsl #12
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
    cbz     x0, 2f
    add     x25, x25, #1
2:  add     x24, x24, #1
    cmp     x24, #{guard_pages}
    b.lo    1b
    mov     x1, #{boot_primary}
    mov     x2, x19
    mrs     x3, mpidr_el1
    mov     x4, x26
    mov     x5, x25
    mov     x6, xzr
    b       fg_cmd_loop

.global fuzz_guest_secondary
fuzz_guest_secondary:
    mov     x19, x0
    adr     x20, fg_start
    bl      fg_setup
    mov     x1, #{boot_secondary}
    mov     x2, x19
    mrs     x3, mpidr_el1
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    b       fg_cmd_loop

// SP = this vCPU's slot (Aff0 & 1), VBAR_EL1 = the vectors. x20 = the
// program's IPA. Clobbers x9, x10.
fg_setup:
    mrs     x9, mpidr_el1
    and     x9, x9, #1
    add     x10, x20, #{status_off}
    add     x10, x10, x9, lsl #11
    mov     sp, x10
    adr     x9, fg_vectors
    msr     vbar_el1, x9
    isb
    ret

// Report x1..x6, run the host's next command.
fg_cmd_loop:
    fg_mov64 x0, {fg_next}
    hvc     #0
    and     x9, x0, #0xff
    cmp     x9, #{op_fuzz}
    b.eq    fg_op_fuzz
    cmp     x9, #{op_read}
    b.eq    fg_op_read
    cmp     x9, #{op_write}
    b.eq    fg_op_write
    cmp     x9, #{op_exec}
    b.eq    fg_op_exec
    cmp     x9, #{op_call}
    b.eq    fg_op_call
    cmp     x9, #{op_smc_call}
    b.eq    fg_op_call
    cmp     x9, #{op_cpu_on}
    b.eq    fg_op_cpu_on
    cmp     x9, #{op_spin}
    b.eq    fg_op_spin
    cmp     x9, #{op_sysreg}
    b.eq    fg_op_sysreg
    cmp     x9, #{op_wfi}
    b.eq    fg_op_wfi
    mov     x2, x0
    mov     x1, #{op_unknown}
    b       fg_cmd_loop

fg_op_read:
    mov     x9, x1
    mov     x10, x2
    mov     x12, xzr
    bl      fg_access
    mov     x2, x1
    mov     x1, #{op_read}
    b       fg_op_exc

fg_op_write:
    mov     x9, x1
    mov     x10, x2
    mov     x11, x3
    mov     x12, #1
    bl      fg_access
    mov     x2, xzr
    mov     x1, #{op_write}
    b       fg_op_exc

fg_op_exec:
    str     xzr, [sp, #{exc_esr}]
    blr     x1
    mov     x2, xzr
    mov     x1, #{op_exec}
fg_op_exc:
    ldr     x3, [sp, #{exc_esr}]
    ldr     x4, [sp, #{exc_far}]
    mov     x5, xzr
    mov     x6, xzr
    b       fg_cmd_loop

fg_op_call:
    lsr     x10, x0, #8
    mov     x0, x1
    mov     x1, x2
    mov     x2, x3
    mov     x3, x10
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    cmp     x9, #{op_smc_call}
    b.eq    1f
    hvc     #0
    b       2f
1:  smc     #0
2:  mov     x5, x3
    mov     x4, x2
    mov     x3, x1
    mov     x2, x0
    mov     x6, xzr
    mov     x1, x9
    b       fg_cmd_loop

fg_op_cpu_on:
    mov     x3, x2
    adr     x2, fuzz_guest_secondary
    fg_mov64 x0, 0xC4000003
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    hvc     #0
    mov     x2, x0
    mov     x1, #{op_cpu_on}
    b       fg_cmd_loop

fg_op_spin:
    mov     x9, #1
    str     x9, [x2]
    isb
    mrs     x10, cntvct_el0
1:  ldr     x9, [x1]
    cbnz    x9, 2f
    isb
    mrs     x11, cntvct_el0
    sub     x11, x11, x10
    cmp     x11, x3
    b.lo    1b
    mov     x2, #1
    b       3f
2:  mov     x2, xzr
3:  mov     x1, #{op_spin}
    b       fg_cmd_loop

fg_op_sysreg:
    str     xzr, [sp, #{exc_esr}]
    mov     x2, xzr
    cmp     x1, #0
    b.eq    10f
    cmp     x1, #1
    b.eq    11f
    cmp     x1, #2
    b.eq    12f
    cmp     x1, #3
    b.eq    13f
    cmp     x1, #4
    b.eq    14f
    mov     x2, x1
    mov     x1, #{op_unknown}
    b       fg_cmd_loop
10: mrs     x2, pmcr_el0
    b       19f
11: mrs     x2, cntp_ctl_el0
    b       19f
12: msr     cntp_ctl_el0, xzr
    b       19f
13: mrs     x2, dbgbvr0_el1
    b       19f
14: mrs     x2, oslsr_el1
19: ldr     x3, [sp, #{exc_esr}]
    mov     x1, #{op_sysreg}
    b       fg_cmd_loop

fg_op_wfi:
    wfi
    mov     x1, #{op_wfi}
    b       fg_cmd_loop

// Load (x12 = 0) or store (x12 = 1) of x10 bytes (1, 2, 4, else 8) at x9;
// a store writes x11, a load returns the value in x1. Clears the slot's
// exception record first.
fg_access:
    str     xzr, [sp, #{exc_esr}]
    mov     x1, xzr
    cbnz    x12, 5f
    cmp     x10, #1
    b.eq    1f
    cmp     x10, #2
    b.eq    2f
    cmp     x10, #4
    b.eq    4f
    ldr     x1, [x9]
    ret
1:  ldrb    w1, [x9]
    ret
2:  ldrh    w1, [x9]
    ret
4:  ldr     w1, [x9]
    ret
5:  cmp     x10, #1
    b.eq    1f
    cmp     x10, #2
    b.eq    2f
    cmp     x10, #4
    b.eq    4f
    str     x11, [x9]
    ret
1:  strb    w11, [x9]
    ret
2:  strh    w11, [x9]
    ret
4:  str     w11, [x9]
    ret

// The generator: xorshift64*. fg_rand: x0 = next value. fg_below: x0 =
// next value scaled to [0, x1). Both clobber x9.
fg_rand:
    eor     x21, x21, x21, lsr #12
    eor     x21, x21, x21, lsl #25
    eor     x21, x21, x21, lsr #27
    fg_mov64 x9, 0x2545F4914F6CDD1D
    mul     x0, x21, x9
    ret
fg_below:
    eor     x21, x21, x21, lsr #12
    eor     x21, x21, x21, lsl #25
    eor     x21, x21, x21, lsr #27
    fg_mov64 x9, 0x2545F4914F6CDD1D
    mul     x0, x21, x9
    umulh   x0, x0, x1
    ret

// A biased argument value in x0: fg_value of a random kind, fg_value_of
// of kind x10 (0..99, as below). Clobbers x1, x9..x12.
fg_value:
    mov     x12, x30
    mov     x1, #100
    bl      fg_below
    mov     x10, x0
    b       0f
fg_value_of:
    mov     x12, x30
0:  bl      fg_rand
    mov     x30, x12
    cmp     x10, #30
    b.lo    1f
    cmp     x10, #40
    b.lo    2f
    cmp     x10, #55
    b.lo    3f
    cmp     x10, #60
    b.lo    4f
    cmp     x10, #65
    b.lo    5f
    cmp     x10, #70
    b.lo    6f
    cmp     x10, #75
    b.lo    7f
    cmp     x10, #80
    b.lo    8f
    cmp     x10, #90
    b.lo    9f
    ret                                 // any value
1:  mov     x0, xzr
    ret
2:  and     x0, x0, #0xf
    ret
3:  // One of its own pages, one time in four at a random offset.
    mov     x10, #{own_pages}
    umulh   x9, x0, x10
    add     x9, x20, x9, lsl #12
    and     x11, x0, #0xfff
    tst     x0, #0x300000
    b.ne    31f
    add     x9, x9, x11
31: mov     x0, x9
    ret
4:  ubfx    x9, x0, #20, #3
    fg_mov64 x10, {guard_ipa}
    add     x0, x10, x9, lsl #12
    ret
5:  ubfx    x9, x0, #20, #4
    fg_mov64 x10, {data_near_ipa}
    add     x9, x10, x9, lsl #12
    and     x11, x0, #0xfff
    tst     x0, #0x30000000
    b.ne    51f
    add     x9, x9, x11
51: mov     x0, x9
    ret
6:  and     x9, x0, #0xffffffffff
    tst     x0, #0x3000000000000000
    b.eq    61f
    and     x9, x9, #0xfffffffffffff000
61: mov     x0, x9
    ret
7:  tst     x0, #0x4000000000000000
    b.eq    71f
    and     x9, x0, #0xfff
    mvn     x0, x9
    ret
71: and     x9, x0, #0xfffff000
    orr     x0, x9, #0x10000000000
    ret
8:  and     x9, x0, #3
    tst     x0, #0x100
    b.eq    81f
    orr     x9, x9, #0x80000000
81: tst     x0, #0x200
    b.eq    82f
    mov     x9, #0x100
82: mov     x0, x9
    ret
9:  mov     x10, #{nids}
    umulh   x9, x0, x10
    adr     x10, fg_ids
    ldr     x0, [x10, x9, lsl #3]
    ret

// x2 = code, x4 = got, x5 = want, x6 = detail: report, then go on.
fg_violation:
    fg_mov64 x0, {fg_violation_id}
    mov     x1, x22
    mov     x3, x25
    hvc     #0
    ret

// x17 = what MPIDR x7 names: 0 nothing (bits other than Aff0, or no such
// vCPU), 1 this vCPU, 2 another vCPU of the VM. Clobbers x18.
fg_target_kind:
    mov     x17, xzr
    tst     x7, #0xffffffffffffff00
    b.ne    1f
    ubfx    x18, x24, #{vcpus_shift}, #8
    cmp     x7, x18
    b.hs    1f
    mov     x17, #2
    mrs     x18, mpidr_el1
    and     x18, x18, #0xff
    cmp     x7, x18
    b.ne    1f
    mov     x17, #1
1:  ret

// x17 = whether the VM owns IPA x8: 0 no, 1 yes (its own pages), 2 maybe
// (a near page the host may have donated). Clobbers x18.
fg_owned:
    mov     x17, xzr
    lsr     x18, x8, #40
    cbnz    x18, 1f
    mov     x17, #1
    sub     x18, x8, x20
    cmp     x18, #{own_bytes}
    b.lo    1f
    mov     x17, #2
    fg_mov64 x18, {data_near_ipa}
    sub     x18, x8, x18
    cmp     x18, #{near_bytes}
    b.lo    1f
    fg_mov64 x18, {exec_near_ipa}
    sub     x18, x8, x18
    cmp     x18, #{near_bytes}
    b.lo    1f
    mov     x17, xzr
1:  ret

// x17 = expected_read(x9, x10). Clobbers x18, x26.
fg_expected:
    and     x17, x9, #0xfffffffffffffff8
    fg_mov64 x18, {f_mul}
    mul     x17, x17, x18
    and     x18, x9, #7
    lsl     x18, x18, #3
    lsr     x17, x17, x18
    cmp     x10, #8
    b.hs    1f
    lsl     x18, x10, #3
    mov     x26, #1
    lsl     x26, x26, x18
    sub     x26, x26, #1
    and     x17, x17, x26
1:  ret

// Iteration and generator state into the record.
fg_record_head:
    str     x22, [sp, #{rec_iter}]
    str     x21, [sp, #{rec_state}]
    ret

// ---------------------------------------------------------------------
// Fuzzing: x21 = generator state, x22 = iteration, x23 = end, x24 = flags,
// x25 = the current call's function ID.
fg_op_fuzz:
    mov     x21, x1
    cbnz    x21, 1f
    mov     x21, #1
1:  and     x22, x2, #0xffffffff
    lsr     x23, x2, #32
    mov     x24, x3
    // Own pages: a protected VM owns its program and scratch pages and
    // shared the status page; a normal VM borrows the program and status
    // pages. Scratch pages are donated in both.
    fg_mov64 x9, {own_state_protected}
    fg_mov64 x10, {own_state_normal}
    tst     x24, #{flag_protected}
    csel    x9, x9, x10, ne
    str     x9, [sp, #{own_state}]
fg_fuzz_loop:
    cmp     x22, x23
    b.hs    fg_fuzz_done
    mov     x1, #100
    bl      fg_below
    cmp     x0, #70
    b.lo    fg_gen_call
    cmp     x0, #91
    b.lo    fg_gen_access
    cmp     x0, #97
    b.lo    fg_gen_exec
    mov     x9, #{kind_wfi}
    str     x9, [sp, #{rec_kind}]
    bl      fg_record_head
    wfi
fg_fuzz_next:
    add     x22, x22, #1
    b       fg_fuzz_loop
fg_fuzz_done:
    mov     x1, #{op_fuzz}
    mov     x2, x22
    mov     x3, x21
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    b       fg_cmd_loop

fg_gen_call:
    mov     x1, #100
    bl      fg_below
    mov     x26, x0
    cmp     x26, #45
    b.hs    1f
    mov     x1, #{nids}
    bl      fg_below
    adr     x9, fg_ids
    ldr     x25, [x9, x0, lsl #3]
    b       6f
1:  bl      fg_rand
    cmp     x26, #60
    b.hs    2f
    and     x9, x0, #0x1f
    fg_mov64 x25, 0x84000000
    tst     x0, #0x100
    b.eq    11f
    fg_mov64 x25, 0xC4000000
11: add     x25, x25, x9
    b       6f
2:  cmp     x26, #72
    b.hs    3f
    and     x9, x0, #0xff
    fg_mov64 x25, 0xC6000100
    add     x25, x25, x9
    b       6f
3:  cmp     x26, #80
    b.hs    4f
    and     x9, x0, #0x1f
    ubfx    x10, x0, #8, #2
    fg_mov64 x25, 0xC6000000
    cmp     x10, #1
    b.ne    31f
    fg_mov64 x25, 0x86000000
31: cmp     x10, #2
    b.ne    32f
    fg_mov64 x25, 0x8600FF00
32: add     x25, x25, x9
    b       6f
4:  cmp     x26, #85
    b.hs    5f
    and     x9, x0, #3
    fg_mov64 x25, 0x80000000
    tst     x0, #0x100
    b.eq    41f
    fg_mov64 x25, 0x80008000
41: add     x25, x25, x9
    b       6f
5:  mov     x25, x0
    tst     x0, #0x100
    b.eq    6f
    and     x25, x25, #0xffffffff
6:  // Never one of the guest's own report IDs.
    lsr     x9, x25, #8
    fg_mov64 x10, 0xC6000F
    cmp     x9, x10
    b.ne    7f
    eor     x25, x25, #0x1000
7:  // CPU_OFF, SYSTEM_OFF, SYSTEM_RESET end the VM: keep one in 16.
    fg_mov64 x9, 0x84000002
    cmp     x25, x9
    b.eq    71f
    fg_mov64 x9, 0x84000008
    cmp     x25, x9
    b.eq    71f
    fg_mov64 x9, 0x84000009
    cmp     x25, x9
    b.ne    8f
71: mov     x1, #16
    bl      fg_below
    cbz     x0, 8f
    fg_mov64 x25, 0x84000000
8:  // x1: three times in four of the kind the call takes (a function ID,
    // an MPIDR, one of its own pages, a guard page), else any.
    mov     x1, #4
    bl      fg_below
    cbz     x0, 84f
    mov     x10, #{value_id}
    fg_mov64 x9, 0x80000001
    cmp     x25, x9
    b.eq    85f
    fg_mov64 x9, 0x8400000A
    cmp     x25, x9
    b.eq    85f
    mov     x10, #{value_mpidr}
    and     x9, x25, #0xffffffffbfffffff    // SMC32 and SMC64 forms
    fg_mov64 x11, 0x84000003
    cmp     x9, x11
    b.eq    85f
    fg_mov64 x11, 0x84000004
    cmp     x9, x11
    b.eq    85f
    mov     x10, #{value_own}
    fg_mov64 x11, 0xC6000003
    cmp     x25, x11
    b.eq    85f
    fg_mov64 x11, 0xC6000004
    cmp     x25, x11
    b.eq    85f
    mov     x10, #{value_guard}
    fg_mov64 x11, 0xC6000007
    cmp     x25, x11
    b.eq    85f
84: bl      fg_value
    b       86f
85: bl      fg_value_of
86: str     x0, [sp, #{rec_a1}]
    mov     x1, #4
    bl      fg_below
    cbz     x0, 9f
    str     xzr, [sp, #{rec_a2}]
    str     xzr, [sp, #{rec_a3}]
    str     xzr, [sp, #{rec_a4}]
    str     xzr, [sp, #{rec_a5}]
    str     xzr, [sp, #{rec_a6}]
    fg_mov64 x9, 0xC4000003
    cmp     x25, x9
    b.eq    81f
    fg_mov64 x9, 0x84000003
    cmp     x25, x9
    b.ne    10f
81: bl      fg_value
    str     x0, [sp, #{rec_a2}]
    bl      fg_value
    str     x0, [sp, #{rec_a3}]
    b       10f
9:  bl      fg_value
    str     x0, [sp, #{rec_a2}]
    bl      fg_value
    str     x0, [sp, #{rec_a3}]
    bl      fg_value
    str     x0, [sp, #{rec_a4}]
    bl      fg_value
    str     x0, [sp, #{rec_a5}]
    bl      fg_value
    str     x0, [sp, #{rec_a6}]
10: // MEM_UNSHARE never takes the status page away from the host.
    fg_mov64 x9, 0xC6000004
    cmp     x25, x9
    b.ne    12f
    ldr     x9, [sp, #{rec_a1}]
    and     x9, x9, #0xfffffffffffff000
    add     x10, x20, #{status_off}
    cmp     x9, x10
    b.ne    12f
    str     x20, [sp, #{rec_a1}]
12: bl      fg_rand
    and     x9, x0, #1
    str     x9, [sp, #{rec_conduit}]
    mov     x9, #{kind_call}
    str     x9, [sp, #{rec_kind}]
    str     x25, [sp, #{rec_addr}]
    bl      fg_record_head

    // The call: x7..x17 get known values, x4..x30 are saved before and
    // after.
    ldr     x9, [sp, #{rec_conduit}]
    cmp     x9, #0
    mov     x0, x25
    ldr     x1, [sp, #{rec_a1}]
    ldr     x2, [sp, #{rec_a2}]
    ldr     x3, [sp, #{rec_a3}]
    ldr     x4, [sp, #{rec_a4}]
    ldr     x5, [sp, #{rec_a5}]
    ldr     x6, [sp, #{rec_a6}]
    add     x7, x21, #7
    add     x8, x21, #8
    add     x9, x21, #9
    add     x10, x21, #10
    add     x11, x21, #11
    add     x12, x21, #12
    add     x13, x21, #13
    add     x14, x21, #14
    add     x15, x21, #15
    add     x16, x21, #16
    add     x17, x21, #17
    fg_save {save_a}
    b.ne    1f
    hvc     #0
    b       2f
1:  smc     #0
2:  str     x0, [sp, #{res0}]
    str     x1, [sp, #{res1}]
    str     x2, [sp, #{res2}]
    str     x3, [sp, #{res3}]
    fg_save {save_b}
    mov     x9, xzr
3:  ldr     x10, [sp, x9, lsl #3]
    add     x11, x9, #({save_b} / 8)
    ldr     x11, [sp, x11, lsl #3]
    cmp     x10, x11
    b.eq    4f
    mov     x4, x11
    mov     x5, x10
    add     x6, x9, #4
    mov     x2, #{v_clobbered}
    bl      fg_violation
4:  add     x9, x9, #1
    cmp     x9, #27
    b.lo    3b

    // The results.
    ldr     x13, [sp, #{res0}]
    ldr     x14, [sp, #{res1}]
    ldr     x15, [sp, #{res2}]
    ldr     x16, [sp, #{res3}]
    ldr     x7, [sp, #{rec_a1}]
    ldr     x8, [sp, #{rec_a2}]
    ldr     x9, [sp, #{rec_a3}]
    ldr     x10, [sp, #{rec_a4}]
    ldr     x11, [sp, #{rec_a5}]
    ldr     x12, [sp, #{rec_a6}]
    adr     x17, fg_ids
    mov     x18, xzr
5:  ldr     x26, [x17, x18, lsl #3]
    cmp     x26, x25
    b.eq    6f
    add     x18, x18, #1
    cmp     x18, #{nids}
    b.lo    5b
    // Not a guest call: the host-call range answers NOT_SUPPORTED, the
    // host answers everything else.
    fg_mov64 x17, 0xC6000100
    sub     x17, x25, x17
    cmp     x17, #0x100
    b.hs    fg_chk_forwarded
    fg_check_imm x13, 0xFFFFFFFFFFFFFFFF, {v_x0}
    b       fg_fuzz_next
6:  adr     x17, fg_chk_table
    add     x17, x17, x18, lsl #2
    br      x17
fg_chk_table:
    b       fg_chk_version
    b       fg_chk_arch_features
    b       fg_chk_uid
    b       fg_chk_kvm_features
    b       fg_chk_meminfo
    b       fg_chk_mem
    b       fg_chk_mem
    b       fg_chk_mem
    b       fg_chk_version
    b       fg_chk_suspend
    b       fg_chk_suspend
    b       fg_chk_returned
    b       fg_chk_cpu_on
    b       fg_chk_cpu_on32
    b       fg_chk_affinity
    b       fg_chk_affinity32
    b       fg_chk_migrate
    b       fg_chk_returned
    b       fg_chk_returned
    b       fg_chk_psci_features

fg_chk_forwarded:
    eor     x17, x25, x10
    fg_check x13, x17, {v_x0}
    eor     x17, x7, x11
    fg_check x14, x17, {v_x1}
    eor     x17, x8, x12
    fg_check x15, x17, {v_x2}
    mvn     x17, x9
    fg_check x16, x17, {v_x3}
    b       fg_fuzz_next

// SMCCC_VERSION and PSCI_VERSION: 1.1.
fg_chk_version:
    fg_check_imm x13, 0x10001, {v_x0}
    b       fg_fuzz_next

// SMCCC_ARCH_FEATURES: itself is implemented; other Arm-architecture IDs
// may be; anything else is not.
fg_chk_arch_features:
    fg_mov64 x17, 0x80000001
    cmp     x7, x17
    b.ne    1f
    fg_check x13, xzr, {v_x0}
    b       fg_fuzz_next
1:  lsr     x17, x7, #16
    fg_mov64 x18, 0x8000
    cmp     x17, x18
    b.ne    2f
    mov     x17, xzr
    fg_mov64 x18, 0xFFFFFFFFFFFFFFFF
    fg_check_either x13, x17, x18, {v_x0_either}
    b       fg_fuzz_next
2:  fg_check_imm x13, 0xFFFFFFFFFFFFFFFF, {v_x0}
    b       fg_fuzz_next

// VENDOR_HYP_CALL_UID: the KVM UID.
fg_chk_uid:
    fg_check_imm x13, 0xb66fb428, {v_x0}
    fg_check_imm x14, 0xe911c52e, {v_x1}
    fg_check_imm x15, 0x564bcaa9, {v_x2}
    fg_check_imm x16, 0x743a004d, {v_x3}
    b       fg_fuzz_next

// VENDOR_HYP_KVM_FEATURES: FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE,
// MMIO_GUARD.
fg_chk_kvm_features:
    fg_check_imm x13, 0x9d, {v_x0}
    fg_check x14, xzr, {v_x1}
    fg_check x15, xzr, {v_x2}
    fg_check x16, xzr, {v_x3}
    b       fg_fuzz_next

// HYP_MEMINFO: 4096 with x1..x3 zero, else INVALID_PARAMETER.
fg_chk_meminfo:
    orr     x17, x7, x8
    orr     x17, x17, x9
    cbz     x17, 1f
    fg_check_imm x13, 0xFFFFFFFFFFFFFFFD, {v_x0}
    b       fg_fuzz_next
1:  fg_check_imm x13, 4096, {v_x0}
    fg_check x14, xzr, {v_x1}
    fg_check x15, xzr, {v_x2}
    fg_check x16, xzr, {v_x3}
    b       fg_fuzz_next

// MEM_SHARE, MEM_UNSHARE, MMIO_GUARD.
fg_chk_mem:
    tst     x7, #0xfff
    b.ne    fg_mem_invalid
    lsr     x17, x7, #40
    cbnz    x17, fg_mem_invalid
    orr     x17, x8, x9
    cbnz    x17, fg_mem_invalid
    sub     x17, x7, x20
    cmp     x17, #{own_bytes}
    b.hs    fg_mem_not_own
    // One of its own pages: MMIO_GUARD refuses it (it is mapped); MEM_SHARE
    // takes an owned page, MEM_UNSHARE a shared one.
    lsr     x17, x17, #12
    add     x18, sp, #{own_state}
    ldrb    w26, [x18, x17]
    fg_mov64 x28, 0xC6000007
    cmp     x25, x28
    b.eq    fg_mem_invalid
    fg_mov64 x28, 0xC6000003
    cmp     x25, x28
    b.ne    2f
    cbnz    w26, fg_mem_invalid
    fg_check x13, xzr, {v_x0}
    cbnz    x13, fg_fuzz_next
    mov     w26, #1
    strb    w26, [x18, x17]
    b       fg_fuzz_next
2:  cmp     w26, #1
    b.ne    fg_mem_invalid
    fg_check x13, xzr, {v_x0}
    cbnz    x13, fg_fuzz_next
    strb    wzr, [x18, x17]
    b       fg_fuzz_next
fg_mem_not_own:
    fg_mov64 x17, {guard_ipa}
    sub     x17, x7, x17
    cmp     x17, #{guard_bytes}
    b.hs    fg_mem_unknown
    // A guard page: registering it again succeeds; nothing is mapped
    // there to share.
    fg_mov64 x28, 0xC6000007
    cmp     x25, x28
    b.ne    fg_mem_invalid
    fg_check x13, xzr, {v_x0}
    b       fg_fuzz_next
fg_mem_unknown:
    // Elsewhere the host may have mapped a page, and MMIO_GUARD may run
    // out of table pages: success or INVALID_PARAMETER.
    mov     x17, xzr
    fg_mov64 x18, 0xFFFFFFFFFFFFFFFD
    fg_check_either x13, x17, x18, {v_x0_either}
    b       fg_fuzz_next
fg_mem_invalid:
    fg_check_imm x13, 0xFFFFFFFFFFFFFFFD, {v_x0}
    b       fg_fuzz_next

// CPU_SUSPEND: a WFI exit, then SUCCESS.
fg_chk_suspend:
    fg_check x13, xzr, {v_x0}
    b       fg_fuzz_next

// CPU_OFF, SYSTEM_OFF, SYSTEM_RESET never return.
fg_chk_returned:
    mov     x4, x13
    mov     x5, xzr
    mov     x6, xzr
    mov     x2, #{v_returned}
    bl      fg_violation
    b       fg_fuzz_next

// CPU_ON: ALREADY_ON for this vCPU (for a protected VM with an entry point
// outside its own pages, INVALID_PARAMETERS may come first);
// INVALID_PARAMETERS for an MPIDR that names no vCPU. The SMC32 form is checked only when x1..x3
// fit in 32 bits.
fg_chk_cpu_on32:
    orr     x17, x7, x8
    orr     x17, x17, x9
    lsr     x17, x17, #32
    cbnz    x17, fg_fuzz_next
fg_chk_cpu_on:
    bl      fg_target_kind
    cbz     x17, fg_psci_invalid
    cmp     x17, #1
    b.ne    fg_fuzz_next
    tst     x24, #{flag_protected}
    b.eq    fg_psci_already_on
    bl      fg_owned
    cmp     x17, #1
    b.eq    fg_psci_already_on
    fg_mov64 x17, 0xFFFFFFFFFFFFFFFC
    fg_mov64 x18, 0xFFFFFFFFFFFFFFFE
    fg_check_either x13, x17, x18, {v_x0_either}
    b       fg_fuzz_next
fg_psci_already_on:
    fg_check_imm x13, 0xFFFFFFFFFFFFFFFC, {v_x0}
    b       fg_fuzz_next
fg_psci_invalid:
    fg_check_imm x13, 0xFFFFFFFFFFFFFFFE, {v_x0}
    b       fg_fuzz_next

// AFFINITY_INFO at level 0: ON for this vCPU, INVALID_PARAMETERS for an
// MPIDR that names no vCPU.
fg_chk_affinity32:
    orr     x17, x7, x8
    lsr     x17, x17, #32
    cbnz    x17, fg_fuzz_next
fg_chk_affinity:
    cbnz    x8, fg_fuzz_next
    bl      fg_target_kind
    cbz     x17, fg_psci_invalid
    cmp     x17, #1
    b.ne    fg_fuzz_next
    fg_check x13, xzr, {v_x0}
    b       fg_fuzz_next

// MIGRATE_INFO_TYPE: 2 (no trusted OS to migrate).
fg_chk_migrate:
    fg_check_imm x13, 2, {v_x0}
    b       fg_fuzz_next

// PSCI_FEATURES: SUCCESS for SMCCC_VERSION and the PSCI calls, else
// NOT_SUPPORTED.
fg_chk_psci_features:
    adr     x17, fg_ids
    mov     x18, xzr
1:  ldr     x26, [x17, x18, lsl #3]
    cmp     x26, x7
    b.eq    2f
    add     x18, x18, #1
    cmp     x18, #{nids}
    b.lo    1b
    b       3f
2:  cbz     x18, 4f
    cmp     x18, #8
    b.hs    4f
3:  fg_check_imm x13, 0xFFFFFFFFFFFFFFFF, {v_x0}
    b       fg_fuzz_next
4:  fg_check x13, xzr, {v_x0}
    b       fg_fuzz_next

// A load or store: x9 = address, x10 = size, x11 = value, x12 = store,
// x28 = category.
fg_gen_access:
    mov     x1, #10
    bl      fg_below
    cmp     x0, #6
    cset    x12, hs
    mov     x1, #4
    bl      fg_below
    mov     x10, #1
    lsl     x10, x10, x0
    bl      fg_rand
    mov     x11, x0
    bl      fg_rand
    mov     x26, x0
    mov     x1, #100
    bl      fg_below
    sub     x17, x10, #1
    cmp     x0, #25
    b.hs    1f
    mov     x28, #{cat_scratch}
    and     x9, x26, #0x3fff
    add     x9, x9, x20
    add     x9, x9, #{scratch_off}
    b       8f
1:  cmp     x0, #45
    b.hs    2f
    mov     x28, #{cat_guard}
    and     x9, x26, #0x7fff
    fg_mov64 x18, {guard_ipa}
    add     x9, x9, x18
    b       8f
2:  cmp     x0, #68
    b.hs    3f
    mov     x28, #{cat_near}
    and     x9, x26, #0xffff
    fg_mov64 x18, {data_near_ipa}
    add     x9, x9, x18
    b       8f
3:  cmp     x0, #76
    b.hs    4f
    mov     x28, #{cat_far}
    and     x9, x26, #0xffffffffff
    b       8f
4:  cmp     x0, #84
    b.hs    5f
    mov     x28, #{cat_beyond}
    and     x9, x26, #0xffffffff
    orr     x9, x9, #0x10000000000
    b       8f
5:  // Misaligned, in scratch memory or a guard page: at least 2 bytes.
    mov     x28, #{cat_unaligned}
    cmp     x10, #1
    b.ne    51f
    mov     x10, #8
51: and     x9, x26, #0x3ff0
    orr     x9, x9, #1
    add     x9, x9, x20
    add     x9, x9, #{scratch_off}
    tst     x26, #0x100000
    b.eq    9f
    and     x9, x26, #0x7ff0
    orr     x9, x9, #1
    fg_mov64 x18, {guard_ipa}
    add     x9, x9, x18
    b       9f
8:  bic     x9, x9, x17
9:  mov     x17, #{kind_read}
    cbz     x12, 91f
    mov     x17, #{kind_write}
91: str     x17, [sp, #{rec_kind}]
    str     x9, [sp, #{rec_addr}]
    str     x10, [sp, #{rec_a1}]
    str     x11, [sp, #{rec_a2}]
    str     x28, [sp, #{rec_a3}]
    bl      fg_record_head
    bl      fg_access
    mov     x29, x1
    // The exception it did or did not take.
    ldr     x13, [sp, #{exc_esr}]
    cmp     x28, #{cat_unaligned}
    b.ne    1f
    // Misaligned: no exception (scratch memory that stage 2 makes Normal;
    // a guard page's access is then an MMIO exit the host checked), or an
    // alignment fault at EL1 (EC 0x25, DFSC 0x21).
    cbz     x13, fg_fuzz_next
    lsr     x17, x13, #26
    cmp     x17, #0x25
    b.ne    11f
    and     x17, x13, #0x3f
    cmp     x17, #0x21
    b.eq    fg_fuzz_next
11: fg_check_imm x13, 0x96000021, {v_el1_exception}
    b       fg_fuzz_next
1:  cbz     x13, 3f
    cmp     x28, #{cat_beyond}
    b.ne    2f
    // Beyond the CPU's PA range: an address-size fault at EL1.
    lsr     x17, x13, #26
    cmp     x17, #0x25
    b.ne    2f
    and     x17, x13, #0x3c
    cbz     x17, fg_fuzz_next
2:  fg_check x13, xzr, {v_el1_exception}
    b       fg_fuzz_next
3:  // The value of a load where the host provides the data.
    cbnz    x12, fg_fuzz_next
    cmp     x28, #{cat_scratch}
    b.eq    fg_fuzz_next
    bl      fg_expected
    fg_check x29, x17, {v_read_value}
    b       fg_fuzz_next

// A branch: to a near exec page (the host maps `ret`s there), a scratch
// page (not executable), a far or beyond IPA, a guard page.
fg_gen_exec:
    bl      fg_rand
    mov     x26, x0
    mov     x1, #100
    bl      fg_below
    cmp     x0, #70
    b.hs    1f
    mov     x28, #{cat_near}
    and     x9, x26, #0xfffc
    fg_mov64 x18, {exec_near_ipa}
    add     x9, x9, x18
    b       5f
1:  cmp     x0, #80
    b.hs    2f
    mov     x28, #{cat_scratch}
    and     x9, x26, #0x3ffc
    add     x9, x9, x20
    add     x9, x9, #{scratch_off}
    b       5f
2:  cmp     x0, #90
    b.hs    3f
    mov     x28, #{cat_far}
    and     x9, x26, #0xfffffffffc
    tst     x26, #0x100000
    b.eq    5f
    mov     x28, #{cat_beyond}
    orr     x9, x9, #0x10000000000
    b       5f
3:  mov     x28, #{cat_guard}
    and     x9, x26, #0x7ffc
    fg_mov64 x18, {guard_ipa}
    add     x9, x9, x18
5:  mov     x17, #{kind_exec}
    str     x17, [sp, #{rec_kind}]
    str     x9, [sp, #{rec_addr}]
    str     xzr, [sp, #{rec_a1}]
    str     xzr, [sp, #{rec_a2}]
    str     x28, [sp, #{rec_a3}]
    bl      fg_record_head
    str     xzr, [sp, #{exc_esr}]
    blr     x9
    ldr     x13, [sp, #{exc_esr}]
    cmp     x28, #{cat_near}
    b.ne    6f
    fg_check x13, xzr, {v_el1_exception}
    b       fg_fuzz_next
6:  // Only a near page comes back (after the host mapped it), or an
    // address-size fault at EL1 beyond the CPU's PA range.
    cmp     x28, #{cat_beyond}
    b.ne    7f
    lsr     x17, x13, #26
    cmp     x17, #0x21
    b.ne    7f
    and     x17, x13, #0x3c
    cbz     x17, fg_fuzz_next
7:  mov     x4, x13
    mov     x5, xzr
    mov     x6, x9
    mov     x2, #{v_returned}
    bl      fg_violation
    b       fg_fuzz_next

// ---------------------------------------------------------------------
.balign 2048
fg_vectors:
    .balign 0x80
    b       fg_sync
    .balign 0x80
    mov     x27, #1
    b       fg_unexpected
    .balign 0x80
    mov     x27, #2
    b       fg_unexpected
    .balign 0x80
    mov     x27, #3
    b       fg_unexpected
    .balign 0x80
    b       fg_sync
    .balign 0x80
    mov     x27, #5
    b       fg_unexpected
    .balign 0x80
    mov     x27, #6
    b       fg_unexpected
    .balign 0x80
    mov     x27, #7
    b       fg_unexpected
    .balign 0x80
    mov     x27, #8
    b       fg_unexpected
    .balign 0x80
    mov     x27, #9
    b       fg_unexpected
    .balign 0x80
    mov     x27, #10
    b       fg_unexpected
    .balign 0x80
    mov     x27, #11
    b       fg_unexpected
    .balign 0x80
    mov     x27, #12
    b       fg_unexpected
    .balign 0x80
    mov     x27, #13
    b       fg_unexpected
    .balign 0x80
    mov     x27, #14
    b       fg_unexpected
    .balign 0x80
    mov     x27, #15
    b       fg_unexpected

// A synchronous exception: recorded in the slot, then skipped. Uses only
// x27 (and the flags, which ERET restores).
fg_sync:
    mrs     x27, esr_el1
    str     x27, [sp, #{exc_esr}]
    mrs     x27, far_el1
    str     x27, [sp, #{exc_far}]
    ldr     x27, [sp, #{exc_esr}]
    lsr     x27, x27, #26
    cmp     x27, #0x21
    b.eq    1f
    cmp     x27, #0x22
    b.eq    1f
    mrs     x27, elr_el1
    add     x27, x27, #4
    msr     elr_el1, x27
    eret
1:  msr     elr_el1, x30
    eret

fg_unexpected:
    mov     x4, x27
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    fg_mov64 x0, {fg_unexpected_id}
    hvc     #0
    b       fg_unexpected

.balign 8
.global fuzz_guest_ids
fuzz_guest_ids:
fg_ids:
    .quad   0x80000000
    .quad   0x80000001
    .quad   0x8600FF01
    .quad   0x86000000
    .quad   0xC6000002
    .quad   0xC6000003
    .quad   0xC6000004
    .quad   0xC6000007
    .quad   0x84000000
    .quad   0xC4000001
    .quad   0x84000001
    .quad   0x84000002
    .quad   0xC4000003
    .quad   0x84000003
    .quad   0xC4000004
    .quad   0x84000004
    .quad   0x84000006
    .quad   0x84000008
    .quad   0x84000009
    .quad   0x8400000A
.global fuzz_guest_end
fuzz_guest_end:
"#,
    status_off = const STATUS_IPA - CODE_IPA,
    scratch_off = const SCRATCH_IPA - CODE_IPA,
    own_pages = const OWN_PAGES,
    own_bytes = const OWN_PAGES * 0x1000,
    guard_ipa = const GUARD_IPA,
    guard_pages = const GUARD_PAGES,
    guard_bytes = const GUARD_PAGES * 0x1000,
    data_near_ipa = const DATA_NEAR_IPA,
    exec_near_ipa = const EXEC_NEAR_IPA,
    near_bytes = const NEAR_PAGES * 0x1000,
    boot_primary = const BOOT_PRIMARY,
    boot_secondary = const BOOT_SECONDARY,
    fg_next = const FG_NEXT,
    fg_violation_id = const FG_VIOLATION,
    fg_unexpected_id = const FG_UNEXPECTED,
    op_fuzz = const op::FUZZ,
    op_read = const op::READ,
    op_write = const op::WRITE,
    op_exec = const op::EXEC,
    op_call = const op::CALL,
    op_smc_call = const op::SMC_CALL,
    op_cpu_on = const op::CPU_ON,
    op_spin = const op::SPIN,
    op_sysreg = const op::SYSREG,
    op_wfi = const op::WFI,
    op_unknown = const op::UNKNOWN,
    flag_protected = const flags::PROTECTED,
    vcpus_shift = const flags::VCPUS_SHIFT,
    save_a = const rec::SAVE_A,
    save_b = const rec::SAVE_B,
    rec_iter = const rec::ITER,
    rec_state = const rec::STATE,
    rec_kind = const rec::KIND,
    rec_addr = const rec::ADDR,
    rec_a1 = const rec::ARGS,
    rec_a2 = const rec::ARGS + 8,
    rec_a3 = const rec::ARGS + 16,
    rec_a4 = const rec::ARGS + 24,
    rec_a5 = const rec::ARGS + 32,
    rec_a6 = const rec::ARGS + 40,
    rec_conduit = const rec::CONDUIT,
    exc_esr = const rec::EXC_ESR,
    exc_far = const rec::EXC_FAR,
    res0 = const rec::RESULTS,
    res1 = const rec::RESULTS + 8,
    res2 = const rec::RESULTS + 16,
    res3 = const rec::RESULTS + 24,
    own_state = const rec::OWN_STATE,
    own_state_protected = const OWN_STATE_PROTECTED,
    own_state_normal = const OWN_STATE_NORMAL,
    kind_call = const kind::CALL,
    kind_read = const kind::READ,
    kind_write = const kind::WRITE,
    kind_exec = const kind::EXEC,
    kind_wfi = const kind::WFI,
    cat_scratch = const category::SCRATCH,
    cat_guard = const category::GUARD,
    cat_near = const category::NEAR,
    cat_far = const category::FAR,
    cat_beyond = const category::BEYOND,
    cat_unaligned = const category::UNALIGNED,
    v_clobbered = const violation::CLOBBERED,
    v_x0 = const violation::X0,
    v_x1 = const violation::X1,
    v_x2 = const violation::X2,
    v_x3 = const violation::X3,
    v_x0_either = const violation::X0_EITHER,
    v_returned = const violation::RETURNED,
    v_read_value = const violation::READ_VALUE,
    v_el1_exception = const violation::EL1_EXCEPTION,
    nids = const GUEST_CALL_IDS.len(),
    value_own = const 40,
    value_guard = const 55,
    value_mpidr = const 75,
    value_id = const 80,
    f_mul = const F_MUL,
);

extern "C" {
    static fuzz_guest_start: u8;
    static fuzz_guest_secondary: u8;
    static fuzz_guest_ids: u8;
    static fuzz_guest_end: u8;
}

/// The program, to copy to the start of its first code page.
pub fn image() -> &'static [u8] {
    // SAFETY: the two symbols delimit the assembled program above in
    // read-only data; the bytes are never written.
    unsafe {
        let start = &raw const fuzz_guest_start;
        let end = &raw const fuzz_guest_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Offset in [`image`] of `fuzz_guest_secondary`, the CPU_ON entry point.
pub fn secondary_offset() -> u64 {
    let start = &raw const fuzz_guest_start;
    let at = &raw const fuzz_guest_secondary;
    at as u64 - start as u64
}

/// The guest's function-ID table, as assembled.
pub fn assembled_ids() -> [u64; GUEST_CALL_IDS.len()] {
    let start = &raw const fuzz_guest_start;
    let at = &raw const fuzz_guest_ids as usize - start as usize;
    let code = image();
    core::array::from_fn(|i| {
        let word = code
            .get(at + 8 * i..at + 8 * i + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .unwrap_or_default();
        u64::from_le_bytes(word)
    })
}

/// ID_AA64DFR0_EL1.PMUVer of this CPU: whether PMU registers exist (1..=14)
/// for the PMCR_EL0 trap test.
pub fn pmu_version() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64dfr0_el1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    (v >> 8) & 0xf
}
