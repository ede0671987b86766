//! A VM with two vCPUs on two physical CPUs (part of the `guestfuzz` mode):
//! guest PSCI CPU_ON, AFFINITY_INFO and CPU_OFF for its own vCPUs, one
//! vCPU on one physical CPU at a time, and an SGI from one vCPU to the
//! other while that one runs on the other CPU.
//!
//! CPU 0 drives; CPU 1 ([`secondary`]) only makes VCPU_RUN host calls when
//! asked (host memory accesses are CPU 0's alone) and runs the vCPU again
//! after INTERRUPTED exits and -EBUSY (CPU 0 probing it), publishing the
//! first other answer.
//!
//! The sequence, for a normal and a protected VM:
//! 1. vCPU 0 (CPU 0) asks AFFINITY_INFO of vCPU 1: OFF; CPU_ON of vCPU 1
//!    at the test guest's entry with a second mailbox as its context:
//!    SUCCESS; CPU_ON again: ALREADY_ON;
//! 2. CPU 1 runs vCPU 1: it reports READY from that mailbox; AFFINITY_INFO
//!    from vCPU 0 now says ON;
//! 3. vCPU 1 waits for an interrupt, spinning, on CPU 1; VCPU_RUN of it
//!    from CPU 0 is -EBUSY;
//! 4. vCPU 0 sends it SGI 9: its run ends INTERRUPTED with vCPU 1 in
//!    `kick_vcpus`, and vCPU 1, still on CPU 1, takes SGI 9;
//! 5. vCPU 1 calls CPU_OFF: CPU 1's run ends WFI; AFFINITY_INFO from vCPU 0
//!    says OFF; the VM is torn down with every page back with the host.

use alloc::format;
use alloc::string::String;
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use host_interface::{psci, Errno, ExitReason, HostCallId, RunPage, PAGE_SHIFT, PAGE_SIZE};

use crate::ram::RamPool;
use crate::test_guest::{irq_mode, mailbox, op, GUEST_BASE, TG_DONE, TG_READY};
use crate::vm::{call, call_ok, take, TestVm};
use crate::{access, arch, entry};

/// The CPU_ON context that sends CPU 1 here.
pub const CONTEXT: u64 = 2;
/// vCPU 1's mailbox: the third page of the test guest's image.
const MAILBOX1: u64 = GUEST_BASE + 0x2000;
/// Generic-counter seconds CPU 0 waits for CPU 1.
const TIMEOUT_SECONDS: u64 = 10;

const PSCI_CPU_ON: u64 = 0xC400_0003;
const PSCI_AFFINITY_INFO: u64 = 0xC400_0004;
const PSCI_CPU_OFF: u64 = 0x8400_0002;

static STARTED: AtomicBool = AtomicBool::new(false);
static REQ_HANDLE: AtomicU64 = AtomicU64::new(0);
static REQ_VCPU: AtomicU64 = AtomicU64::new(0);
static REQ_SEQ: AtomicU64 = AtomicU64::new(0);
static ANS_SEQ: AtomicU64 = AtomicU64::new(0);
static ANSWER: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// CPU 1: serve run requests for ever.
pub fn secondary() -> ! {
    STARTED.store(true, Ordering::Release);
    let mut seen = 0;
    loop {
        let seq = REQ_SEQ.load(Ordering::Acquire);
        if seq == seen {
            core::hint::spin_loop();
            continue;
        }
        seen = seq;
        let (h, v) = (
            REQ_HANDLE.load(Ordering::Relaxed),
            REQ_VCPU.load(Ordering::Relaxed),
        );
        let interrupted = [0, 0, ExitReason::Interrupted as u64, 0, 0];
        let busy = [0, Errno::EBUSY.to_x1(), 0, 0, 0];
        let r = loop {
            let r = call(HostCallId::VcpuRun, &[h, v]);
            if r != interrupted && r != busy {
                break r;
            }
        };
        for (slot, x) in ANSWER.iter().zip(r) {
            slot.store(x, Ordering::Relaxed);
        }
        ANS_SEQ.store(seq, Ordering::Release);
    }
}

fn wait(cond: impl Fn() -> bool) -> bool {
    let start = arch::cntvct();
    let limit = arch::cntfrq_el0().max(1) * TIMEOUT_SECONDS;
    while !cond() {
        if arch::cntvct().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Start CPU 1 here (once).
pub fn start_cpu1(mpidr: u64, psci_hvc: bool) -> Result<(), String> {
    if STARTED.load(Ordering::Acquire) {
        return Ok(());
    }
    let entry = entry::secondary_entry as *const () as u64;
    let status = arch::psci_cpu_on(psci_hvc, mpidr, entry, CONTEXT);
    if status != 0 {
        return Err(format!(
            "PSCI CPU_ON of MPIDR {mpidr:#x} returned {status:#x}"
        ));
    }
    if wait(|| STARTED.load(Ordering::Acquire)) {
        Ok(())
    } else {
        Err("CPU 1 did not start".into())
    }
}

/// Ask CPU 1 to run vCPU `v` of `h` (until an answer other than
/// INTERRUPTED or -EBUSY): the request's sequence number.
pub fn cpu1_run(h: u64, v: u64) -> u64 {
    REQ_HANDLE.store(h, Ordering::Relaxed);
    REQ_VCPU.store(v, Ordering::Relaxed);
    let seq = REQ_SEQ.load(Ordering::Relaxed) + 1;
    REQ_SEQ.store(seq, Ordering::Release);
    seq
}

/// CPU 1's answer to request `seq`.
pub fn cpu1_answer(seq: u64) -> Result<[u64; 5], String> {
    if !wait(|| ANS_SEQ.load(Ordering::Acquire) == seq) {
        return Err("CPU 1's VCPU_RUN did not return".into());
    }
    Ok(ANSWER.each_ref().map(|a| a.load(Ordering::Relaxed)))
}

/// vCPU 1's run page and mailbox, seen from CPU 0.
struct Second {
    run: u64,
    seq: u64,
}

impl Second {
    fn field(&self, off: usize) -> u64 {
        access::read((self.run << PAGE_SHIFT) + off as u64).unwrap_or(u64::MAX)
    }

    /// Its mailbox is host memory at the same offset of the guest's image.
    fn post(
        &mut self,
        vm: &TestVm,
        op: u64,
        ipa: u64,
        value: u64,
        regs: [u64; 7],
    ) -> Result<(), String> {
        let mb = vm.image_pa() + (MAILBOX1 - GUEST_BASE);
        self.seq += 1;
        let mut ok = access::write(mb + mailbox::OP, op).is_ok()
            && access::write(mb + mailbox::IPA, ipa).is_ok()
            && access::write(mb + mailbox::VALUE, value).is_ok();
        for (k, v) in regs.iter().enumerate() {
            ok &= access::write(mb + mailbox::REGS + 8 * k as u64, *v).is_ok();
        }
        ok &= access::write(mb + mailbox::SEQ, self.seq).is_ok();
        arch::dcache_clean(mb as usize, (mb + 96) as usize);
        if ok {
            Ok(())
        } else {
            Err("the host cannot write vCPU 1's mailbox".into())
        }
    }

    /// The HVC exit report of vCPU 1 in `r`: x0 and x1.
    fn report(&self, r: [u64; 5]) -> Result<(u64, u64), String> {
        if r != [0, 0, ExitReason::Hvc as u64, 0, 0] {
            return Err(format!("vCPU 1's VCPU_RUN answered {r:#x?}"));
        }
        let args = offset_of!(RunPage, hvc_args);
        Ok((self.field(args), self.field(args + 8)))
    }
}

/// vCPU 0 makes a guest call: its x0.
fn vcpu0_call(vm: &mut TestVm, regs: [u64; 7]) -> Result<u64, String> {
    vm.post_hvc(regs)?;
    loop {
        let r = vm.run();
        if r != [0, 0, ExitReason::Interrupted as u64, 0, 0] {
            return vm.done(r);
        }
    }
}

fn expect(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got:#x}, expected {want:#x}"))
    }
}

/// The whole sequence for one VM kind.
pub fn check(pool: &mut RamPool, protected: bool) -> Result<(), String> {
    let mut vm = TestVm::create(pool, protected)?;
    vm.boot()?;
    let run = take(pool, 1)?;
    access::fill(run << PAGE_SHIFT, PAGE_SIZE, 0).map_err(|_| String::from("run page"))?;
    call_ok(HostCallId::ShareHyp, &[run, 1])?;
    let v1 = call_ok(HostCallId::VcpuCreate, &[vm.handle, run])?[2];
    expect("the second vCPU's index", v1, 1)?;
    let mut second = Second { run, seq: 0 };
    // A failed sequence is the error to report; the teardown then may
    // fail too (vCPU 1 may still run on CPU 1).
    sequence(&mut vm, &mut second)?;
    vm.teardown()?;
    call_ok(HostCallId::UnshareHyp, &[run, 1])?;
    Ok(())
}

fn sequence(vm: &mut TestVm, second: &mut Second) -> Result<(), String> {
    let info = |vm: &mut TestVm| vcpu0_call(vm, [PSCI_AFFINITY_INFO, 1, 0, 0, 0, 0, 0]);
    expect(
        "AFFINITY_INFO of vCPU 1 before CPU_ON",
        info(vm)?,
        psci::AFFINITY_OFF,
    )?;
    let on = [PSCI_CPU_ON, 1, GUEST_BASE, MAILBOX1, 0, 0, 0];
    expect("CPU_ON of vCPU 1", vcpu0_call(vm, on)?, psci::SUCCESS)?;
    expect(
        "CPU_ON of vCPU 1 again",
        vcpu0_call(vm, on)?,
        psci::ALREADY_ON,
    )?;

    // vCPU 1 starts on CPU 1 at the entry with its context.
    let r = cpu1_answer(cpu1_run(vm.handle, 1))?;
    let (x0, x1) = second.report(r)?;
    expect("vCPU 1's first report", x0, TG_READY)?;
    expect("vCPU 1's READY x1", x1, 0)?;
    expect(
        "AFFINITY_INFO of vCPU 1 once on",
        info(vm)?,
        psci::AFFINITY_ON,
    )?;

    // vCPU 1 spins waiting for an interrupt on CPU 1.
    second.post(vm, op::IRQ, irq_mode::SPIN, 0, [0; 7])?;
    let seq = cpu1_run(vm.handle, 1);
    let busy = [0, Errno::EBUSY.to_x1(), 0, 0, 0];
    let mut saw_busy = false;
    // Between two of CPU 1's runs (after a time slice) CPU 0 may get vCPU 1
    // instead: that run ends INTERRUPTED too, and CPU 1 tries again.
    for _ in 0..10_000 {
        if call(HostCallId::VcpuRun, &[vm.handle, 1]) == busy {
            saw_busy = true;
            break;
        }
    }
    if !saw_busy {
        return Err(
            "VCPU_RUN of vCPU 1 from CPU 0 never answered -EBUSY while CPU 1 ran it".into(),
        );
    }
    // vCPU 0 sends SGI 9 to the target list {vCPU 1}.
    vm.post(op::IRQ, irq_mode::SGI | irq_mode::SEND_ONLY, 9 << 24 | 0b10)?;
    // Its run ends INTERRUPTED with vCPU 1 kicked (other INTERRUPTED exits,
    // time slices, kick nobody), then it reports.
    let mut kicked = 0;
    let done = loop {
        let r = vm.run();
        if r != [0, 0, ExitReason::Interrupted as u64, 0, 0] {
            break vm.done(r)?;
        }
        kicked |= vm.run_field(offset_of!(RunPage, kick_vcpus));
    };
    expect("vCPU 0's kick_vcpus", kicked, 0b10)?;
    expect("vCPU 0's DONE after sending", done, 0)?;
    let (x0, x1) = second.report(cpu1_answer(seq)?)?;
    expect("vCPU 1's report", x0, TG_DONE)?;
    expect("the INTID vCPU 1 took", x1, 9)?;

    // vCPU 1 powers itself off.
    second.post(vm, op::HVC, 0, 0, [PSCI_CPU_OFF, 0, 0, 0, 0, 0, 0])?;
    let r = cpu1_answer(cpu1_run(vm.handle, 1))?;
    if r != [0, 0, ExitReason::Wfi as u64, 0, 0] {
        return Err(format!(
            "vCPU 1's CPU_OFF: VCPU_RUN answered {r:#x?}, not WFI"
        ));
    }
    expect(
        "AFFINITY_INFO of vCPU 1 after CPU_OFF",
        info(vm)?,
        psci::AFFINITY_OFF,
    )
}
