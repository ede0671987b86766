//! `memcpy` and `memset` for the image, in place of compiler_builtins'
//! generic ones, which move one word per iteration: the world switch copies
//! a vCPU's context (about 1.5 KiB) in and out on every VCPU_RUN, and that
//! made memcpy the largest cost of a round trip. These move 64 bytes per
//! iteration when both addresses are 8-byte aligned (SCTLR_EL2.A is clear,
//! but everything they copy is Normal memory and aligned in practice), then
//! the rest under 64 bytes in at most one 32-, 16- and 8-byte step each
//! (small copies, such as a host call's registers, are common), and fall
//! back to bytes otherwise. `memmove` and `memcmp` stay
//! compiler_builtins'.

use core::arch::global_asm;

global_asm!(
    r#"
.section .text.mem, "ax"
// memcpy(dst x0, src x1, n x2) -> dst. The areas do not overlap.
.global memcpy
.type memcpy, %function
memcpy:
    mov     x3, x0
    orr     x4, x0, x1
    tst     x4, #7
    b.ne    3f
1:  cmp     x2, #64
    b.lo    2f
    ldp     x4, x5, [x1]
    ldp     x6, x7, [x1, #16]
    ldp     x8, x9, [x1, #32]
    ldp     x10, x11, [x1, #48]
    add     x1, x1, #64
    sub     x2, x2, #64
    stp     x4, x5, [x3]
    stp     x6, x7, [x3, #16]
    stp     x8, x9, [x3, #32]
    stp     x10, x11, [x3, #48]
    add     x3, x3, #64
    b       1b
    // Under 64 bytes left: 32, 16 and 8 by the bits of the count, with no
    // loop (the host call's registers and results are 40 to 56 bytes).
2:  tbz     x2, #5, 5f
    ldp     x4, x5, [x1]
    ldp     x6, x7, [x1, #16]
    add     x1, x1, #32
    stp     x4, x5, [x3]
    stp     x6, x7, [x3, #16]
    add     x3, x3, #32
5:  tbz     x2, #4, 6f
    ldp     x4, x5, [x1], #16
    stp     x4, x5, [x3], #16
6:  tbz     x2, #3, 7f
    ldr     x4, [x1], #8
    str     x4, [x3], #8
7:  and     x2, x2, #7
3:  cbz     x2, 4f
    ldrb    w4, [x1], #1
    strb    w4, [x3], #1
    sub     x2, x2, #1
    b       3b
4:  ret

// memset(dst x0, c w1, n x2) -> dst.
.global memset
.type memset, %function
memset:
    mov     x3, x0
    and     x1, x1, #0xff
    mov     x4, #0x0101010101010101
    mul     x4, x1, x4
    tst     x3, #7
    b.ne    3f
1:  cmp     x2, #64
    b.lo    2f
    stp     x4, x4, [x3]
    stp     x4, x4, [x3, #16]
    stp     x4, x4, [x3, #32]
    stp     x4, x4, [x3, #48]
    add     x3, x3, #64
    sub     x2, x2, #64
    b       1b
2:  tbz     x2, #5, 5f
    stp     x4, x4, [x3]
    stp     x4, x4, [x3, #16]
    add     x3, x3, #32
5:  tbz     x2, #4, 6f
    stp     x4, x4, [x3], #16
6:  tbz     x2, #3, 7f
    str     x4, [x3], #8
7:  and     x2, x2, #7
3:  cbz     x2, 4f
    strb    w4, [x3], #1
    sub     x2, x2, #1
    b       3b
4:  ret
"#
);
