//! Traps from EL1: host hypercalls into the core, trapped SMCs (PSCI proxied,
//! everything else refused), and host stage-2 faults, which the core either
//! maps or answers with a synchronous external abort injected at EL1
//! (ABI.md 1.1): never an EL2 crash.

use host_interface::{psci, ExitReason, HostCall, HostCallId, HostResult};
use hyp::{Access, NoExecutor, MAX_TRAPS_PER_RUN};

use core::sync::atomic::{AtomicU64, Ordering};

use crate::gic;
use crate::guest;
use smccc::smc64;

use crate::entry::Frame;
use crate::{percpu, sysreg, CORE};

use crate::sysreg::ec;

/// A synchronous exception from EL1 that the vector's fast path did not
/// answer.
#[no_mangle]
extern "C" fn handle_lower_sync(frame: &mut Frame) {
    let esr = sysreg::esr_el2();
    match esr >> 26 {
        ec::HVC64 => host_hvc(frame),
        ec::SMC64 => {
            // A trapped SMC returns past the instruction.
            // SAFETY: ELR_EL2 points at the trapped SMC in the host; the next
            // instruction is where the host continues.
            unsafe { sysreg::set_elr_el2(sysreg::elr_el2().wrapping_add(4)) };
            host_smc(frame);
        }
        ec::IABT_LOW | ec::DABT_LOW => host_abort(esr, frame),
        _ => inject(esr, InjectKind::Undefined),
    }
}

fn host_hvc(frame: &mut Frame) {
    let mut regs = [0u64; 7];
    regs.copy_from_slice(&frame.x[..7]);
    if regs[0] == u64::from(HostCallId::VcpuRun.id()) {
        if let Some(r) = vcpu_run(&regs) {
            HostResult { regs: r }.write_back(regs[0], &mut frame.x);
            return;
        }
    }
    // A well-formed VCPU_RUN never gets here (`vcpu_run` runs the guest
    // with no lock held); the core answers a malformed one without entering
    // a guest. The core takes the locks each call needs itself.
    let (r, dma_updates) = match CORE.get() {
        Some(hv) => (hv.host_call(&regs, &mut NoExecutor), hv.dma_updates()),
        None => (HostResult::not_supported(), 0),
    };
    // SMCCC 1.1: x0..x3 (x4 for the calls that name it), nothing else.
    r.write_back(regs[0], &mut frame.x);
    // SMMU faults are reported from the event queue (its interrupt is not
    // wired to EL2). Draining it is reporting only, the DMA view alone
    // isolates, so it is done where a report can be new: after a call that
    // changed the view, on PAGE_QUERY (a host waiting for a report asks
    // that), and on every 64th call otherwise.
    let changed = DMA_UPDATES_SEEN.swap(dma_updates, Ordering::Relaxed) != dma_updates;
    let nth = CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(64);
    if changed || nth || regs[0] == u64::from(HostCallId::PageQuery.id()) {
        crate::smmu::poll_events();
    }
}

/// The DMA view's update count at the last host call (see `host_hvc`).
static DMA_UPDATES_SEEN: AtomicU64 = AtomicU64::new(0);
/// Host calls through the full dispatch, for the periodic drain.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// VCPU_RUN with the guest running outside any lock: the VM's lock is held
/// only to start the run, to handle each trap that needs the VM's state and
/// to end the run (the host's lock too for a trap that changes the host's
/// access, `Hypervisor::vcpu_run_step`), so other CPUs' hypercalls go on
/// while a guest runs, and a guest that never traps cannot stop them.
/// `None` if the registers are not a well-formed VCPU_RUN (the core then
/// answers as for any other call).
fn vcpu_run(regs: &[u64; 7]) -> Option<[u64; 5]> {
    // The run stays in this CPU's run state from begin to end: its context
    // is copied in and out once.
    match percpu::with_run_state(|s| vcpu_run_in(regs, &mut s.run, &mut s.loaded)) {
        Some(r) => r,
        // Never: the state is this CPU's and EL2 does not nest.
        None => Some(HostResult::err(host_interface::Errno::EBUSY).regs),
    }
}

fn vcpu_run_in(
    regs: &[u64; 7],
    run: &mut hyp::Run,
    loaded: &mut guest::Loaded,
) -> Option<[u64; 5]> {
    let hv = CORE.get()?;
    let Ok(HostCall::VcpuRun { handle, vcpu }) = HostCall::decode(regs, hv.cpu().pa_bits) else {
        return None;
    };
    let begun = hv.vcpu_run_begin_in(handle, vcpu, run);
    match begun {
        Err(e) => return Some(HostResult::err(e).regs),
        Ok(Err(reason)) => return Some(HostResult::ok(reason, 0, 0).regs),
        Ok(Ok(())) => {}
    }
    let slice_end = gic::slice_end();
    // The guest stays loaded while EL2 handles its traps; only an exit to
    // the host switches back.
    let kind = guest::VmKind {
        protected: run.protected,
        mte: run.mte,
    };
    if !guest::load(loaded, run.vttbr, vcpu, kind, &mut run.ctx, slice_end) {
        let reason = hv.vcpu_run_end(run, ExitReason::Fatal);
        return Some(HostResult::ok(reason, 0, 0).regs);
    }
    let mut exit = ExitReason::Interrupted;
    for _ in 0..MAX_TRAPS_PER_RUN {
        let trap = guest::enter(loaded, &mut run.ctx);
        // Traps that need nothing of the VM's or anyone else's state come
        // back as Resume, handled without any lock: ID registers, WFE, lazy
        // switches, and calls answered from their registers alone (an
        // HVC's in the vector, an SMC's in `guest::enter`). SGIs other vCPUs
        // sent meanwhile come in at the next locked step or the next
        // VCPU_RUN: the sender's run ends with the target in `kick_vcpus`.
        let step = if trap == hyp::Trap::Resume {
            None
        } else {
            hv.vcpu_run_step(run, trap)
        };
        if let Some(reason) = step {
            exit = reason;
            break;
        }
        guest::resync(loaded, &mut run.ctx);
    }
    if guest::serror_pending() && exit != ExitReason::Fatal {
        // The guest's SError ends it as a fatal trap would have.
        exit = hv
            .vcpu_run_step(run, hyp::Trap::Fatal)
            .unwrap_or(ExitReason::Fatal);
    }
    guest::unload(loaded, &mut run.ctx);
    let reason = hv.vcpu_run_end(run, exit);
    Some(HostResult::ok(reason, 0, 0).regs)
}

mod fid {
    pub const PSCI_VERSION: u64 = 0x8400_0000;
    pub const CPU_SUSPEND: u64 = 0x8400_0001;
    pub const CPU_SUSPEND64: u64 = 0xc400_0001;
    pub const CPU_OFF: u64 = 0x8400_0002;
    pub const CPU_ON: u64 = 0x8400_0003;
    pub const CPU_ON64: u64 = 0xc400_0003;
    pub const AFFINITY_INFO: u64 = 0x8400_0004;
    pub const AFFINITY_INFO64: u64 = 0xc400_0004;
    pub const MIGRATE_INFO_TYPE: u64 = 0x8400_0006;
    pub const SYSTEM_OFF: u64 = 0x8400_0008;
    pub const SYSTEM_RESET: u64 = 0x8400_0009;
    pub const PSCI_FEATURES: u64 = 0x8400_000a;
    pub const SMCCC_VERSION: u64 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;
}

/// Pass an SMC through to the firmware unchanged.
fn forward(frame: &mut Frame) {
    let mut args = [0u64; 17];
    args.copy_from_slice(&frame.x[1..18]);
    let r = smc64(frame.x[0] as u32, args);
    frame.x[..4].copy_from_slice(&r[..4]);
}

/// PSCI from the host: CPU_ON starts the CPU through the hypervisor's own
/// entry (the firmware would start it at EL2 in the host's code otherwise);
/// CPU_SUSPEND is a standby at EL2 (a power-down state would also resume at
/// EL2); calls that only affect power pass through; other SMCs are refused.
fn host_smc(frame: &mut Frame) {
    match frame.x[0] {
        fid::CPU_ON | fid::CPU_ON64 => {
            frame.x[0] = percpu::host_cpu_on(frame.x[1], frame.x[2], frame.x[3]);
        }
        fid::CPU_SUSPEND | fid::CPU_SUSPEND64 => {
            sysreg::wfi();
            frame.x[0] = psci::SUCCESS;
        }
        fid::PSCI_FEATURES => match frame.x[1] {
            fid::PSCI_VERSION
            | fid::CPU_SUSPEND
            | fid::CPU_SUSPEND64
            | fid::CPU_OFF
            | fid::CPU_ON
            | fid::CPU_ON64
            | fid::AFFINITY_INFO
            | fid::AFFINITY_INFO64
            | fid::MIGRATE_INFO_TYPE
            | fid::SYSTEM_OFF
            | fid::SYSTEM_RESET
            | fid::PSCI_FEATURES => frame.x[0] = psci::SUCCESS,
            _ => frame.x[0] = psci::NOT_SUPPORTED,
        },
        fid::PSCI_VERSION
        | fid::CPU_OFF
        | fid::AFFINITY_INFO
        | fid::AFFINITY_INFO64
        | fid::MIGRATE_INFO_TYPE
        | fid::SYSTEM_OFF
        | fid::SYSTEM_RESET
        | fid::SMCCC_VERSION => forward(frame),
        fid::SMCCC_ARCH_FEATURES => frame.x[0] = psci::NOT_SUPPORTED,
        _ => frame.x[0] = psci::NOT_SUPPORTED,
    }
}

/// A host stage-2 fault: let the core map the page, or inject an abort.
fn host_abort(esr: u64, frame: &mut Frame) {
    let far = sysreg::far_el2();
    let fsc = esr & 0x3f;
    let inst = esr >> 26 == ec::IABT_LOW;
    // Translation, access-flag and permission faults at stage 2 report the
    // IPA in HPFAR_EL2.
    if (0x04..=0x0f).contains(&fsc) {
        let ipa = ((sysreg::hpfar_el2() >> 4) << 12) | (far & 0xfff);
        let s1ptw = esr & (1 << 7) != 0;
        let access = if inst {
            Access::Exec
        } else if esr & (1 << 6) != 0 && !s1ptw {
            Access::Write
        } else {
            Access::Read
        };
        // The redistributors' LPI controls are emulated, never mapped.
        if !inst && crate::lpi::emulate(ipa, esr, frame) {
            return;
        }
        let mapped = CORE
            .get()
            .is_some_and(|hv| hv.host_fault(ipa, access).is_ok());
        if mapped {
            return;
        }
    }
    inject(
        esr,
        if inst {
            InjectKind::InstAbort
        } else {
            InjectKind::DataAbort
        },
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum InjectKind {
    DataAbort,
    InstAbort,
    Undefined,
}

/// Make the host take an exception at EL1 as if the hardware had raised it:
/// a synchronous external abort for refused accesses, an undefined
/// instruction for traps the hypervisor does not emulate.
fn inject(esr: u64, kind: InjectKind) {
    let spsr = sysreg::spsr_el2();
    let from_el0 = spsr & 0xc == 0;
    let (ec, offset) = match (kind, from_el0) {
        (InjectKind::DataAbort, false) => (0x25, None),
        (InjectKind::DataAbort, true) => (0x24, Some(0x400)),
        (InjectKind::InstAbort, false) => (0x21, None),
        (InjectKind::InstAbort, true) => (0x20, Some(0x400)),
        (InjectKind::Undefined, false) => (0x00, None),
        (InjectKind::Undefined, true) => (0x00, Some(0x400)),
    };
    // From EL1: the current-EL vector, SP_EL0 or SP_EL1 as the host used.
    let offset = offset.unwrap_or(if spsr & 1 != 0 { 0x200 } else { 0x000 });
    let iss = match kind {
        // Synchronous external abort; keep WnR for data aborts.
        InjectKind::DataAbort => 0x10 | (esr & (1 << 6)),
        InjectKind::InstAbort => 0x10,
        InjectKind::Undefined => 0,
    };
    // SAFETY: these writes build the exception state EL1 would see had the
    // abort been taken there (ESR/FAR/ELR/SPSR_EL1), and return to the
    // host's own vector at EL1h with interrupts masked, as the architecture
    // does on exception entry. The host's memory is not touched.
    unsafe {
        sysreg::set_esr_el1((ec << 26) | (1 << 25) | iss);
        if kind != InjectKind::Undefined {
            sysreg::set_far_el1(sysreg::far_el2());
        }
        sysreg::set_elr_el1(sysreg::elr_el2());
        sysreg::set_spsr_el1(spsr);
        sysreg::set_elr_el2(sysreg::vbar_el1() + offset);
        sysreg::set_spsr_el2(0x3c5);
    }
}

/// An exception the hypervisor cannot have caused legitimately (at EL2, or
/// an interrupt routed to EL2): report it and stop the machine.
#[no_mangle]
extern "C" fn handle_unexpected(esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    crate::println!(
        "hyp: unexpected exception at EL2: ESR {esr:#x} ELR {elr:#x} FAR {far:#x} SPSR {spsr:#x}"
    );
    crate::power_off()
}
