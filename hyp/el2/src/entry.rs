//! Entry points, exception vectors and stacks: the assembly the rest of the
//! image stands on.
//!
//! - `_start`: the arm64 Image header, then the primary CPU's entry (x0 = the
//!   device tree): zero BSS, take the boot stack ([`BOOT_STACK`], CPU 0's
//!   for good), call `rust_primary_main`.
//! - `secondary_entry`: where our own PSCI CPU_ON starts other CPUs (x0 = CPU
//!   index): take that CPU's stack, which the boot CPU placed from the
//!   device tree's CPU count (`hyp::cpu_area`; its base is
//!   `BOOT_PARAMS[4]`), turn the MMU on with the primary's EL2 tables
//!   ([`BOOT_PARAMS`]), call `rust_secondary_main`.
//! - `el2_vectors`: a synchronous exception from EL1 first goes through a
//!   fast path that answers host HVCs outside the host-call range with
//!   NOT_SUPPORTED (x0 only), and HYP_VERSION and HYP_FEATURES, without
//!   saving registers or taking a lock; everything else saves x0..x30
//!   in a [`Frame`] on the CPU's EL2 stack and calls `handle_lower_sync`.

use core::arch::global_asm;
use core::sync::atomic::AtomicU64;

use hyp::cpu_area::{GUARD_SIZE, SLOT_SIZE, STACK_SIZE};

/// The boot CPU's stack, with its guard page below it (in BSS): the only
/// stack in the image; the others are placed at boot (`hyp::cpu_area`).
#[repr(C, align(4096))]
pub struct BootStack(pub [u8; (GUARD_SIZE + STACK_SIZE) as usize]);

/// CPU 0's stack (in BSS).
#[no_mangle]
pub static mut BOOT_STACK: BootStack = BootStack([0; (GUARD_SIZE + STACK_SIZE) as usize]);

/// What a secondary CPU needs before its MMU is on: MAIR_EL2, TCR_EL2,
/// TTBR0_EL2, SCTLR_EL2, and the base of the secondaries' stacks
/// (`CpuArea::stacks_base`), written by the primary and cleaned to PoC
/// before any secondary starts (they read it with the MMU off).
#[no_mangle]
pub static BOOT_PARAMS: BootParams = BootParams([const { AtomicU64::new(0) }; 5]);

/// [`BOOT_PARAMS`]: one cache line, so one clean to PoC publishes it.
#[repr(C, align(64))]
pub struct BootParams(pub [AtomicU64; 5]);

/// HYP_FEATURES x2 (the core's `feature_bits`), for the vector's answer;
/// written once at boot, before the host runs.
#[no_mangle]
pub static HYP_FEATURE_BITS: AtomicU64 = AtomicU64::new(0);

/// General-purpose registers saved at a trap from EL1.
#[repr(C)]
pub struct Frame {
    /// x0..x30.
    pub x: [u64; 31],
    _pad: u64,
}

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry
    .long   0
    .quad   0x80000             // text_offset
    .quad   __image_size
    .quad   0x2                 // little endian, 4 KiB pages, 2 MiB-aligned base
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .long   0

primary_entry:
    mov     x19, x0
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
0:  cmp     x1, x2
    b.hs    1f
    stp     xzr, xzr, [x1], #16
    b       0b
1:  mov     x0, #0
    bl      set_stack
    mov     x0, x19
    bl      rust_primary_main
2:  wfe
    b       2b

.global secondary_entry
secondary_entry:
    mov     x19, x0
    bl      set_stack
    // MMU on with the primary's tables.
    adrp    x1, BOOT_PARAMS
    add     x1, x1, :lo12:BOOT_PARAMS
    ldp     x2, x3, [x1]
    ldp     x4, x5, [x1, #16]
    msr     mair_el2, x2
    msr     tcr_el2, x3
    msr     ttbr0_el2, x4
    isb
    tlbi    alle2
    dsb     nsh
    isb
    msr     sctlr_el2, x5
    isb
    mov     x0, x19
    bl      rust_secondary_main
3:  wfe
    b       3b

// x0 = CPU index: sp = top of that CPU's stack: the boot stack for CPU 0
// (also when the host turns it off and on again), else
// BOOT_PARAMS[4] + index * slot. Clobbers x1, x2.
set_stack:
    cbnz    x0, 6f
    adrp    x1, BOOT_STACK
    add     x1, x1, :lo12:BOOT_STACK
    add     sp, x1, #{boot_stack_size}
    ret
6:  adrp    x1, BOOT_PARAMS
    add     x1, x1, :lo12:BOOT_PARAMS
    ldr     x1, [x1, #32]
    mov     x2, #{slot}
    madd    x1, x0, x2, x1
    mov     sp, x1
    ret

.section .text.vectors, "ax"
.balign 2048
.global el2_vectors
el2_vectors:
    // Current EL with SP_EL0.
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    // Current EL with SP_ELx.
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_serror
    // Lower EL, AArch64: synchronous.
    .balign 0x80
    stp     x5, x6, [sp, #-16]!
    mrs     x5, esr_el2
    lsr     x5, x5, #26
    cmp     x5, #0x16           // HVC64
    b.ne    4f
    mov     x5, #0x0100
    movk    x5, #0xc600, lsl #16
    sub     x5, x0, x5
    cmp     x5, #2              // HYP_VERSION, HYP_FEATURES: answered here
    b.lo    host_info_call
    cmp     x5, #0x40           // host-call table range: full dispatch
    b.lo    4f
    mov     x0, #-1             // NOT_SUPPORTED: x0 only changes (SMCCC)
    ldp     x5, x6, [sp], #16
    eret
4:  ldp     x5, x6, [sp], #16
    b       el1_sync_slow
    // Lower EL, AArch64: IRQ, FIQ, SError.
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    // Lower EL, AArch32.
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected
    .balign 0x80
    b       el2_unexpected

// HYP_VERSION (x5 = 0) or HYP_FEATURES (x5 = 1), the caller's x5 and x6
// at [sp]. Answered as the core would (hypervisor.rs `host_call`): every
// argument register x1..x6 zero, else the full dispatch answers -EINVAL;
// x0..x3 written (x0..x4 for HYP_FEATURES), nothing else. The answers are
// constants of the image, or read once at boot (HYP_FEATURE_BITS), so no
// lock and no saved frame are needed.
host_info_call:
    orr     x6, x1, x2
    orr     x6, x6, x3
    orr     x6, x6, x4
    cbnz    x6, 4b
    ldp     x1, x2, [sp]        // the caller's x5, x6
    orr     x6, x1, x2
    cbnz    x6, 6f
    mov     x0, xzr             // x1 is zero already
    cbnz    x5, 7f
    mov     x2, #{version}
    ldp     x5, x6, [sp], #16
    eret
7:  adrp    x2, HYP_FEATURE_BITS
    ldr     x2, [x2, :lo12:HYP_FEATURE_BITS]
    mov     x3, #{max_vms}
    mov     x4, #{max_vcpus}
    ldp     x5, x6, [sp], #16
    eret
6:  mov     x1, xzr             // x1, x2 were zero: put them back
    mov     x2, xzr
    b       4b

el1_sync_slow:
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mov     x0, sp
    bl      handle_lower_sync
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #256
    eret

// An SError at EL2. EL2 runs with SErrors masked except in the window a
// guest exit opens (guest.rs, __serror_window): record it for this CPU and
// go on there.
.global el2_serror
el2_serror:
    stp     x0, x1, [sp, #-16]!
    mrs     x0, tpidr_el2
    adrp    x1, GUEST_SERROR
    ldr     x1, [x1, :lo12:GUEST_SERROR]
    add     x1, x1, x0, lsl #3
    mov     x0, #1
    str     x0, [x1]
    ldp     x0, x1, [sp], #16
    eret

.global el2_unexpected
el2_unexpected:
    mrs     x0, esr_el2
    mrs     x1, elr_el2
    mrs     x2, far_el2
    mrs     x3, spsr_el2
    bl      handle_unexpected
5:  wfe
    b       5b

// eret_to_host(entry, x0): enter EL1h at `entry`, interrupts masked, with x0.
.global eret_to_host
eret_to_host:
    msr     elr_el2, x0
    mov     x2, #0x3c5
    msr     spsr_el2, x2
    mov     x0, x1
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    isb
    eret
"#,
    slot = const SLOT_SIZE,
    boot_stack_size = const GUARD_SIZE + STACK_SIZE,
    version = const hyp::HYP_VERSION,
    max_vms = const hyp::MAX_VMS,
    max_vcpus = const hyp::MAX_VCPUS,
);

extern "C" {
    /// Where PSCI CPU_ON starts secondary CPUs.
    pub fn secondary_entry();
    /// Base of the exception vectors.
    pub fn el2_vectors();
    /// Enter the host at EL1h.
    pub fn eret_to_host(entry: u64, x0: u64) -> !;
}
