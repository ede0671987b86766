//! `guestfuzz` mode: guests that call the hypervisor with random arguments,
//! fault, and touch registers it does not emulate must never crash or hang
//! it, and must get the answers ABI.md gives.
//!
//! For a normal and a protected VM running the test guest:
//!
//! - **random guest calls:** the guest makes [`CALLS`] HVCs with a function
//!   ID drawn from every guest call, PSCI, the host-call range and random
//!   values, and x1..x6 drawn from edge values (page-aligned and unaligned
//!   IPAs inside and outside its memory, beyond the IPA space, all ones).
//!   Calls the hypervisor forwards come to the host as HVC exits with the
//!   guest's registers, and the host's results go back. Checked: host-call
//!   IDs answer NOT_SUPPORTED and are never forwarded; SMCCC_VERSION answers
//!   1.1; SYSTEM_OFF and SYSTEM_RESET give SYSTEM_EVENT with their type;
//!   CPU_OFF leaves the vCPU answering WFI; no call gives any other exit.
//!   When a call ends the guest (power off, its mailbox unshared), the VM is
//!   torn down and a new one made;
//! - **faults:** reads, writes and `exec` at random IPAs, inside and outside
//!   the guest's memory and beyond its IPA space, give DONE, MEM_FAULT at
//!   that IPA or FATAL, nothing else;
//! - **an unemulated register** (PMCR_EL0) gives FATAL, again on the next
//!   run; the VM is torn down;
//! - **two vCPUs on two physical CPUs** ([`guest_smp`]): guest PSCI for its
//!   own vCPUs, -EBUSY for a vCPU another CPU runs, an SGI across CPUs;
//! - every VM ends with VM_DESTROY and RECLAIM, and every page it had is the
//!   host's again; the hypervisor then still answers HYP_VERSION.

use alloc::format;
use alloc::string::String;
use core::mem::offset_of;

use host_interface::{psci, system_event, ExitReason, HostCallId, RunPage, SMCCC_VERSION_1_1};
use scenario::Tally;

use crate::fuzz::Rng;
use crate::guest_smp;
use crate::println;
use crate::ram::RamPool;
use crate::test_guest::{self, op, GUEST_BASE, GUEST_PAGES, MAILBOX_OFFSET, TG_DONE};
use crate::vm::{call, TestVm};

/// Random calls per VM kind.
const CALLS: u32 = 3000;
/// Random accesses per VM kind.
const ACCESSES: u32 = 300;
/// Runs one command may take before it counts as hung.
const MAX_RUNS: u32 = 1000;

const NOT_SUPPORTED: u64 = u64::MAX;
const SMCCC_VERSION: u64 = 0x8000_0000;
const PSCI_CPU_OFF: u64 = 0x8400_0002;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
const MEM_UNSHARE: u64 = 0xC600_0004;

/// IDs the generator draws from (besides random ones).
const IDS: [u64; 20] = [
    SMCCC_VERSION,
    0x8000_0001,
    0x8600_FF01,
    0x8600_0000,
    0xC600_0002,
    0xC600_0003,
    MEM_UNSHARE,
    0xC600_0007,
    0x8400_0000,
    0xC400_0001,
    0x8400_0001,
    0xC400_0003,
    0x8400_0003,
    0xC400_0004,
    0x8400_0006,
    0x8400_000A,
    0xC600_0100,
    0xC600_0123,
    0xC600_01FF,
    0x8600_1234,
];

/// An address: inside the guest's memory (page-aligned or not), just
/// outside it, at the top of the IPA space or beyond, or anything.
fn address(rng: &mut Rng) -> u64 {
    let top = 1u64 << host_interface::GUEST_IPA_BITS;
    match rng.below(8) {
        0 => GUEST_BASE + (rng.below(GUEST_PAGES) << 12),
        1 => GUEST_BASE + rng.below(GUEST_PAGES << 12),
        2 => GUEST_BASE + (GUEST_PAGES << 12) + (rng.below(64) << 12),
        3 => rng.below(top) & !0xfff,
        4 => top - 0x1000,
        5 => top + (rng.below(16) << 12),
        6 => u64::MAX - rng.below(0x1000),
        _ => rng.next(),
    }
}

fn call_regs(rng: &mut Rng) -> [u64; 7] {
    let id = match rng.below(100) {
        0..=1 => PSCI_SYSTEM_OFF,
        2 => PSCI_SYSTEM_RESET,
        3 => PSCI_CPU_OFF,
        4..=79 => IDS[rng.below(IDS.len() as u64) as usize],
        80..=89 => 0xC600_0100 | rng.below(0x100),
        _ => rng.next(),
    };
    let mut regs = [id, 0, 0, 0, 0, 0, 0];
    for r in &mut regs[1..] {
        *r = match rng.below(6) {
            0 | 1 => 0,
            2 | 3 => address(rng),
            4 => rng.below(8),
            _ => rng.next(),
        };
    }
    regs
}

/// What one command came to.
enum End {
    /// DONE with x1.
    Done(u64),
    /// Any other exit that ends the command: the VCPU_RUN answer.
    Exit(ExitReason),
}

/// Run `vm` until DONE or an exit other than INTERRUPTED, WFI and forwarded
/// calls (answered with recognisable results); `forwarded` counts those.
fn until_end(vm: &TestVm, forwarded: &mut u32, sent: Option<u64>) -> Result<End, String> {
    for _ in 0..MAX_RUNS {
        let r = vm.run();
        if r[0] != 0 || r[1] != 0 {
            return Err(format!("VCPU_RUN answered {r:#x?}"));
        }
        let Some(reason) = ExitReason::from_u64(r[2]) else {
            return Err(format!("VCPU_RUN gave exit {:#x}", r[2]));
        };
        match reason {
            // CPU_OFF leaves the vCPU off: WFI for ever, checked by the caller.
            ExitReason::Wfi if sent == Some(PSCI_CPU_OFF) => return Ok(End::Exit(reason)),
            // Idle (CPU_SUSPEND is a WFI) or a host interrupt: run it again.
            ExitReason::Interrupted | ExitReason::Wfi => continue,
            ExitReason::Hvc if vm.hvc_arg(0) == TG_DONE => return Ok(End::Done(vm.hvc_arg(1))),
            ExitReason::Hvc => {
                let x0 = vm.hvc_arg(0);
                if host_interface::is_host_call_range(x0) {
                    return Err(format!("host-call ID {x0:#x} was forwarded to the host"));
                }
                if sent.is_some_and(|id| id != x0) {
                    return Err(format!(
                        "forwarded call {x0:#x}, but the guest called {:#x}",
                        sent.unwrap_or(0)
                    ));
                }
                *forwarded += 1;
                // Answer with recognisable results.
                for k in 0..4 {
                    vm.set_run_field(
                        offset_of!(RunPage, hvc_results) + 8 * k,
                        0x5eed_0000 + k as u64,
                    )?;
                }
            }
            other => return Ok(End::Exit(other)),
        }
    }
    Err(format!("no end after {MAX_RUNS} runs"))
}

#[derive(Default)]
struct Stats {
    calls: u32,
    forwarded: u32,
    events: u32,
    vms: u32,
    faults: u32,
    fatal: u32,
}

/// A fresh VM running the test guest.
fn fresh(pool: &mut RamPool, protected: bool, stats: &mut Stats) -> Result<TestVm, String> {
    let vm = TestVm::create(pool, protected)?;
    vm.boot()?;
    stats.vms += 1;
    Ok(vm)
}

/// One random call; `Ok(false)` when the VM is done for.
fn one_call(vm: &mut TestVm, rng: &mut Rng, stats: &mut Stats) -> Result<bool, String> {
    let mut regs = call_regs(rng);
    // Unsharing its mailbox would cut the host off the guest: keep that
    // for the end of a VM's life.
    if regs[0] == MEM_UNSHARE
        && regs[1] & !0xfff == GUEST_BASE + MAILBOX_OFFSET
        && rng.below(4) != 0
    {
        regs[1] = 0;
    }
    let id = regs[0];
    vm.post_hvc(regs)?;
    stats.calls += 1;
    match until_end(vm, &mut stats.forwarded, Some(id))? {
        End::Done(x0) => {
            if host_interface::is_host_call_range(id) && x0 != NOT_SUPPORTED {
                return Err(format!(
                    "host-call ID {id:#x} from the guest answered {x0:#x}"
                ));
            }
            if id == SMCCC_VERSION && x0 != SMCCC_VERSION_1_1 {
                return Err(format!("SMCCC_VERSION answered {x0:#x}"));
            }
            if matches!(id, PSCI_SYSTEM_OFF | PSCI_SYSTEM_RESET | PSCI_CPU_OFF) {
                return Err(format!("PSCI {id:#x} returned {x0:#x} to the guest"));
            }
            // The guest may have unshared its mailbox: then the host cannot
            // post to it any more.
            Ok(vm.mailbox_reachable())
        }
        End::Exit(ExitReason::SystemEvent) => {
            let want = match id {
                PSCI_SYSTEM_OFF => system_event::OFF,
                PSCI_SYSTEM_RESET => system_event::RESET,
                _ => return Err(format!("call {id:#x} gave SYSTEM_EVENT")),
            };
            let got = vm.run_field(offset_of!(RunPage, system_event));
            if got != want {
                return Err(format!("call {id:#x} gave SYSTEM_EVENT type {got}"));
            }
            stats.events += 1;
            Ok(false)
        }
        End::Exit(ExitReason::Wfi) if id == PSCI_CPU_OFF => {
            // Off for good: every run answers WFI without entering it.
            let again = vm.run();
            vm.expect_exit(again, ExitReason::Wfi)?;
            stats.events += 1;
            Ok(false)
        }
        End::Exit(other) => Err(format!("call {id:#x}: exit {}", other.name())),
    }
}

/// One random access; `Ok(false)` when the VM is done for.
fn one_access(vm: &mut TestVm, rng: &mut Rng, stats: &mut Stats) -> Result<bool, String> {
    let ipa = address(rng);
    let cmd = [op::READ, op::WRITE, op::EXEC][rng.below(3) as usize];
    // Not the guest's own code or mailbox: that would corrupt the test
    // guest rather than fault.
    if cmd != op::READ && (GUEST_BASE..GUEST_BASE + 2 * MAILBOX_OFFSET).contains(&ipa) {
        return Ok(true);
    }
    vm.post(cmd, ipa, rng.next())?;
    match until_end(vm, &mut stats.forwarded, None)? {
        End::Done(_) => Ok(true),
        End::Exit(ExitReason::MemFault) => {
            stats.faults += 1;
            // An 8-byte access that crosses into the next page faults there
            // when only the second page is unmapped.
            let next_page = (ipa | 0xfff) + 1;
            let crosses = ipa & 0xfff > 0xff8 && vm.fault_ipa() == next_page;
            if cmd != op::EXEC && vm.fault_ipa() != ipa && !crosses {
                return Err(format!(
                    "access at {ipa:#x}: MEM_FAULT at {:#x}",
                    vm.fault_ipa()
                ));
            }
            // The access stays pending (a protected guest retries it):
            // this VM is done for.
            Ok(false)
        }
        End::Exit(ExitReason::Fatal) => {
            stats.fatal += 1;
            expect_fatal_again(vm)?;
            Ok(false)
        }
        End::Exit(other) => Err(format!("access {cmd} at {ipa:#x}: exit {}", other.name())),
    }
}

fn expect_fatal_again(vm: &TestVm) -> Result<(), String> {
    let r = vm.run();
    vm.expect_exit(r, ExitReason::Fatal)
        .map_err(|e| format!("after FATAL: {e}"))
}

fn unemulated_register(
    pool: &mut RamPool,
    protected: bool,
    stats: &mut Stats,
) -> Result<(), String> {
    let mut vm = fresh(pool, protected, stats)?;
    vm.post(op::EXEC, test_guest::pmu_routine_ipa(), 0)?;
    match until_end(&vm, &mut stats.forwarded, None)? {
        End::Exit(ExitReason::Fatal) => {}
        End::Done(v) => return Err(format!("PMCR_EL0 read completed ({v:#x})")),
        End::Exit(other) => return Err(format!("PMCR_EL0 read: exit {}", other.name())),
    }
    expect_fatal_again(&vm)?;
    vm.teardown()
}

/// Random calls and accesses for one VM kind, replacing the VM whenever it
/// ends.
fn fuzz(
    pool: &mut RamPool,
    protected: bool,
    rng: &mut Rng,
    stats: &mut Stats,
) -> Result<(), String> {
    let mut vm = fresh(pool, protected, stats)?;
    for i in 0..CALLS + ACCESSES {
        let alive = if i < CALLS {
            one_call(&mut vm, rng, stats)
        } else {
            one_access(&mut vm, rng, stats)
        }
        .map_err(|e| format!("step {i} (VM {}): {e}", vm.handle))?;
        if !alive {
            vm.teardown()
                .map_err(|e| format!("step {i}: teardown: {e}"))?;
            vm = fresh(pool, protected, stats)?;
        }
    }
    vm.teardown()
}

/// Every check for a normal and a protected VM, then two vCPUs on two
/// physical CPUs ([`guest_smp`], with CPU 1 of MPIDR `cpu1`); the tally.
pub fn run(pool: &mut RamPool, seed: u64, cpu1: Option<u64>, psci_hvc: bool) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng::new(seed);
    for protected in [false, true] {
        let kind = if protected { "protected" } else { "normal" };
        let mut stats = Stats::default();
        let mut check = |what: &str, r: Result<(), String>| match r {
            Ok(()) => t.passed += 1,
            Err(e) => {
                t.failed += 1;
                println!("guestfuzz: FAILED ({kind} VM) {what}: {e}");
            }
        };
        check(
            "random guest calls and accesses",
            fuzz(pool, protected, &mut rng, &mut stats),
        );
        check(
            "an unemulated register ends the VM",
            unemulated_register(pool, protected, &mut stats),
        );
        check(
            "two vCPUs on two physical CPUs",
            match cpu1 {
                Some(mpidr) => guest_smp::start_cpu1(mpidr, psci_hvc)
                    .and_then(|()| guest_smp::check(pool, protected)),
                None => Err("the device tree lists one CPU; this needs two".into()),
            },
        );
        let v = call(HostCallId::HypVersion, &[]);
        check(
            "the hypervisor still answers",
            if v == [0, 0, 0x1_0000, 0, 0] {
                Ok(())
            } else {
                Err(format!("HYP_VERSION answered {v:#x?}"))
            },
        );
        println!(
            "guestfuzz: {kind} VMs: {} calls ({} forwarded), {} power events, {} MEM_FAULTs, {} FATALs, {} VMs",
            stats.calls, stats.forwarded, stats.events, stats.faults, stats.fatal, stats.vms
        );
    }
    // PSCI constants used above match the contract's.
    debug_assert_eq!(psci::NOT_SUPPORTED, NOT_SUPPORTED);
    t
}
