//! The assembly the test host stands on: the arm64 Image header and entry,
//! the EL1 exception vectors, and the two instructions through which
//! scenarios touch memory.
//!
//! - `_start`: the Image header (code0 branches past it), then the entry:
//!   x0 = the device tree, MMU and caches off, interrupts masked. If the
//!   loader put the image somewhere other than its link address (QEMU's
//!   `-kernel` uses RAM base + 2 MiB), the file part is copied to the link
//!   address first. Then FP/SIMD on, BSS zeroed, the stack taken, VBAR_EL1
//!   set, SError unmasked, and `rust_main(dtb)` called.
//! - `secondary_entry`: where PSCI CPU_ON starts a secondary CPU, at EL1
//!   with its MMU off and x0 = the CPU_ON context: FP/SIMD on, the stack of
//!   slot `context >> 32` (see [`secondary_context`]), VBAR_EL1, then the MMU on with the boot CPU's settings
//!   ([`crate::mmu::SECONDARY_MMU`]), SError unmasked, and
//!   `rust_secondary_main(context)` called.
//! - The vectors: a synchronous external abort (EC 0x25, DFSC 0x10) taken on
//!   [`host_load`] or [`host_store`] sets [`HOST_ACCESS_ABORTED`] and returns
//!   past the access; any other exception ends in
//!   `crate::unexpected_exception`, which reports and panics.

use core::arch::global_asm;
use core::sync::atomic::AtomicBool;

/// Stack slots for secondary CPUs (the linker script's `SECONDARY_STACKS`).
pub const SECONDARY_STACKS: usize = 7;
/// One slot: an unmapped guard page, then a 128 KiB stack (the linker
/// script's `4096 + STACK_SIZE`).
pub const STACK_SLOT: usize = 4096 + 128 * 1024;

/// The CPU_ON context that starts a secondary CPU on stack `slot` (below
/// [`SECONDARY_STACKS`]; two CPUs running at once need different slots),
/// with `tag` (what it is to do) as the low 32 bits
/// `rust_secondary_main` sees.
pub const fn secondary_context(slot: usize, tag: u32) -> u64 {
    ((slot as u64) << 32) | tag as u64
}

/// Set by the vector when the last [`host_load`] or [`host_store`] took a
/// synchronous external abort. Only the boot CPU makes host accesses (CPU 1,
/// started in fuzz mode, only makes hypercalls), so one flag is the per-CPU
/// flag.
pub static HOST_ACCESS_ABORTED: AtomicBool = AtomicBool::new(false);

/// Vector index passed to `unexpected_exception` for a synchronous
/// exception from the current EL with SP_EL1 that is not a caught abort.
const SYNC_CURRENT_SPX: u64 = 4;

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    b       primary_entry       // code0
    .long   0                   // code1
    .quad   0                   // text_offset
    .quad   __image_size        // image_size (BSS, stack and heap included)
    .quad   0xa                 // flags: little endian, 4 KiB pages, anywhere
    .quad   0, 0, 0             // res2..res4
    .ascii  "ARM\x64"           // magic
    .long   0                   // res5

primary_entry:
    mov     x19, x0
    // Copy the file part of the image to its link address if needed.
    adr     x1, _start
    ldr     x2, =__image_start
    cmp     x1, x2
    b.eq    2f
    ldr     x3, =__load_end
    sub     x3, x3, x2
    // The copy must not overlap the running image.
    subs    x4, x2, x1
    cneg    x4, x4, mi
    cmp     x4, x3
    b.lo    9f
    mov     x5, #0
1:  ldr     x6, [x1, x5]
    str     x6, [x2, x5]
    add     x5, x5, #8
    cmp     x5, x3
    b.lo    1b
    dsb     sy
    ic      iallu
    dsb     sy
    isb
    ldr     x4, =2f
    br      x4

2:  // FP/SIMD usable at EL1: the compiler uses the vector registers.
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:  adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1
    adrp    x1, el1_vectors
    add     x1, x1, :lo12:el1_vectors
    msr     vbar_el1, x1
    isb
    msr     daifclr, #4         // SError: reported, not lost
    mov     x0, x19
    bl      rust_main
9:  wfe
    b       9b

// CPU 1 (PSCI CPU_ON): EL1, MMU and caches off, x0 = context. Nothing is
// written to memory before the MMU is on; SECONDARY_MMU was cleaned to the
// point of coherency by the boot CPU.
.section .text, "ax"
.global secondary_entry
.balign 4
secondary_entry:
    mov     x19, x0
    mov     x1, #(3 << 20)      // FP/SIMD usable at EL1
    msr     cpacr_el1, x1
    lsr     x1, x0, #32         // the stack slot (context bits 63:32)
    cmp     x1, #{stacks}
    b.hs    8f                  // no such slot: park without a stack
    add     x1, x1, #1
    mov     x2, #{slot_pages}
    mul     x1, x1, x2
    lsl     x1, x1, #12         // (slot + 1) * STACK_SLOT
    adrp    x2, __secondary_stacks
    add     x2, x2, :lo12:__secondary_stacks
    add     x1, x2, x1          // the top of the slot's stack
    mov     sp, x1
    adrp    x1, el1_vectors
    add     x1, x1, :lo12:el1_vectors
    msr     vbar_el1, x1
    adrp    x1, {secondary_mmu}
    add     x1, x1, :lo12:{secondary_mmu}
    ldp     x2, x3, [x1]        // MAIR_EL1, TCR_EL1
    ldp     x4, x5, [x1, #16]   // TTBR0_EL1, SCTLR_EL1
    msr     mair_el1, x2
    msr     tcr_el1, x3
    msr     ttbr0_el1, x4
    isb
    tlbi    vmalle1
    ic      iallu
    dsb     nsh
    isb
    msr     sctlr_el1, x5
    isb
    msr     daifclr, #4         // SError: reported, not lost
    mov     x0, x19
    bl      rust_secondary_main
8:  wfe
    b       8b

.section .text.vectors, "ax"
.balign 2048
el1_vectors:
    // Current EL with SP_EL0: never used.
    .balign 0x80
    mov     x0, #0
    b       el1_unexpected
    .balign 0x80
    mov     x0, #1
    b       el1_unexpected
    .balign 0x80
    mov     x0, #2
    b       el1_unexpected
    .balign 0x80
    mov     x0, #3
    b       el1_unexpected
    // Current EL with SP_EL1.
    .balign 0x80
    b       el1_sync
    .balign 0x80
    mov     x0, #5
    b       el1_unexpected
    .balign 0x80
    mov     x0, #6
    b       el1_unexpected
    .balign 0x80
    mov     x0, #7
    b       el1_unexpected
    // Lower EL (EL0), AArch64 and AArch32: never used.
    .balign 0x80
    mov     x0, #8
    b       el1_unexpected
    .balign 0x80
    mov     x0, #9
    b       el1_unexpected
    .balign 0x80
    mov     x0, #10
    b       el1_unexpected
    .balign 0x80
    mov     x0, #11
    b       el1_unexpected
    .balign 0x80
    mov     x0, #12
    b       el1_unexpected
    .balign 0x80
    mov     x0, #13
    b       el1_unexpected
    .balign 0x80
    mov     x0, #14
    b       el1_unexpected
    .balign 0x80
    mov     x0, #15
    b       el1_unexpected

// A synchronous exception at EL1. Only a synchronous external abort on one
// of the two access instructions is survivable: note it and skip the
// instruction. x0 and x1 are the only registers used, and restored.
el1_sync:
    stp     x0, x1, [sp, #-16]!
    mrs     x0, esr_el1
    lsr     x1, x0, #26
    cmp     x1, #0x25           // data abort from the current EL
    b.ne    6f
    and     x1, x0, #0x3f
    cmp     x1, #0x10           // DFSC: synchronous external abort
    b.ne    6f
    mrs     x0, elr_el1
    adrp    x1, host_load
    add     x1, x1, :lo12:host_load
    cmp     x0, x1
    b.eq    5f
    adrp    x1, host_store
    add     x1, x1, :lo12:host_store
    cmp     x0, x1
    b.ne    6f
5:  add     x0, x0, #4
    msr     elr_el1, x0
    adrp    x1, {aborted}
    add     x1, x1, :lo12:{aborted}
    mov     w0, #1
    strb    w0, [x1]
    ldp     x0, x1, [sp], #16
    eret
6:  ldp     x0, x1, [sp], #16
    mov     x0, #{sync_spx}
el1_unexpected:
    bl      {unexpected}
7:  wfe
    b       7b

// The scenario's memory accesses: one instruction each, so the vector above
// can recognise them and step over them.
.section .text, "ax"
.global host_load
.balign 4
host_load:
    ldr     x0, [x0]
    ret
.global host_store
.balign 4
host_store:
    str     x1, [x0]
    ret
"#,
    aborted = sym HOST_ACCESS_ABORTED,
    secondary_mmu = sym crate::mmu::SECONDARY_MMU,
    unexpected = sym crate::unexpected_exception,
    sync_spx = const SYNC_CURRENT_SPX,
    stacks = const SECONDARY_STACKS,
    slot_pages = const STACK_SLOT / 4096,
);

extern "C" {
    /// Where PSCI CPU_ON starts CPU 1 (x0 = context); it ends in
    /// `rust_secondary_main(context)`. Only its address is used.
    pub fn secondary_entry();
    /// Load 8 bytes from `pa` (identity mapped). If the access takes a
    /// synchronous external abort, the vector sets [`HOST_ACCESS_ABORTED`]
    /// and the result is meaningless.
    pub fn host_load(pa: u64) -> u64;
    /// Store 8 bytes at `pa`; aborts as for [`host_load`].
    pub fn host_store(pa: u64, value: u64);
}
