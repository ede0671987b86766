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
//! untouched, and prints the results in a fixed order. The last three
//! measure guests running the test guest ([`crate::test_guest`]): a guest
//! call answered at EL2 (timed by the guest itself), a VCPU_RUN round trip
//! through an HVC exit, and a guest stage-2 fault served by GUEST_DONATE.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;

use host_interface::{prot, ExitReason, GuestCallId, HostCallId, PAGE_SHIFT};

use crate::ram::RamPool;
use crate::vm::{self, TestVm};
use crate::{access, arch, println, test_guest};

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
/// Guest SMCCC_VERSION calls the test guest times.
const GUEST_CALLS: u64 = 1000;
/// The guest call it makes (answered at EL2) and its answer (1.1).
const SMCCC_VERSION: u64 = 0x8000_0000;
const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// VCPU_RUN round trips timed.
const RUNS: u64 = 1000;
/// Guest stage-2 faults timed, each at a fresh IPA from `FAULT_IPA`.
const GUEST_FAULTS: u64 = 64;
const FAULT_IPA: u64 = 0x8000_0000;

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

/// Instructions per guest SMCCC_VERSION call (answered at EL2, no exit to
/// the host), as the guest measures it: the test guest's timed hvc loop
/// (`mov x0, #0x80000000; hvc #0; subs; b.ne`, [`GUEST_CALLS`] times, its
/// loop included) in the normal VM `vm`, already booted.
fn guest_hvc_round_trip(vm: &mut TestVm) -> Result<u64, String> {
    vm.post(test_guest::op::TIMED_HVC, 0, GUEST_CALLS)?;
    let ticks = vm.done(vm.run())?;
    let last = vm.hvc_arg(2);
    if last != SMCCC_VERSION_1_1 {
        return Err(format!(
            "the guest's SMCCC_VERSION answered {last:#x}, not {SMCCC_VERSION_1_1:#x} (call {SMCCC_VERSION:#x})"
        ));
    }
    Ok(instructions(ticks))
}

/// `n` times `VCPU_RUN(handle, vcpu)`, stopping at the first answer that is
/// not a success with an HVC exit: ticks, the runs left (0 when all
/// succeeded) and x0..x2 of the last answer.
fn vcpu_run_loop(handle: u64, vcpu: u64, n: u64) -> (u64, u64, [u64; 3]) {
    let run = u64::from(HostCallId::VcpuRun.id());
    let (t0, t1, left, x0, x1, x2): (u64, u64, u64, u64, u64, u64);
    // SAFETY: VCPU_RUN enters the guest, whose memory the host gave it
    // (pages Rust holds no reference to), and returns at its next exit
    // for the host, answering in x0..x4; the hypervisor writes only the
    // run page, shared with it, which Rust holds no reference to either.
    // Every register it may change is declared clobbered.
    unsafe {
        asm!(
            "mov x3, xzr",
            "mov x4, xzr",
            "mov x5, xzr",
            "mov x6, xzr",
            "isb",
            "mrs {t0}, cntvct_el0",
            "2:",
            "mov x0, {run}",
            "mov x1, {handle}",
            "mov x2, {vcpu}",
            "hvc #0",
            "orr {tmp}, x0, x1",
            "cbnz {tmp}, 3f",
            "cmp x2, #{hvc_exit}",
            "b.ne 3f",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            "3:",
            "isb",
            "mrs {t1}, cntvct_el0",
            run = in(reg) run,
            handle = in(reg) handle,
            vcpu = in(reg) vcpu,
            hvc_exit = const ExitReason::Hvc as u64,
            n = inout(reg) n.max(1) => left,
            tmp = out(reg) _,
            t0 = out(reg) t0,
            t1 = out(reg) t1,
            out("x0") x0, out("x1") x1, out("x2") x2,
            out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    (t1.wrapping_sub(t0), left, [x0, x1, x2])
}

/// Instructions per VCPU_RUN round trip: the host's `hvc #0` to EL2, the
/// world switch into the guest, six guest instructions (the test guest's
/// exit loop: `b; add; movz; movk; mov; hvc`), the guest's HVC trap
/// forwarded to the host as an HVC exit (x0..x6 written to the run page),
/// the world switch back and the return to the host; plus the host's loop
/// around it (`mov` x3, `hvc`, `orr; cbnz; cmp; b.ne; subs; b.ne`).
/// [`RUNS`] times in the normal VM `vm`, already booted, which is left
/// in the exit loop.
fn vcpu_run_round_trip(vm: &mut TestVm) -> Result<u64, String> {
    vm.post(test_guest::op::EXIT_LOOP, 0, 0)?;
    let first = vm.done(vm.run())?;
    if first != 1 {
        return Err(format!("the exit loop's first report was {first}, not 1"));
    }
    let (ticks, left, [x0, x1, x2]) = vcpu_run_loop(vm.handle, vm.vcpu, RUNS);
    if left != 0 {
        return Err(format!(
            "VCPU_RUN {} of {RUNS} answered x0 {x0:#x} x1 {x1:#x} x2 {x2:#x}",
            RUNS - left + 1
        ));
    }
    let count = vm.hvc_arg(1);
    if vm.hvc_arg(0) != test_guest::TG_DONE || count != RUNS + 1 {
        return Err(format!(
            "after {RUNS} runs the guest reported {:#x} {count}, not DONE {}",
            vm.hvc_arg(0),
            RUNS + 1
        ));
    }
    Ok(instructions(ticks) / RUNS)
}

/// Instructions per guest stage-2 fault served by GUEST_DONATE, in the
/// protected VM `vm`, already booted: for each of [`GUEST_FAULTS`] fresh
/// IPAs from [`FAULT_IPA`], the whole sequence from the host: post a read
/// command in the mailbox, VCPU_RUN (the guest reads the IPA, nothing is
/// mapped there: MEM_FAULT exit), read the IPA from the run page,
/// GUEST_DONATE a page there (R), VCPU_RUN (the read completes, the guest
/// reports DONE with the value: an HVC exit). Two VCPU_RUN round trips
/// and the test guest's command dispatch are included. The pages are
/// written (each with its own pfn) and cleaned before the clock starts;
/// the values the guest read are checked after it stops.
fn guest_fault_round_trip(vm: &mut TestVm, pool: &mut RamPool) -> Result<u64, String> {
    let first = vm::take(pool, GUEST_FAULTS)?;
    for pfn in first..first + GUEST_FAULTS {
        let pa = pfn << PAGE_SHIFT;
        access::write(pa, pfn).map_err(|_| format!("cannot write pfn {pfn:#x}"))?;
        arch::dcache_clean(pa as usize, pa as usize + 8);
    }
    let mut seen = Vec::with_capacity(GUEST_FAULTS as usize);
    let t0 = arch::cntvct();
    for k in 0..GUEST_FAULTS {
        let ipa = FAULT_IPA + (k << PAGE_SHIFT);
        vm.post(test_guest::op::READ, ipa, 0)?;
        let fault = vm.run();
        let at = vm.fault_ipa();
        let donated = vm::call(
            HostCallId::GuestDonate,
            &[vm.handle, first + k, at >> PAGE_SHIFT, 1, prot::R],
        );
        let done = vm.run();
        seen.push((ipa, fault, at, donated, done));
        if fault[2] != ExitReason::MemFault as u64 || donated[..2] != [0, 0] {
            break;
        }
    }
    let t1 = arch::cntvct();
    for (k, &(ipa, fault, at, donated, done)) in seen.iter().enumerate() {
        vm.expect_exit(fault, ExitReason::MemFault)
            .map_err(|e| format!("read of {ipa:#x}: {e}"))?;
        if at != ipa {
            return Err(format!("read of {ipa:#x}: MEM_FAULT at {at:#x}"));
        }
        if donated != [0; 5] {
            let [x0, x1, ..] = donated;
            return Err(format!(
                "GUEST_DONATE at {ipa:#x} answered x0 {x0:#x} x1 {x1:#x}"
            ));
        }
        // Only the last DONE's value is still in the run page.
        if k + 1 == seen.len() {
            let value = vm.done(done)?;
            let want = first + k as u64;
            if value != want {
                return Err(format!(
                    "the guest read {value:#x} at {ipa:#x}, not {want:#x}"
                ));
            }
        } else {
            vm.expect_exit(done, ExitReason::Hvc)?;
        }
    }
    if seen.len() as u64 != GUEST_FAULTS {
        return Err(format!(
            "only {} of {GUEST_FAULTS} faults served",
            seen.len()
        ));
    }
    Ok(instructions(t1.wrapping_sub(t0)) / GUEST_FAULTS)
}

/// The three guest measurements: a normal VM for the guest call and the
/// VCPU_RUN round trip, a protected VM for the donation fault.
fn guest_benches(pool: &mut RamPool) -> Result<[u64; 3], String> {
    let mut normal = TestVm::create(pool, false)?;
    normal.boot()?;
    let hvc = guest_hvc_round_trip(&mut normal)?;
    let run = vcpu_run_round_trip(&mut normal)?;
    let mut protected = TestVm::create(pool, true)?;
    protected.boot()?;
    let fault = guest_fault_round_trip(&mut protected, pool)?;
    Ok([hvc, run, fault])
}

/// Guest SMCCC_VERSION calls CPU 1's guest makes while CPU 0 measures
/// (about 150 instructions each: far longer than CPU 0's loop).
const LOAD_CALLS: u64 = 200_000;
/// Counter ticks CPU 0 waits for CPU 1's guest to be running.
const LOAD_SETTLE: u64 = 500_000;

/// SHARE_HYP + UNSHARE_HYP of `page` on CPU 0 (instructions per pair), with
/// CPU 1 idle (spinning in the test host) and then with CPU 1 running a
/// guest that traps to EL2 in a loop (its timed SMCCC_VERSION calls, each
/// handled at EL2 and answered without an exit to the host). Under
/// `-icount` the CPUs take turns, so both figures include CPU 1's share of
/// the virtual clock; their ratio is what the guest's traps cost CPU 0 (a
/// lock they shared would show up here).
fn share_unshare_under_guest_load(
    pool: &mut RamPool,
    page: u64,
    cpu1: u64,
    psci_hvc: bool,
) -> Result<(u64, u64), String> {
    crate::guest_smp::start_cpu1(cpu1, psci_hvc)?;
    let idle = share_unshare(page, 1, N);
    let mut vm = TestVm::create(pool, false)?;
    vm.boot()?;
    vm.post(test_guest::op::TIMED_HVC, 0, LOAD_CALLS)?;
    let seq = crate::guest_smp::cpu1_run(vm.handle, vm.vcpu);
    let t0 = arch::cntvct();
    while arch::cntvct().wrapping_sub(t0) < LOAD_SETTLE {
        core::hint::spin_loop();
    }
    let loaded = share_unshare(page, 1, N);
    let r = crate::guest_smp::cpu1_answer(seq)?;
    let last = vm.done(r);
    if vm.hvc_arg(2) != SMCCC_VERSION_1_1 {
        return Err(format!(
            "CPU 1's guest answered {last:?}, SMCCC_VERSION {:#x}",
            vm.hvc_arg(2)
        ));
    }
    Ok((idle, loaded))
}

/// GUEST_SHARE + GUEST_UNSHARE of one page into VM A on CPU 0
/// (instructions per pair), with CPU 1 idle and then with CPU 1 running VM
/// B's guest calling MMIO_GUARD in a loop (each call handled at EL2 under
/// VM B's lock, without an exit). A's calls take A's lock and the host's;
/// B's traps take B's alone, so with per-VM locks the two do not queue on
/// each other (with one lock for the core they did). CPU 1 must be
/// started.
fn vm_calls_under_other_vm_load(
    pool: &mut RamPool,
    cpu1_started: bool,
) -> Result<(u64, u64), String> {
    use HostCallId as C;
    if !cpu1_started {
        return Err("CPU 1 not started".into());
    }
    let a = TestVm::create(pool, false)?;
    let page = vm::take(pool, 1)?;
    let gfn = 0x9_0000;
    let pairs = || -> Result<u64, String> {
        let t0 = arch::cntvct();
        for _ in 0..N {
            vm::call_ok(C::GuestShare, &[a.handle, page, gfn, 1, prot::R | prot::W])?;
            vm::call_ok(C::GuestUnshare, &[a.handle, gfn, 1])?;
        }
        Ok(instructions(arch::cntvct().wrapping_sub(t0)) / N)
    };
    let idle = pairs()?;
    let mut b = TestVm::create(pool, false)?;
    b.boot()?;
    let mb = b.image_pa() + test_guest::MAILBOX_OFFSET;
    let guard = u64::from(GuestCallId::MmioGuard.id());
    for (k, v) in [guard, GUARD_IPA].iter().enumerate() {
        access::write(mb + test_guest::mailbox::REGS + 8 * k as u64, *v)
            .map_err(|_| String::from("the host cannot write the guest's mailbox"))?;
    }
    arch::dcache_clean(mb as usize, (mb + 96) as usize);
    b.post(test_guest::op::TIMED_CALL, 0, LOAD_CALLS)?;
    let seq = crate::guest_smp::cpu1_run(b.handle, b.vcpu);
    let t0 = arch::cntvct();
    while arch::cntvct().wrapping_sub(t0) < LOAD_SETTLE {
        core::hint::spin_loop();
    }
    let loaded = pairs()?;
    let r = crate::guest_smp::cpu1_answer(seq)?;
    b.done(r)?;
    if b.hvc_arg(2) != 0 {
        return Err(format!(
            "CPU 1's guest's MMIO_GUARD answered {:#x}",
            b.hvc_arg(2)
        ));
    }
    Ok((idle, loaded))
}

/// Where VM B's guest registers MMIO in [`vm_calls_under_other_vm_load`]:
/// above its image, nothing mapped.
const GUARD_IPA: u64 = 0x5000_0000;

/// Run every measurement and print one line each, then `bench: done`.
/// `cpu1` (MPIDR) is the second CPU, for the measurement under a guest's
/// load; `psci_hvc` says how to start it.
pub fn run(pool: &mut RamPool, cpu1: Option<u64>, psci_hvc: bool) {
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
    let [hvc, run, fault] = guest_benches(pool).unwrap_or_else(|e| panic!("guest bench: {e}"));
    println!("bench: guest HVC handled at EL2 (SMCCC_VERSION) round trip: {hvc} instructions");
    println!("bench: VCPU_RUN round trip (guest exit to the host and back): {run} instructions");
    println!("bench: guest stage-2 fault served by GUEST_DONATE: {fault} instructions");
    match cpu1 {
        Some(mpidr) => {
            let (idle, loaded) = share_unshare_under_guest_load(pool, page, mpidr, psci_hvc)
                .unwrap_or_else(|e| panic!("bench under load: {e}"));
            println!(
                "bench: SHARE_HYP+UNSHARE_HYP, 1 page, CPU 1 idle: {idle} instructions; CPU 1 running a guest trapping to EL2: {loaded} instructions ({}.{:02}x)",
                loaded / idle.max(1),
                loaded * 100 / idle.max(1) % 100
            );
        }
        None => println!("bench: SHARE_HYP+UNSHARE_HYP under a guest's load: skipped (one CPU)"),
    }
    match vm_calls_under_other_vm_load(pool, cpu1.is_some()) {
        Ok((idle, loaded)) => println!(
            "bench: GUEST_SHARE+GUEST_UNSHARE on VM A, 1 page, CPU 1 idle: {idle} instructions; CPU 1 running VM B's guest calling MMIO_GUARD: {loaded} instructions ({}.{:02}x)",
            loaded / idle.max(1),
            loaded * 100 / idle.max(1) % 100
        ),
        Err(e) => println!("bench: GUEST_SHARE+GUEST_UNSHARE on VM A under VM B's load: skipped ({e})"),
    }
    println!("bench: done");
}
