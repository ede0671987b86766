//! `bench` mode: what host calls and host stage-2 faults cost, in
//! instructions, read from the generic counter around tight assembly loops.
//!
//! The runner starts QEMU with `-icount shift=0,sleep=off`: one instruction
//! is then one nanosecond of virtual time, so CNTVCT_EL0 counts
//! CNTFRQ_EL0 / 10^9 ticks per instruction (one on `-cpu max`, whose
//! counter runs at 1 GHz), the same from run to run. Every count covers
//! everything executed between the two reads: the caller's loop, the trap,
//! the hypervisor's work at EL2 and the return.
//!
//! Each measurement is its own small function; [`run`] measures the stage-2
//! fault first, while its 2 MiB regions at the top of free RAM are still
//! untouched, and prints the results in a fixed order.

use core::arch::asm;

use host_interface::{HostCallId, PAGE_SHIFT};

use crate::ram::RamPool;
use crate::{arch, println};

/// Iterations of the host-call loops.
const N: u64 = 1000;
/// Iterations of the 512-page SHARE_HYP + UNSHARE_HYP loop.
const N_512: u64 = 20;
/// 2 MiB regions touched by the stage-2 fault measurement.
const FAULT_REGIONS: u64 = 64;
/// Pages in a 2 MiB block.
const BLOCK_PAGES: u64 = 512;
/// An ID in the host-call range that no call has: the vector's fast path.
const UNKNOWN_CALL: u64 = 0xC600_01FF;
/// HYP_VERSION's answer for ABI 1.0.
const VERSION_1_0: u64 = 0x1_0000;

/// Counter ticks to instructions (see the module documentation).
fn instructions(ticks: u64) -> u64 {
    let hz = arch::cntfrq_el0().max(1);
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64
}

/// `n` times `mov x0, #id; mov x2, xzr; hvc #0; subs; b.ne`, every other
/// argument register zero: ticks for all of it and x0..x2 of the last
/// answer. (x2 is cleared in the loop because HYP_VERSION answers in it
/// and ABI.md 1 makes an unused argument register that is not zero
/// -EINVAL.)
fn call_loop(id: u64, n: u64) -> (u64, [u64; 3]) {
    let (t0, t1, x0, x1, x2): (u64, u64, u64, u64, u64);
    // SAFETY: HVC enters the hypervisor, which answers in x0..x4 and
    // touches no memory of the caller for these calls (HYP_VERSION, or an
    // unknown ID). Every register it may change is declared clobbered.
    unsafe {
        asm!(
            "mov x1, xzr",
            "mov x3, xzr",
            "mov x4, xzr",
            "mov x5, xzr",
            "mov x6, xzr",
            "isb",
            "mrs {t0}, cntvct_el0",
            "2:",
            "mov x0, {id}",
            "mov x2, xzr",
            "hvc #0",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            "isb",
            "mrs {t1}, cntvct_el0",
            id = in(reg) id,
            n = inout(reg) n.max(1) => _,
            t0 = out(reg) t0,
            t1 = out(reg) t1,
            out("x0") x0, out("x1") x1, out("x2") x2,
            out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    (t1.wrapping_sub(t0), [x0, x1, x2])
}

/// Instructions per HYP_VERSION round trip, the caller's loop included.
fn hyp_version_round_trip() -> u64 {
    let (ticks, last) = call_loop(u64::from(HostCallId::HypVersion.id()), N);
    if last != [0, 0, VERSION_1_0] {
        let [x0, x1, x2] = last;
        panic!("HYP_VERSION answered x0 {x0:#x} x1 {x1:#x} x2 {x2:#x}, not 0, 0, {VERSION_1_0:#x}");
    }
    instructions(ticks) / N
}

/// Instructions per round trip of an unknown host call (NOT_SUPPORTED).
fn unknown_call_round_trip() -> u64 {
    let (ticks, last) = call_loop(UNKNOWN_CALL, N);
    if last[0] != u64::MAX {
        panic!(
            "{UNKNOWN_CALL:#x} answered x0 = {:#x}, not -1 (NOT_SUPPORTED)",
            last[0]
        );
    }
    instructions(ticks) / N
}

/// Instructions per SHARE_HYP + UNSHARE_HYP of the `nr` pages at `pfn`,
/// `n` times; panics unless every call answers x0 = 0, x1 = 0.
fn share_unshare(pfn: u64, nr: u64, n: u64) -> u64 {
    let share = u64::from(HostCallId::ShareHyp.id());
    let unshare = u64::from(HostCallId::UnshareHyp.id());
    let (t0, t1, left, x0, x1): (u64, u64, u64, u64, u64);
    // SAFETY: SHARE_HYP and UNSHARE_HYP change who may access the pages,
    // which are free RAM the bench owns and Rust holds no reference to;
    // the hypervisor answers in x0..x4. Every register it may change is
    // declared clobbered.
    unsafe {
        asm!(
            "mov x3, xzr",
            "mov x4, xzr",
            "mov x5, xzr",
            "mov x6, xzr",
            "isb",
            "mrs {t0}, cntvct_el0",
            "2:",
            "mov x0, {share}",
            "mov x1, {pfn}",
            "mov x2, {nr}",
            "hvc #0",
            "orr {tmp}, x0, x1",
            "cbnz {tmp}, 3f",
            "mov x0, {unshare}",
            "mov x1, {pfn}",
            "mov x2, {nr}",
            "hvc #0",
            "orr {tmp}, x0, x1",
            "cbnz {tmp}, 3f",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            "3:",
            "isb",
            "mrs {t1}, cntvct_el0",
            share = in(reg) share,
            unshare = in(reg) unshare,
            pfn = in(reg) pfn,
            nr = in(reg) nr,
            n = inout(reg) n.max(1) => left,
            tmp = out(reg) _,
            t0 = out(reg) t0,
            t1 = out(reg) t1,
            out("x0") x0, out("x1") x1, out("x2") _,
            out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    if left != 0 {
        panic!(
            "SHARE_HYP/UNSHARE_HYP of {nr} pages at pfn {pfn:#x} failed in iteration {}: x0 {x0:#x} x1 {x1:#x}",
            n - left
        );
    }
    instructions(t1.wrapping_sub(t0)) / n
}

/// Ticks for one read of each of `count` addresses `stride` bytes apart
/// from `base`, the loop included.
fn touch_loop(base: u64, stride: u64, count: u64) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: the addresses are free host RAM, identity mapped Normal,
    // which nothing else uses and Rust holds no reference to; a read
    // changes nothing (the hypervisor maps the region in the host's stage-2
    // on the first one). An abort would end in the vector's panic.
    unsafe {
        asm!(
            "isb",
            "mrs {t0}, cntvct_el0",
            "2:",
            "ldr {tmp}, [{addr}]",
            "add {addr}, {addr}, {stride}",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            "isb",
            "mrs {t1}, cntvct_el0",
            addr = inout(reg) base => _,
            stride = in(reg) stride,
            n = inout(reg) count.max(1) => _,
            tmp = out(reg) _,
            t0 = out(reg) t0,
            t1 = out(reg) t1,
            options(nostack, readonly),
        );
    }
    t1.wrapping_sub(t0)
}

/// Instructions a host stage-2 fault costs on the first touch of a 2 MiB
/// region (the hypervisor maps a block): one read in each of the
/// `FAULT_REGIONS` never-touched regions from `base`, minus the same reads
/// again (no fault), per region.
fn stage2_first_touch(base: u64) -> u64 {
    let stride = BLOCK_PAGES << PAGE_SHIFT;
    let first = touch_loop(base, stride, FAULT_REGIONS);
    let again = touch_loop(base, stride, FAULT_REGIONS);
    instructions(first.saturating_sub(again)) / FAULT_REGIONS
}

/// Run every measurement and print one line each, then `bench: done`.
pub fn run(pool: &mut RamPool) {
    // First, while nothing has touched them: 2 MiB-aligned regions from the
    // top of free RAM (the lowest addresses hold the image, the device tree
    // and the initrd).
    let regions = pool
        .take_high(FAULT_REGIONS * BLOCK_PAGES, BLOCK_PAGES)
        .unwrap_or_else(|| panic!("no {FAULT_REGIONS} free 2 MiB regions"));
    let fault = stage2_first_touch(regions << PAGE_SHIFT);

    let version = hyp_version_round_trip();
    println!("bench: HYP_VERSION round trip: {version} instructions");
    let unknown = unknown_call_round_trip();
    println!(
        "bench: unknown host call {UNKNOWN_CALL:#X} (NOT_SUPPORTED) round trip: {unknown} instructions"
    );
    let page = pool
        .take_low(1, 1)
        .unwrap_or_else(|| panic!("no free RAM page"));
    let one = share_unshare(page, 1, N);
    println!("bench: SHARE_HYP+UNSHARE_HYP, 1 page: {one} instructions");
    let run = pool
        .take_low(BLOCK_PAGES, BLOCK_PAGES)
        .unwrap_or_else(|| panic!("no free 2 MiB of RAM"));
    let many = share_unshare(run, BLOCK_PAGES, N_512);
    println!(
        "bench: SHARE_HYP+UNSHARE_HYP, {BLOCK_PAGES} pages: {many} instructions ({} per page)",
        many / BLOCK_PAGES
    );
    println!("bench: host stage-2 fault (first touch of a 2 MiB region): {fault} instructions");
    println!("bench: done");
}
