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
//!   (1 read, 2 write, 3 exec, 4 hvc, 5 timed hvc loop, 6 exit loop,
//!   7 interrupts) and report DONE with the result in x1; otherwise WFI.
//!
//! The last two are for the bench mode ([`crate::bench`]):
//!
//! - 5, timed hvc loop: `VALUE` (at least 1) times `mov x0, #0x80000000;
//!   hvc #0` (SMCCC_VERSION, which the hypervisor answers at EL2 without
//!   an exit) between two `isb; mrs cntvct_el0` reads; DONE with x1 =
//!   (end - start) / `VALUE` counter ticks and x2 = the last call's x0;
//! - 6, exit loop: DONE with x1 = 1, then again with x1 = 2, 3, ... each
//!   time the vCPU is run again, for ever: every VCPU_RUN is then one HVC
//!   exit after six guest instructions.
//!
//! Reads use `ldr x1` and writes `str x1`, so an MMIO completion by the
//! hypervisor lands in x1. `exec` branches to the address with `blr`; if
//! the code there faults or is not an instruction, the guest's vector
//! returns to the caller, so an `exec` that the stage-2 allows completes.

use core::arch::global_asm;

use scenario::Abort;

use crate::{access, arch};

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
    /// Command: 1 read, 2 write, 3 exec, 4 hvc, 5 timed hvc loop, 6 exit
    /// loop, 7 interrupts.
    pub const OP: u64 = 8;
    /// Address for read/write/exec.
    pub const IPA: u64 = 16;
    /// Value for write; iterations for the timed hvc loop.
    pub const VALUE: u64 = 24;
    /// x0..x6 for hvc.
    pub const REGS: u64 = 32;
}

/// Mailbox commands.
pub mod op {
    /// Read 8 bytes at `IPA`: DONE with the value.
    pub const READ: u64 = 1;
    /// Write `VALUE` at `IPA`: DONE with 0.
    pub const WRITE: u64 = 2;
    /// `blr` to `IPA`: DONE with 0 when the code there returns.
    pub const EXEC: u64 = 3;
    /// `hvc #0` with `REGS`: DONE with x0.
    pub const HVC: u64 = 4;
    /// `VALUE` timed SMCCC_VERSION calls: DONE with ticks per call in x1,
    /// the last answer in x2.
    pub const TIMED_HVC: u64 = 5;
    /// DONE with x1 = 1, 2, 3, ... each time the vCPU runs again, for ever.
    pub const EXIT_LOOP: u64 = 6;
    /// Take interrupts through the GIC's (virtual) CPU interface: priority
    /// mask open, group 1 on, IRQs unmasked, then wait. `IPA` holds
    /// [`irq_mode`] bits. Without `MASK`: arm the virtual timer `VALUE`
    /// ticks ahead (0: not at all), wait for one interrupt, DONE with its
    /// INTID. With `MASK`: wait until every SPI of the mask `VALUE` (bit n
    /// for INTID 32 + n) has come, DONE with the mask of those that came.
    /// The handler stops the timer if it fired.
    pub const IRQ: u64 = 7;
    /// `VALUE` timed calls `hvc #0` with x0, x1 from `REGS` (x2..x6
    /// zero): DONE with ticks per call in x1, the last answer in x2.
    pub const TIMED_CALL: u64 = 8;
}

/// `IPA` bits of [`op::IRQ`].
pub mod irq_mode {
    /// Wait by spinning (no WFI).
    pub const SPIN: u64 = 1;
    /// Wait for the SPIs of the mask in `VALUE`.
    pub const MASK: u64 = 2;
    /// Write `VALUE` to ICC_SGI1R_EL1 (send an SGI), then wait for one
    /// interrupt (no timer).
    pub const SGI: u64 = 4;
    /// With [`SGI`]: DONE with 0 right after sending, without waiting.
    pub const SEND_ONLY: u64 = 8;
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
    cmp     x10, #5
    b.eq    tg_timed_hvc
    cmp     x10, #6
    b.eq    tg_exit_loop
    cmp     x10, #7
    b.eq    tg_irq_wait
    cmp     x10, #8
    b.eq    tg_timed_call
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
tg_timed_hvc:
    ldr     x11, [x20, #24]
    cmp     x11, #0
    csinc   x11, x11, xzr, ne
    mov     x12, x11
    movz    x13, #0x8000, lsl #16
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    isb
    mrs     x14, cntvct_el0
1:
    mov     x0, x13
    hvc     #0
    subs    x12, x12, #1
    b.ne    1b
    isb
    mrs     x15, cntvct_el0
    mov     x2, x0
    sub     x1, x15, x14
    udiv    x1, x1, x11
    b       tg_done
tg_timed_call:
    ldr     x11, [x20, #24]
    cmp     x11, #0
    csinc   x11, x11, xzr, ne
    mov     x12, x11
    ldp     x13, x16, [x20, #32]
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    isb
    mrs     x14, cntvct_el0
1:
    mov     x0, x13
    mov     x1, x16
    hvc     #0
    subs    x12, x12, #1
    b.ne    1b
    isb
    mrs     x15, cntvct_el0
    mov     x2, x0
    sub     x1, x15, x14
    udiv    x1, x1, x11
    b       tg_done
tg_exit_loop:
    mov     x23, xzr
1:
    add     x23, x23, #1
    movz    x0, #0x0f01
    movk    x0, #0xc600, lsl #16
    mov     x1, x23
    hvc     #0
    b       1b
tg_irq_wait:
    ldr     x11, [x20, #24]
    mov     x24, #1023
    mov     x26, xzr
    mov     x0, #0xff
    msr     S3_0_C4_C6_0, x0
    mov     x0, #1
    msr     S3_0_C12_C12_7, x0
    isb
    tbnz    x9, #1, 2f
    tbnz    x9, #2, 2f
    cbz     x11, 2f
    mrs     x0, cntvct_el0
    add     x0, x0, x11
    msr     cntv_cval_el0, x0
    mov     x0, #1
    msr     cntv_ctl_el0, x0
2:
    isb
    msr     daifclr, #2
    tbz     x9, #2, 3f
    msr     S3_0_C12_C11_5, x11
    tbz     x9, #3, 3f
    msr     daifset, #2
    mov     x1, xzr
    b       tg_done
3:
    tbnz    x9, #1, 4f
    cmp     x24, #1023
    b.ne    5f
    b       6f
4:
    and     x0, x26, x11
    cmp     x0, x11
    b.eq    5f
6:
    tbnz    x9, #0, 3b
    wfi
    b       3b
5:
    msr     daifset, #2
    isb
    mov     x1, x24
    tbz     x9, #1, tg_done
    mov     x1, x26
    b       tg_done
tg_fault:
    mov     x1, #-2
tg_done:
    movz    x0, #0x0f01
    movk    x0, #0xc600, lsl #16
    hvc     #0
    b       tg_loop

// For `exec`: a register the hypervisor traps and does not emulate (the
// host's PMU), which ends the VM (FATAL).
.balign 8
.global test_guest_pmu
test_guest_pmu:
    mrs     x0, pmcr_el0
    ret

// An exception at EL1 (code run by `exec`, an alignment fault): resume at
// x30 (the caller of `blr`, or tg_fault).
.balign 2048
tg_vectors:
    .balign 0x80
    b       tg_sync
    .balign 0x80
    b       tg_irq
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       tg_sync
    .balign 0x80
    b       tg_irq
    .balign 0x80
    b       .
    .balign 0x80
    b       .
    .balign 0x80
    b       .
tg_sync:
    msr     elr_el1, x30
    eret
// An interrupt (`irq` command): acknowledge it (x24 = INTID), stop the
// virtual timer if it fired, note an SPI 32..95 in the mask x26, then end
// it (priority drop and deactivation).
tg_irq:
    mrs     x24, S3_0_C12_C12_0
    mrs     x25, cntv_ctl_el0
    tbz     x25, #2, 1f
    msr     cntv_ctl_el0, xzr
1:
    sub     x25, x24, #32
    cmp     x25, #64
    b.hs    2f
    mov     x27, #1
    lsl     x27, x27, x25
    orr     x26, x26, x27
2:
    isb
    msr     S3_0_C12_C12_1, x24
    eret
.balign 8
.global test_guest_end
test_guest_end:
"#
);

// The spinning code for the fuzz mode's last test (`spin_image`): the
// host copies it to a page it shares into a normal VM with RWX and the test
// guest runs it with `exec`. It stores 1 at offset 16 (the host sees the
// guest got there), then spins without trapping (counter reads only) until
// the counter has advanced by the value at offset 8, then returns.
global_asm!(
    r#"
.section .rodata.spin_guest, "a"
.balign 8
.global spin_guest_start
spin_guest_start:
    b       2f
    .balign 8
sg_ticks:
    .quad   0
sg_marker:
    .quad   0
2:
    ldr     x10, sg_ticks
    isb
    mrs     x11, cntvct_el0
    adr     x12, sg_marker
    mov     x13, #1
    str     x13, [x12]
3:
    isb
    mrs     x13, cntvct_el0
    sub     x13, x13, x11
    cmp     x13, x10
    b.lo    3b
    ret
.balign 8
.global spin_guest_end
spin_guest_end:
"#
);

/// Offset in the spinning code of how long it spins, in counter ticks.
pub const SPIN_TICKS_OFFSET: u64 = 8;
/// Offset in the spinning code of the word it sets to 1 before spinning.
pub const SPIN_MARKER_OFFSET: u64 = 16;

extern "C" {
    static test_guest_start: u8;
    static test_guest_end: u8;
    static test_guest_pmu: u8;
    static spin_guest_start: u8;
    static spin_guest_end: u8;
}

/// IPA of a routine in the guest image that reads PMCR_EL0 (trapped, not
/// emulated: FATAL) and returns, for `exec`.
pub fn pmu_routine_ipa() -> u64 {
    // Both symbols are in the assembled guest above; only their addresses
    // are taken.
    let off = (&raw const test_guest_pmu) as u64 - (&raw const test_guest_start) as u64;
    GUEST_BASE + off
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

/// The spinning code (see the comment on its assembly): copy it to the
/// start of a page and write the spin time at [`SPIN_TICKS_OFFSET`].
pub fn spin_image() -> &'static [u8] {
    // SAFETY: the two symbols delimit the assembled code above in read-only
    // data; the bytes are never written.
    unsafe {
        let start = &raw const spin_guest_start;
        let end = &raw const spin_guest_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Copy `code` to the host memory at `pa` (8-byte aligned) through
/// [`access`], zero-padding the last word.
pub fn copy_code(pa: u64, code: &[u8]) -> Result<(), Abort> {
    for (i, chunk) in code.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        access::write(pa + 8 * i as u64, u64::from_le_bytes(word))?;
    }
    Ok(())
}

/// Write the test guest into the two pages at `pa` (host RAM the host may
/// write): its code in the first, a zeroed mailbox in the second, cleaned
/// to the point of coherency for the guest, which starts with its MMU off.
pub fn install(pa: u64) -> Result<(), &'static str> {
    if image().len() as u64 > MAILBOX_OFFSET {
        return Err("the test guest's code does not fit in its first page");
    }
    access::fill(pa, 2 * MAILBOX_OFFSET, 0).map_err(|_| "cannot write the guest's pages")?;
    copy_code(pa, image()).map_err(|_| "cannot write the guest's code")?;
    arch::dcache_clean(pa as usize, (pa + 2 * MAILBOX_OFFSET) as usize);
    Ok(())
}
