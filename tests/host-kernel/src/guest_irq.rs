//! `irq` mode: interrupts reach guests through the GICv3 virtual CPU
//! interface, and a guest that spins still gives its CPU back.
//!
//! For a normal and a protected VM running the test guest
//! ([`test_guest::op::IRQ`]), each check posts a command and runs the vCPU
//! until the guest reports DONE, re-running it after WFI and INTERRUPTED
//! exits (a bounded number of times):
//!
//! - an SGI, a PPI and an SPI injected through the run page arrive with
//!   their INTID, and VCPU_RUN clears the request once it has taken it;
//! - a malformed request is -EINVAL and stays in the run page;
//! - an SGI the guest sends itself through ICC_SGI1R_EL1 arrives without
//!   the host;
//! - the guest's virtual timer fires into the guest, both when the guest
//!   waits with WFI (the hypervisor exits WFI with the timer's deadline in
//!   the run page, and delivers the interrupt on a later run) and when it
//!   spins (the physical timer interrupt arrives while the guest runs);
//! - six SPIs injected while the guest has interrupts masked (more than
//!   the list registers hold) all arrive once it unmasks them;
//! - a guest that spins with nothing to wait for comes back INTERRUPTED
//!   (the hypervisor's time slice; this host arms no timer of its own);
//! - the host's own virtual timer registers survive the guests' runs, and
//!   its deadline ends a spinning guest's run before the slice does.
//!
//! The test host never enables interrupts for itself: everything it sees
//! arrives as exits.

use alloc::format;
use alloc::string::String;
use core::arch::asm;
use core::mem::offset_of;

use host_interface::{inject_irq, Errno, ExitReason, HostCallId, RunPage};
use scenario::Tally;

use crate::ram::RamPool;
use crate::test_guest::{irq_mode, op};
use crate::vm::{call, TestVm};
use crate::{arch, println};

/// VCPU_RUNs one check may take before it counts as hung.
const MAX_RUNS: u32 = 5_000;

const INJECT: usize = offset_of!(RunPage, inject_irq);
const DEADLINE: usize = offset_of!(RunPage, timer_deadline);
const KICK: usize = offset_of!(RunPage, kick_vcpus);

/// What the guest's runs until DONE looked like.
#[derive(Default)]
struct Runs {
    wfi: u32,
    interrupted: u32,
    /// The run page's timer deadline at the first WFI exit.
    first_wfi_deadline: Option<u64>,
}

/// Run `vm` until the guest reports DONE: its result and the exits before.
fn until_done(vm: &TestVm) -> Result<(u64, Runs), String> {
    let mut runs = Runs::default();
    for _ in 0..MAX_RUNS {
        let r = vm.run();
        match (r[0], r[1], r[2]) {
            (0, 0, x) if x == ExitReason::Wfi as u64 => {
                runs.wfi += 1;
                runs.first_wfi_deadline
                    .get_or_insert(vm.run_field(DEADLINE));
            }
            (0, 0, x) if x == ExitReason::Interrupted as u64 => runs.interrupted += 1,
            _ => return vm.done(r).map(|v| (v, runs)),
        }
    }
    Err(format!(
        "no DONE after {MAX_RUNS} runs ({} WFI, {} INTERRUPTED)",
        runs.wfi, runs.interrupted
    ))
}

struct Checks {
    tally: Tally,
    vm_kind: &'static str,
}

impl Checks {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.tally.passed += 1,
            Err(e) => {
                self.tally.failed += 1;
                println!("irq: FAILED ({} VM) {what}: {e}", self.vm_kind);
            }
        }
    }
}

fn expect(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} {got:#x}, expected {want:#x}"))
    }
}

/// Inject `intid` at the next run while the guest waits for one interrupt.
fn injected(vm: &mut TestVm, intid: u32, mode: u64) -> Result<(), String> {
    vm.post(op::IRQ, mode, 0)?;
    vm.set_run_field(INJECT, inject_irq::VALID | u64::from(intid))?;
    let first = vm.run();
    expect("the request after VCPU_RUN", vm.run_field(INJECT), 0)?;
    let got = match vm.done(first) {
        Ok(v) => v,
        Err(_) => until_done(vm)?.0,
    };
    expect("the INTID the guest took", got, u64::from(intid))
}

fn malformed(vm: &mut TestVm) -> Result<(), String> {
    for bad in [inject_irq::VALID | 1020, 40, inject_irq::VALID | 1 << 12] {
        vm.set_run_field(INJECT, bad)?;
        let r = call(HostCallId::VcpuRun, &[vm.handle, vm.vcpu]);
        expect("VCPU_RUN x1", r[1], Errno::EINVAL.to_x1())?;
        expect(
            "the request left in the run page",
            vm.run_field(INJECT),
            bad,
        )?;
    }
    vm.set_run_field(INJECT, 0)
}

fn self_sgi(vm: &mut TestVm) -> Result<(), String> {
    // SGI 6 (bits 27:24) to the target list {vCPU 0}: itself.
    vm.post(op::IRQ, irq_mode::SGI, 6 << 24 | 1)?;
    let (got, runs) = until_done(vm)?;
    expect("the INTID the guest took", got, 6)?;
    expect("the kick mask", vm.run_field(KICK), 0)?;
    // Its own SGI does not need the host.
    expect(
        "runs that ended INTERRUPTED first",
        u64::from(runs.interrupted),
        0,
    )
}

fn timer(vm: &mut TestVm, vtimer: u32, mode: u64) -> Result<(), String> {
    // 2 ms of the counter.
    let ticks = arch::cntfrq_el0() / 500;
    let posted = arch::cntvct();
    vm.post(op::IRQ, mode, ticks)?;
    let (got, runs) = until_done(vm)?;
    expect("the INTID the guest took", got, u64::from(vtimer))?;
    if mode & irq_mode::SPIN == 0 {
        match runs.first_wfi_deadline {
            None => {
                return Err("the guest took its timer without ever waiting in WFI".into());
            }
            Some(d) if d == u64::MAX || d < posted => {
                return Err(format!(
                    "a WFI exit reported timer deadline {d:#x} (armed after {posted:#x})"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn overflow(vm: &mut TestVm) -> Result<(), String> {
    // The guest sits in its command loop with interrupts masked: each run
    // queues one more SPI, which it cannot take yet.
    const SPIS: u64 = 6;
    for n in 0..SPIS {
        vm.set_run_field(INJECT, inject_irq::VALID | (32 + n))?;
        let r = vm.run();
        vm.expect_exit(r, ExitReason::Interrupted)?;
        expect("the request after VCPU_RUN", vm.run_field(INJECT), 0)?;
    }
    let mask = (1 << SPIS) - 1;
    // Spinning, the guest never traps: the two that did not fit in list
    // registers must come through the maintenance interrupt, within the
    // run (a slice is millions of instructions; `-icount` makes it exact).
    vm.post(op::IRQ, irq_mode::MASK | irq_mode::SPIN, mask)?;
    let (got, runs) = until_done(vm)?;
    expect("the SPIs the guest took", got, mask)?;
    expect(
        "runs that ended INTERRUPTED first",
        u64::from(runs.interrupted),
        0,
    )
}

fn preempted(vm: &mut TestVm) -> Result<(), String> {
    vm.post(op::IRQ, irq_mode::SPIN, 0)?;
    // Nothing will come: the guest spins, and the run must still end.
    let r = vm.run();
    vm.expect_exit(r, ExitReason::Interrupted)?;
    let r = vm.run();
    vm.expect_exit(r, ExitReason::Interrupted)?;
    // Something comes: it ends the wait.
    vm.set_run_field(INJECT, inject_irq::VALID | 41)?;
    let (got, _) = until_done(vm)?;
    expect("the INTID the guest took", got, 41)
}

fn host_timer_kept(vm: &mut TestVm) -> Result<(), String> {
    let cval = arch::cntvct() + (1 << 40);
    // Enabled and masked: it must not fire at this host, which takes no
    // interrupts, and must come back as it was.
    set_host_vtimer(cval, 0b011);
    let result = preempted(vm);
    let (ctl, got) = host_vtimer();
    set_host_vtimer(0, 0);
    result?;
    expect("the host's CNTV_CVAL_EL0", got, cval)?;
    expect("the host's CNTV_CTL_EL0 enable and mask", ctl & 0b11, 0b011)
}

/// The host's own virtual-timer deadline ends a guest's run: with the host's
/// timer armed 1 ms ahead, a spinning guest's run ends INTERRUPTED well
/// before the 10 ms slice. (Under `-icount`, as `cargo xtask test` runs this
/// mode, the counter counts instructions: the same every run.)
fn host_deadline_preempts(vm: &mut TestVm) -> Result<(), String> {
    let hz = arch::cntfrq_el0().max(1);
    vm.post(op::IRQ, irq_mode::SPIN, 0)?;
    // Let the guest start spinning on a run of its own first.
    let r = vm.run();
    vm.expect_exit(r, ExitReason::Interrupted)?;
    let start = arch::cntvct();
    // Enabled, not masked: this host takes no interrupts (its PMR and group
    // enable are closed), so only the hypervisor acts on it.
    set_host_vtimer(start + hz / 1000, 0b001);
    let r = vm.run();
    let took = arch::cntvct() - start;
    set_host_vtimer(0, 0);
    vm.expect_exit(r, ExitReason::Interrupted)?;
    if took >= hz / 200 {
        return Err(format!(
            "the run took {} us with the host's timer due after 1000 us",
            took * 1_000_000 / hz
        ));
    }
    vm.set_run_field(INJECT, inject_irq::VALID | 42)?;
    let (got, _) = until_done(vm)?;
    expect("the INTID the guest took", got, 42)
}

fn set_host_vtimer(cval: u64, ctl: u64) {
    // SAFETY: the host's own virtual timer; this host takes no interrupts.
    unsafe {
        asm!(
            "msr cntv_cval_el0, {}",
            "msr cntv_ctl_el0, {}",
            "isb",
            in(reg) cval,
            in(reg) ctl,
            options(nostack)
        )
    };
}

fn host_vtimer() -> (u64, u64) {
    let (ctl, cval): (u64, u64);
    // SAFETY: reading timer registers has no side effects.
    unsafe {
        asm!(
            "mrs {}, cntv_ctl_el0",
            "mrs {}, cntv_cval_el0",
            out(reg) ctl,
            out(reg) cval,
            options(nomem, nostack)
        )
    };
    (ctl, cval)
}

/// Every check on a normal and on a protected VM; the tally.
pub fn run(pool: &mut RamPool, vtimer: u32) -> Tally {
    let mut total = Tally::default();
    for protected in [false, true] {
        let mut c = Checks {
            tally: Tally::default(),
            vm_kind: if protected { "protected" } else { "normal" },
        };
        let mut vm = match TestVm::create(pool, protected).and_then(|vm| vm.boot().map(|()| vm)) {
            Ok(vm) => vm,
            Err(e) => {
                c.check("create and boot the test guest", Err(e));
                total += c.tally;
                continue;
            }
        };
        c.check("malformed requests", malformed(&mut vm));
        c.check("an SPI through the run page", injected(&mut vm, 40, 0));
        c.check("an SGI through the run page", injected(&mut vm, 3, 0));
        c.check(
            "a PPI through the run page, guest spinning",
            injected(&mut vm, 20, irq_mode::SPIN),
        );
        c.check("an SGI the guest sends itself", self_sgi(&mut vm));
        c.check("the virtual timer, guest in WFI", timer(&mut vm, vtimer, 0));
        c.check(
            "the virtual timer, guest spinning",
            timer(&mut vm, vtimer, irq_mode::SPIN),
        );
        c.check("more SPIs than list registers", overflow(&mut vm));
        c.check(
            "a spinning guest is preempted; the host's timer survives",
            host_timer_kept(&mut vm),
        );
        c.check(
            "the host's own timer deadline ends a run",
            host_deadline_preempts(&mut vm),
        );
        println!(
            "irq: {} VM: {} checks passed, {} failed",
            c.vm_kind, c.tally.passed, c.tally.failed
        );
        total += c.tally;
    }
    total
}
