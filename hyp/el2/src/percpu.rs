//! Physical CPUs: the MPIDRs from the device tree, the ID registers each CPU
//! reported at boot, and the host's CPU_ON requests, which start the CPU
//! through the hypervisor's entry so it is set up at EL2 before the host's
//! code runs at EL1.
//!
//! The per-CPU records are allocated at boot, one per CPU of the device
//! tree, from the hypervisor's heap ([`set_cpus`]); nothing here is sized
//! for the limit ([`MAX_CPUS`]).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub use hyp::cpu_area::MAX_CPUS;

use host_interface::psci;
use platform::IdRegs;
use smccc::psci::{cpu_off, cpu_on};
use smccc::Smc;

use crate::entry::secondary_entry;
use crate::sysreg;

const MODE_PROBE: u64 = 1;
const MODE_HOST: u64 = 2;

/// One physical CPU.
pub struct PerCpu {
    mpidr: AtomicU64,
    mode: AtomicU64,
    host_entry: AtomicU64,
    host_ctx: AtomicU64,
    probed: AtomicBool,
    id: [AtomicU64; 5],
    /// This CPU's GIC redistributor SGI frame (`gic::init_cpu`).
    pub sgi_frame: AtomicUsize,
    /// The VCPU_RUN in progress on this CPU ([`with_run_state`]).
    run: UnsafeCell<RunState>,
    /// [`Self::run`] is lent out.
    run_busy: AtomicBool,
}

/// What a VCPU_RUN keeps while the guest runs: the vCPU's context and the
/// host's saved state. About 3 KiB; kept per CPU and reused from run to
/// run, so a run neither zeroes nor moves it (a `Run` and a `Loaded` on the
/// stack cost about 1,100 instructions of memset and memcpy per run).
/// Nothing in it is read before the run writes it: `vcpu_run_begin_in`
/// copies the vCPU's context in, `guest::load` saves the host's state.
pub struct RunState {
    pub run: hyp::Run,
    pub loaded: crate::guest::Loaded,
}

// SAFETY: the only non-Sync field is `run`, an UnsafeCell that only the CPU
// owning the record touches (`with_run_state` takes the record of the
// calling CPU, by TPIDR_EL2), never twice at once (`run_busy`); the other
// fields are atomics.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    fn new(mpidr: u64) -> Self {
        Self {
            mpidr: AtomicU64::new(mpidr),
            mode: AtomicU64::new(0),
            host_entry: AtomicU64::new(0),
            host_ctx: AtomicU64::new(0),
            probed: AtomicBool::new(false),
            id: [const { AtomicU64::new(0) }; 5],
            sgi_frame: AtomicUsize::new(0),
            run: UnsafeCell::new(RunState {
                run: hyp::Run::idle(),
                loaded: crate::guest::Loaded::new(),
            }),
            run_busy: AtomicBool::new(false),
        }
    }
}

/// Lend `f` the calling CPU's [`RunState`]. `None` if the CPU has no record
/// or its state is lent out already (neither happens: TPIDR_EL2 holds a
/// valid index from boot, and EL2 code does not nest).
pub fn with_run_state<R>(f: impl FnOnce(&mut RunState) -> R) -> Option<R> {
    let c = cpu(sysreg::tpidr_el2() as usize)?;
    if c.run_busy.swap(true, Ordering::Acquire) {
        return None;
    }
    // SAFETY: the record is this CPU's, and `run_busy` was clear and is now
    // set, so no other reference to the state exists until it is cleared
    // below; no other CPU takes this record (TPIDR_EL2 differs per CPU).
    let r = f(unsafe { &mut *c.run.get() });
    c.run_busy.store(false, Ordering::Release);
    Some(r)
}

/// One record per CPU of the device tree, set once at boot.
static CPUS: spin::Once<&'static [PerCpu]> = spin::Once::new();
static NCPUS: AtomicUsize = AtomicUsize::new(0);

/// Per CPU: an SError reached EL2 during a guest exit's SError window
/// (`guest::__serror_window`, set by the vector `el2_serror`). The address
/// of a boot-allocated array of one word per CPU, indexed by TPIDR_EL2;
/// the assembly reads it.
#[no_mangle]
pub static GUEST_SERROR: AtomicU64 = AtomicU64::new(0);

/// The records of every CPU (empty before [`set_cpus`]).
fn cpus() -> &'static [PerCpu] {
    CPUS.get().copied().unwrap_or(&[])
}

/// CPU `index`'s record.
pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    cpus().get(index)
}

/// This CPU's ID registers.
pub fn id_regs() -> IdRegs {
    IdRegs {
        mmfr0: sysreg::id_aa64mmfr0_el1(),
        mmfr1: sysreg::id_aa64mmfr1_el1(),
        mmfr2: sysreg::id_aa64mmfr2_el1(),
        pfr1: sysreg::id_aa64pfr1_el1(),
        ctr: sysreg::ctr_el0(),
    }
}

/// Record the CPUs of the device tree (the boot CPU must be among them):
/// one record and one SError word each, from the heap. The caller checked
/// the count against the limit (`CpuArea::plan`).
pub fn set_cpus(mpidrs: &[u64]) -> Result<(), &'static str> {
    if mpidrs.len() > MAX_CPUS {
        return Err(hyp::cpu_area::CpuAreaError::TooMany.message());
    }
    let records: Vec<PerCpu> = mpidrs.iter().map(|&m| PerCpu::new(m)).collect();
    let records: &'static [PerCpu] = Box::leak(records.into_boxed_slice());
    CPUS.call_once(|| records);
    let serror: Vec<AtomicU64> = mpidrs.iter().map(|_| AtomicU64::new(0)).collect();
    let serror: &'static [AtomicU64] = Box::leak(serror.into_boxed_slice());
    GUEST_SERROR.store(serror.as_ptr() as u64, Ordering::Release);
    NCPUS.store(mpidrs.len(), Ordering::Release);
    let me = sysreg::mpidr_el1() & 0xff_00ff_ffff;
    if index_of(me) != Some(0) {
        return Err("the boot CPU is not the first CPU of the device tree");
    }
    Ok(())
}

fn index_of(mpidr: u64) -> Option<usize> {
    let n = NCPUS.load(Ordering::Acquire);
    cpus()
        .iter()
        .take(n)
        .position(|c| c.mpidr.load(Ordering::Relaxed) == mpidr)
}

/// Start every secondary CPU once so it reports its ID registers, then let it
/// power off again. Returns the ID registers of each CPU (`None` for one
/// that did not answer), in device-tree order.
pub fn probe_all() -> Vec<Option<IdRegs>> {
    let n = NCPUS.load(Ordering::Acquire);
    let mut out = alloc::vec![None; n];
    if let Some(first) = out.first_mut() {
        *first = Some(id_regs());
    }
    for (i, c) in cpus().iter().enumerate().take(n).skip(1) {
        c.mode.store(MODE_PROBE, Ordering::Release);
        let target = c.mpidr.load(Ordering::Relaxed);
        if cpu_on::<Smc>(target, secondary_entry as *const () as u64, i as u64).is_err() {
            continue;
        }
        // Bounded wait: a CPU that never answers is left out.
        for _ in 0..50_000_000u64 {
            if c.probed.load(Ordering::Acquire) {
                break;
            }
            core::hint::spin_loop();
        }
        if c.probed.load(Ordering::Acquire) {
            let r = &c.id;
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(IdRegs {
                    mmfr0: r[0].load(Ordering::Relaxed),
                    mmfr1: r[1].load(Ordering::Relaxed),
                    mmfr2: r[2].load(Ordering::Relaxed),
                    pfr1: r[3].load(Ordering::Relaxed),
                    ctr: r[4].load(Ordering::Relaxed),
                });
            }
            // Wait until the firmware has it off again before any CPU_ON.
            for _ in 0..50_000_000u64 {
                if smccc::psci::affinity_info::<Smc>(target, smccc::psci::LowestAffinityLevel::All)
                    == Ok(smccc::psci::AffinityState::Off)
                {
                    break;
                }
                core::hint::spin_loop();
            }
        }
    }
    out
}

/// A secondary CPU arrived at `rust_secondary_main`.
pub fn secondary(index: usize) -> ! {
    let Some(c) = cpu(index) else {
        crate::power_off()
    };
    match c.mode.load(Ordering::Acquire) {
        MODE_PROBE => {
            let r = id_regs();
            for (slot, v) in c.id.iter().zip([r.mmfr0, r.mmfr1, r.mmfr2, r.pfr1, r.ctr]) {
                slot.store(v, Ordering::Relaxed);
            }
            c.probed.store(true, Ordering::Release);
            let _ = cpu_off::<Smc>();
            crate::park()
        }
        MODE_HOST => {
            crate::init_cpu_for_host(index);
            let entry = c.host_entry.load(Ordering::Acquire);
            let ctx = c.host_ctx.load(Ordering::Acquire);
            crate::enter_host(entry, ctx)
        }
        _ => crate::park(),
    }
}

/// The host's PSCI CPU_ON: remember where it wants the CPU to start, and
/// start it at the hypervisor's entry instead.
pub fn host_cpu_on(target: u64, entry: u64, ctx: u64) -> u64 {
    let Some(i) = index_of(target & 0xff_00ff_ffff) else {
        return psci::INVALID_PARAMETERS;
    };
    let Some(c) = cpu(i) else {
        return psci::INVALID_PARAMETERS;
    };
    c.host_entry.store(entry, Ordering::Release);
    c.host_ctx.store(ctx, Ordering::Release);
    c.mode.store(MODE_HOST, Ordering::Release);
    // The firmware's answer goes back to the host as it is.
    let mut args = [0u64; 17];
    args[..3].copy_from_slice(&[target, secondary_entry as *const () as u64, i as u64]);
    smccc::smc64(0xc400_0003, args)[0]
}
