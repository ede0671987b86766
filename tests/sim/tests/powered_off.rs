//! A vCPU that is powered off (a protected VM's secondary before the
//! guest's CPU_ON, or any vCPU after CPU_OFF): VCPU_RUN runs nothing and
//! answers WFI with no timer to wait for (`timer_deadline` = u64::MAX), so
//! the host sleeps until the CPU_ON names the vCPU in `kick_vcpus`, and it
//! leaves an interrupt request in the run page for the first run after
//! CPU_ON instead of taking it into a state that CPU_ON starts afresh.
//! (The Linux driver spun through VCPU_RUN on such a vCPU: the run page
//! said the deadline had passed, and the request was never taken.)

use core::mem::offset_of;

use host_interface::{ExitReason, HostCallId, IrqRequest, RunPage, PAGE_SIZE};
use hyp::phys::{read_u64, write_u64};
use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor};
use pagetables::PhysMem;
use scenario::{Machine, PageKind};
use sim::SimMachine;

const PAGE: u64 = PAGE_SIZE;
const CPU_ON: u64 = 0xC400_0003;
const CPU_OFF: u64 = 0x8400_0002;
const INTID: u32 = 40;

fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

/// Plays its traps in order (then IRQ); records whether INTID was queued
/// in the vGIC at each entry.
#[derive(Default)]
struct Script {
    traps: Vec<(Trap, [u64; 7])>,
    entries: Vec<bool>,
}

impl<P: PhysMem> VcpuExecutor<P> for Script {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, P>, ctx: &mut VcpuContext) -> Trap {
        self.entries.push(ctx.gic.is_queued(INTID));
        if self.traps.is_empty() {
            return Trap::Irq;
        }
        let (trap, regs) = self.traps.remove(0);
        ctx.x[..7].copy_from_slice(&regs);
        trap
    }
}

fn run(m: &mut SimMachine, h: u64, vcpu: u64, traps: &[(Trap, [u64; 7])]) -> (ExitReason, Script) {
    let mut s = Script {
        traps: traps.to_vec(),
        entries: Vec::new(),
    };
    let regs = [u64::from(HostCallId::VcpuRun.id()), h, vcpu, 0, 0, 0, 0];
    let r = m.hyp_mut().host_call(&regs, &mut s).regs;
    (ExitReason::from_u64(ok(r)[2]).unwrap(), s)
}

fn word(m: &SimMachine, run: u64, off: usize) -> u64 {
    read_u64(m.phys(), run * PAGE + off as u64)
}

fn set(m: &SimMachine, run: u64, off: usize, v: u64) {
    write_u64(m.phys(), run * PAGE + off as u64, v);
}

#[test]
fn a_powered_off_vcpu_waits_without_a_deadline_and_keeps_its_request() {
    let base = sim::GUEST_BASE_IPA;
    let inject = offset_of!(RunPage, inject_irq);
    let deadline = offset_of!(RunPage, timer_deadline);
    let request = match IrqRequest::encode(INTID) {
        Some(v) => v,
        None => unreachable!(),
    };
    let mut m = SimMachine::new("max").unwrap();
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let h = ok(m.call(HostCallId::VmCreate, &[1, pool, 16]))[2];
    let img = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[h, img, base / PAGE, 1, 7]));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = m.alloc(PageKind::Ram, 1).unwrap();
        ok(m.call(HostCallId::ShareHyp, &[run, 1]));
        ok(m.call(HostCallId::VcpuCreate, &[h, run]));
        set(&m, run, offset_of!(RunPage, entry), base);
        runs.push(run);
    }
    // vCPU 0 starts; vCPU 1, a protected secondary, is off.
    assert_eq!(run(&mut m, h, 0, &[]).0, ExitReason::Interrupted);
    set(&m, runs[1], inject, request);
    set(&m, runs[1], deadline, 0);
    for _ in 0..2 {
        let (exit, s) = run(&mut m, h, 1, &[]);
        assert_eq!(exit, ExitReason::Wfi);
        assert!(s.entries.is_empty(), "a powered-off vCPU ran");
        assert_eq!(word(&m, runs[1], deadline), u64::MAX);
        assert_eq!(
            word(&m, runs[1], inject),
            request,
            "request taken while off"
        );
    }
    // The guest's CPU_ON: the first run takes the request into the vGIC.
    let on = (Trap::Hvc, [CPU_ON, 1, base, 0, 0, 0, 0]);
    let (exit, _) = run(&mut m, h, 0, &[on]);
    assert_eq!(exit, ExitReason::Interrupted);
    assert_eq!(word(&m, runs[0], offset_of!(RunPage, kick_vcpus)) & 2, 2);
    let (exit, s) = run(&mut m, h, 1, &[]);
    assert_eq!(exit, ExitReason::Interrupted);
    assert_eq!(s.entries, [true]);
    assert_eq!(word(&m, runs[1], inject), 0);
    // CPU_OFF, then a new request: kept again until the next CPU_ON.
    let off = (Trap::Hvc, [CPU_OFF, 0, 0, 0, 0, 0, 0]);
    let (exit, _) = run(&mut m, h, 1, &[off]);
    assert_eq!(exit, ExitReason::Wfi);
    set(&m, runs[1], inject, request);
    set(&m, runs[1], deadline, 0);
    let (exit, s) = run(&mut m, h, 1, &[]);
    assert_eq!((exit, s.entries.len()), (ExitReason::Wfi, 0));
    assert_eq!(word(&m, runs[1], deadline), u64::MAX);
    assert_eq!(word(&m, runs[1], inject), request);
    let (exit, _) = run(&mut m, h, 0, &[on]);
    assert_eq!(exit, ExitReason::Interrupted);
    let (_, s) = run(&mut m, h, 1, &[]);
    assert_eq!(s.entries, [true]);
    assert_eq!(word(&m, runs[1], inject), 0);
}
