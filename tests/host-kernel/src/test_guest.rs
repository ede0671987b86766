//! The test guest: a small position-independent EL1 program that `boot`
//! copies into the pages it gives a VM at IPA 0x4000_0000. It carries out
//! the scenario's `guest` statements through a mailbox page at 0x4000_1000
//! and reports with HVCs the hypervisor does not handle, so the host sees
//! them as HVC exits — the same protocol as the simulator's model
//! (tests/sim/src/guest.rs):
//!
//! - entry (x0 = mailbox IPA): set VBAR_EL1, MEM_SHARE the mailbox (a
//!   protected VM's host cannot touch it otherwise; for a normal VM the host
//!   already shares it and the call fails harmlessly), report READY;
//! - loop: when the mailbox's sequence number changes, run its command
//!   (1 read, 2 write, 3 exec, 4 hvc) and report DONE with the result in
//!   x1; otherwise WFI.
//!
//! Reads use `ldr x1` and writes `str x1`, so an MMIO completion by the
//! hypervisor lands in x1. `exec` branches to the address with `blr`; if
//! the code there faults or is not an instruction, the guest's vector
//! returns to the caller, so an `exec` that the stage-2 allows completes.

use core::arch::global_asm;

/// Guest-to-host report: ready after boot.
pub const TG_READY: u64 = 0xC600_0F00;
/// Guest-to-host report: command done, x1 = result.
pub const TG_DONE: u64 = 0xC600_0F01;
/// IPA of the guest image.
pub const GUEST_BASE: u64 = 0x4000_0000;
/// Offset of the mailbox page in the image.
pub const MAILBOX_OFFSET: u64 = 0x1000;
/// Pages the host gives the guest.
pub const GUEST_PAGES: u64 = 16;

/// Mailbox layout (byte offsets).
pub mod mailbox {
    /// Sequence number: a new command when it changes.
    pub const SEQ: u64 = 0;
    /// Command: 1 read, 2 write, 3 exec, 4 hvc.
    pub const OP: u64 = 8;
    /// Address for read/write/exec.
    pub const IPA: u64 = 16;
    /// Value for write.
    pub const VALUE: u64 = 24;
    /// x0..x6 for hvc.
    pub const REGS: u64 = 32;
}

global_asm!(
    r#"
.section .rodata.test_guest, "a"
.balign 4096
.global test_guest_start
test_guest_start:
    mov     x20, x0
    adr     x1, tg_vectors
    msr     vbar_el1, x1
    isb
    movz    x0, #0x0003
    movk    x0, #0xc600, lsl #16
    mov     x1, x20
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
    mov     x21, xzr
    movz    x0, #0x0f00
    movk    x0, #0xc600, lsl #16
    mov     x1, xzr
    hvc     #0
tg_loop:
    ldr     x22, [x20, #0]
    cmp     x22, x21
    b.ne    tg_cmd
    wfi
    b       tg_loop
tg_cmd:
    mov     x21, x22
    ldr     x10, [x20, #8]
    ldr     x9, [x20, #16]
    adr     x30, tg_fault
    cmp     x10, #1
    b.eq    tg_read
    cmp     x10, #2
    b.eq    tg_write
    cmp     x10, #3
    b.eq    tg_exec
    cmp     x10, #4
    b.eq    tg_hvc
    b       tg_fault
tg_read:
    ldr     x1, [x9]
    b       tg_done
tg_write:
    ldr     x1, [x20, #24]
    str     x1, [x9]
    mov     x1, xzr
    b       tg_done
tg_exec:
    blr     x9
    mov     x1, xzr
    b       tg_done
tg_hvc:
    ldp     x0, x1, [x20, #32]
    ldp     x2, x3, [x20, #48]
    ldp     x4, x5, [x20, #64]
    ldr     x6, [x20, #80]
    hvc     #0
    mov     x1, x0
    b       tg_done
tg_fault:
    mov     x1, #-2
tg_done:
    movz    x0, #0x0f01
    movk    x0, #0xc600, lsl #16
    hvc     #0
    b       tg_loop

// An exception at EL1 (code run by `exec`, an alignment fault): resume at
// x30 (the caller of `blr`, or tg_fault).
.balign 2048
tg_vectors:
    .balign 0x80
    b       tg_sync
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       tg_sync
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       .
tg_sync:
    msr     elr_el1, x30
    eret
.balign 8
.global test_guest_end
test_guest_end:
"#
);

extern "C" {
    static test_guest_start: u8;
    static test_guest_end: u8;
}

/// The guest's code, to copy to the first page given to the VM.
pub fn image() -> &'static [u8] {
    // SAFETY: the two symbols delimit the assembled code above in read-only
    // data; the bytes are never written.
    unsafe {
        let start = &raw const test_guest_start;
        let end = &raw const test_guest_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}
