//! The GICv3 parts the hypervisor drives itself while a guest runs: the
//! virtual CPU interface (list registers, from the core's [`VgicContext`]),
//! the guest's virtual timer interrupt, and a preemption deadline on the
//! EL2 physical timer.
//!
//! - **Physical interrupts go to the host.** While a guest runs, every
//!   physical interrupt traps to EL2 (HCR_EL2.IMO/FMO). The host's priority
//!   mask and group enable are opened for the run, as its interrupts must
//!   end the run whatever it masked at EL1 ([`Trap::Irq`], INTERRUPTED).
//! - **The guest's virtual timer** is the physical virtual-timer PPI while
//!   the guest's CNTV registers are loaded. When it asserts, the hypervisor
//!   gives the guest a list register hardware-linked to that PPI and marks
//!   the PPI active, so it does not signal again until the guest deactivates
//!   its virtual copy (which deactivates the physical one) or the run ends
//!   (the hypervisor clears the active state before the host runs).
//! - **Preemption:** the EL2 physical timer (CNTHP) is armed for the
//!   earlier of the host's own virtual-timer deadline (its CNTV registers
//!   are not loaded while the guest runs) and a time slice, so a guest that
//!   spins returns to the host within a slice even if the host armed
//!   nothing.
//!
//! The hypervisor makes sure, on this CPU's redistributor, that the PPIs it
//! relies on (maintenance, virtual timer, EL2 physical timer) are enabled
//! group-1 interrupts, and at boot that the distributor forwards group 1
//! with affinity routing, as any GICv3 host also sets them.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use hyp::vgic::{self, VgicContext, MAX_APRS, MAX_LRS};
use hyp::{Trap, VcpuContext};
use platform::GicFacts;

use crate::{mmu, sysreg};

/// INTIDs of the PPIs the hypervisor uses; 0 until [`init`].
static MAINTENANCE: AtomicU32 = AtomicU32::new(0);
static VTIMER: AtomicU32 = AtomicU32::new(0);
static HYPTIMER: AtomicU32 = AtomicU32::new(0);
static GICR: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Index of CNTV_CTL_EL0 and CNTV_CVAL_EL0 in `VcpuContext::sys` (see
/// `guest.rs`).
pub const SYS_CNTV_CTL: usize = 23;
/// See [`SYS_CNTV_CTL`].
pub const SYS_CNTV_CVAL: usize = 24;

const GICD_CTLR: usize = 0x0;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ENABLE_G1NS: u32 = 1 << 1;
const GICD_CTLR_ARE_NS: u32 = 1 << 4;
const GICR_WAKER: usize = 0x14;
const GICR_TYPER: usize = 0x8;
const GICR_IGROUPR0: usize = 0x80;
const GICR_ISENABLER0: usize = 0x100;
const GICR_ISACTIVER0: usize = 0x300;
const GICR_ICACTIVER0: usize = 0x380;
const FRAME: usize = 0x1_0000;
const SPURIOUS: u64 = 1023;

fn read32(addr: usize) -> u32 {
    // SAFETY: `addr` is a GIC register mapped as device memory by `init`.
    unsafe { (addr as *const u32).read_volatile() }
}

fn write32(addr: usize, v: u32) {
    // SAFETY: as `read32`; GIC register writes have no memory effects.
    unsafe { (addr as *mut u32).write_volatile(v) }
}

fn read64(addr: usize) -> u64 {
    // SAFETY: as `read32`.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Map the distributor and redistributors, note the PPIs, and let the
/// distributor forward group-1 interrupts with affinity routing. Boot CPU,
/// before any other CPU runs.
pub fn init(g: &GicFacts) {
    let (d, dsize) = (g.gicd.0 as usize, g.gicd.1 as usize);
    let (r, rsize) = (g.gicr.0 as usize, g.gicr.1 as usize);
    mmu::map(d, d + dsize, mmu::DEVICE);
    mmu::map(r, r + rsize, mmu::DEVICE);
    GICR[0].store(r, Ordering::Relaxed);
    GICR[1].store(r + rsize, Ordering::Relaxed);
    MAINTENANCE.store(g.maintenance.unwrap_or(25), Ordering::Relaxed);
    VTIMER.store(g.timers[2], Ordering::Relaxed);
    HYPTIMER.store(g.timers[3], Ordering::Relaxed);
    let ctlr = read32(d + GICD_CTLR);
    let want = GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1NS;
    if ctlr & want != want {
        write32(d + GICD_CTLR, ctlr | want);
        while read32(d + GICD_CTLR) & GICD_CTLR_RWP != 0 {
            core::hint::spin_loop();
        }
    }
}

/// The RD_base frame (the first 64 KiB of a redistributor) that holds
/// physical address `pa`, if any: where the LPI controls are.
pub fn rd_base_frame(pa: usize) -> Option<usize> {
    let (mut at, end) = (
        GICR[0].load(Ordering::Relaxed),
        GICR[1].load(Ordering::Relaxed),
    );
    if pa < at || pa >= end {
        return None;
    }
    while at != 0 && at + 2 * FRAME <= end {
        if pa >= at && pa < at + FRAME {
            return Some(at);
        }
        let typer = read64(at + GICR_TYPER);
        if typer & (1 << 4) != 0 {
            return None;
        }
        at += if typer & (1 << 1) != 0 { 4 } else { 2 } * FRAME;
    }
    None
}

/// Find this CPU's redistributor (by affinity), wake it, and turn on the
/// system-register interface for EL1 (the host's and the guests').
pub fn init_cpu(index: usize) {
    let mpidr = sysreg::mpidr_el1();
    let aff = (mpidr & 0xff_ffff) | ((mpidr >> 8) & 0xff00_0000);
    let (mut at, end) = (
        GICR[0].load(Ordering::Relaxed),
        GICR[1].load(Ordering::Relaxed),
    );
    while at != 0 && at + 2 * FRAME <= end {
        let typer = read64(at + GICR_TYPER);
        if typer >> 32 == aff {
            let waker = read32(at + GICR_WAKER);
            write32(at + GICR_WAKER, waker & !(1 << 1));
            while read32(at + GICR_WAKER) & (1 << 2) != 0 {
                core::hint::spin_loop();
            }
            if let Some(c) = crate::percpu::cpu(index) {
                c.sgi_frame.store(at + FRAME, Ordering::Relaxed);
            }
            break;
        }
        if typer & (1 << 4) != 0 {
            break;
        }
        // GICv4 redistributors with virtual LPIs have two more frames.
        at += if typer & (1 << 1) != 0 { 4 } else { 2 } * FRAME;
    }
    // SAFETY: SRE (with DFB, DIB) only selects the system-register
    // interface for EL1, which GICv3 software uses anyway.
    unsafe { asm!("msr S3_0_C12_C12_5, {}", "isb", in(reg) 7u64, options(nostack)) };
    // List registers reset to unknown values; outside a guest's run they
    // are all invalid and the virtual CPU interface is off.
    set_ich_hcr(0);
    for n in 0..geometry().0 {
        set_lr(n, 0);
    }
}

/// This CPU's redistributor SGI/PPI frame (0: not found), kept in its
/// per-CPU record.
fn sgi_frame() -> usize {
    crate::percpu::cpu(sysreg::tpidr_el2() as usize)
        .map_or(0, |c| c.sgi_frame.load(Ordering::Relaxed))
}

macro_rules! sys {
    ($get:ident, $set:ident, $reg:literal) => {
        fn $get() -> u64 {
            let v: u64;
            // SAFETY: reading a GIC or timer register has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack)) };
            v
        }
        fn $set(v: u64) {
            // SAFETY: the callers below write these registers only around a
            // guest's run, and put the host's values back.
            unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nomem, nostack)) };
        }
    };
}

sys!(pmr, set_pmr, "S3_0_C4_C6_0");
sys!(igrpen1, set_igrpen1, "S3_0_C12_C12_7");
sys!(hppir1, _set_hppir1, "S3_0_C12_C12_2");
sys!(hppir0, _set_hppir0, "S3_0_C12_C8_2");
sys!(_ich_hcr, set_ich_hcr, "S3_4_C12_C11_0");
sys!(ich_vtr, _set_ich_vtr, "S3_4_C12_C11_1");
sys!(ich_vmcr, set_ich_vmcr, "S3_4_C12_C11_7");
sys!(_cnthp_ctl, set_cnthp_ctl, "S3_4_C14_C2_1");
sys!(_cnthp_cval, set_cnthp_cval, "S3_4_C14_C2_2");
sys!(cntpct, _set_cntpct, "cntpct_el0");
sys!(cntfrq, _set_cntfrq, "cntfrq_el0");
sys!(cntv_ctl, _set_cntv_ctl, "cntv_ctl_el0");
sys!(cntv_cval, _set_cntv_cval, "cntv_cval_el0");

macro_rules! indexed {
    ($get:ident, $set:ident, [$($n:literal => $reg:literal),*]) => {
        fn $get(n: usize) -> u64 {
            let v: u64;
            match n {
                $(
                    // SAFETY: reading a list or active-priority register has
                    // no side effects.
                    $n => unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack)) },
                )*
                _ => v = 0,
            }
            v
        }
        fn $set(n: usize, v: u64) {
            match n {
                $(
                    // SAFETY: list and active-priority registers only
                    // describe the guest's virtual interrupts.
                    $n => unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nomem, nostack)) },
                )*
                _ => {}
            }
        }
    };
}

indexed!(lr, set_lr, [
    0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
    4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
    8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
    12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7"
]);
indexed!(ap0r, set_ap0r, [
    0 => "S3_4_C12_C8_0", 1 => "S3_4_C12_C8_1", 2 => "S3_4_C12_C8_2", 3 => "S3_4_C12_C8_3"
]);
indexed!(ap1r, set_ap1r, [
    0 => "S3_4_C12_C9_0", 1 => "S3_4_C12_C9_1", 2 => "S3_4_C12_C9_2", 3 => "S3_4_C12_C9_3"
]);

/// List registers and active-priority registers this CPU implements.
fn geometry() -> (usize, usize) {
    let vtr = ich_vtr();
    let lrs = ((vtr & 0x1f) as usize + 1).min(MAX_LRS);
    let pre_bits = ((vtr >> 26) & 7) as usize + 1;
    let aprs = (1usize << pre_bits.saturating_sub(5)).min(MAX_APRS);
    (lrs, aprs)
}

/// The guest's virtual timer asserts now, from its loaded registers (its
/// CNTVOFF is 0, so its virtual count is the physical one).
fn live_timer_asserted() -> bool {
    vgic::timer_asserted(cntv_ctl(), cntv_cval(), cntpct())
}

/// The physical counter value at which the host's virtual timer fires,
/// from its saved CNTV registers and CNTVOFF.
pub fn host_deadline(host_sys: &[u64], cntvoff: u64) -> u64 {
    match vgic::timer_deadline(host_sys[SYS_CNTV_CTL], host_sys[SYS_CNTV_CVAL]) {
        u64::MAX => u64::MAX,
        d => d.saturating_add(cntvoff),
    }
}

/// The end of a time slice that starts now.
pub fn slice_end() -> u64 {
    // 10 ms of the generic counter.
    cntpct().saturating_add(cntfrq() / 100)
}

/// The host's interrupt-controller state that a guest's run changes.
pub struct HostGic {
    pmr: u64,
    igrpen1: u64,
    timer_active: bool,
    /// List registers the guest got (the rest stay invalid): read back and
    /// cleared at the exit.
    used_lrs: usize,
}

impl HostGic {
    /// Nothing saved yet.
    pub const NONE: Self = Self {
        pmr: 0,
        igrpen1: 0,
        timer_active: false,
        used_lrs: 0,
    };
}

/// Before entering the guest (its EL1 registers loaded): the list registers
/// from `ctx`, the timer interrupt, and the preemption deadline `deadline`
/// (physical counter).
pub fn enter(ctx: &mut VcpuContext, deadline: u64) -> HostGic {
    let (lrs, aprs) = geometry();
    let (maint, vtimer, hyptimer) = (
        MAINTENANCE.load(Ordering::Relaxed),
        VTIMER.load(Ordering::Relaxed),
        HYPTIMER.load(Ordering::Relaxed),
    );
    let flush = ctx.gic.flush(lrs, vtimer, live_timer_asserted());
    let sgi = sgi_frame();
    if sgi != 0 {
        let mask = (1u32 << maint) | (1 << vtimer) | (1 << hyptimer);
        let groups = read32(sgi + GICR_IGROUPR0);
        if groups & mask != mask {
            write32(sgi + GICR_IGROUPR0, groups | mask);
        }
        write32(sgi + GICR_ISENABLER0, mask);
        if flush.mask_timer {
            write32(sgi + GICR_ISACTIVER0, 1 << vtimer);
        }
    }
    let g: &VgicContext = &ctx.gic;
    // Outside a guest's run every list register is invalid: write only up
    // to the last one the guest has.
    let used_lrs = g.used_lrs(lrs);
    let host = HostGic {
        pmr: pmr(),
        igrpen1: igrpen1(),
        timer_active: flush.mask_timer && sgi != 0,
        used_lrs,
    };
    for n in 0..used_lrs {
        set_lr(n, g.lr[n]);
    }
    for n in 0..aprs {
        set_ap0r(n, g.ap0r[n]);
        set_ap1r(n, g.ap1r[n]);
    }
    set_ich_vmcr(g.vmcr);
    set_ich_hcr(1 | refill_bits(flush.overflow, lrs));
    set_cnthp_cval(deadline);
    set_cnthp_ctl(1);
    set_pmr(0xff);
    set_igrpen1(1);
    sysreg::isb();
    host
}

/// Right after the guest trapped with an interrupt, with its registers still
/// loaded and before anything changes the interrupt lines: whether it was
/// the guest's own business (its timer, a maintenance interrupt, or nothing
/// left pending) or the host's.
pub fn classify() -> Trap {
    let intid = match hppir1() {
        SPURIOUS => hppir0(),
        i => i,
    };
    let vtimer = u64::from(VTIMER.load(Ordering::Relaxed));
    let maint = u64::from(MAINTENANCE.load(Ordering::Relaxed));
    if intid == SPURIOUS || intid == maint || (intid == vtimer && live_timer_asserted()) {
        Trap::Resume
    } else {
        Trap::Irq
    }
}

/// After the guest's run (its EL1 registers saved into `ctx`): the list
/// registers back into `ctx`, the host's interrupt state back as it was.
pub fn exit(ctx: &mut VcpuContext, host: &HostGic) {
    set_cnthp_ctl(0);
    let (lrs, aprs) = geometry();
    let g = &mut ctx.gic;
    for n in 0..host.used_lrs {
        g.lr[n] = lr(n);
        set_lr(n, 0);
    }
    g.lr[host.used_lrs..lrs].fill(0);
    for n in 0..aprs {
        g.ap0r[n] = ap0r(n);
        g.ap1r[n] = ap1r(n);
    }
    g.vmcr = ich_vmcr();
    set_ich_hcr(0);
    if host.timer_active {
        write32(
            sgi_frame() + GICR_ICACTIVER0,
            1 << VTIMER.load(Ordering::Relaxed),
        );
    }
    set_pmr(host.pmr);
    set_igrpen1(host.igrpen1);
    ctx.timer_deadline = vgic::timer_deadline(ctx.sys[SYS_CNTV_CTL], ctx.sys[SYS_CNTV_CVAL]);
    sysreg::isb();
}

/// A WFI with the guest loaded: whether it has an interrupt to take (queued,
/// pending in a list register, or its timer), so it should not idle.
pub fn guest_has_pending(ctx: &VcpuContext, host: &HostGic) -> bool {
    ctx.gic.has_queued()
        || (0..host.used_lrs).any(|n| vgic::lr_state(lr(n)) & vgic::lr::PENDING != 0)
        || live_timer_asserted()
}

/// With the guest loaded, after EL2 handled a trap: if something was
/// injected meanwhile, or the timer asserts, or a timer entry is in the list
/// registers, place them again as [`enter`] would. Otherwise (the common
/// case: a guest call answered at EL2) nothing to do.
pub fn resync(ctx: &mut VcpuContext, host: &mut HostGic) {
    let vtimer = VTIMER.load(Ordering::Relaxed);
    let level = live_timer_asserted();
    let timer_lr = ctx.gic.lr[..host.used_lrs]
        .iter()
        .any(|&v| vgic::lr_intid(v) == vtimer && vgic::lr_state(v) != 0);
    if !ctx.gic.has_queued() && !level && !timer_lr {
        return;
    }
    let (lrs, _) = geometry();
    for n in 0..host.used_lrs {
        ctx.gic.lr[n] = lr(n);
    }
    let flush = ctx.gic.flush(lrs, vtimer, level);
    let used = ctx.gic.used_lrs(lrs);
    for n in 0..used.max(host.used_lrs) {
        set_lr(n, ctx.gic.lr[n]);
    }
    host.used_lrs = used.max(host.used_lrs);
    set_ich_hcr(1 | refill_bits(flush.overflow, lrs));
    let sgi = sgi_frame();
    if sgi != 0 && flush.mask_timer != host.timer_active {
        let reg = if flush.mask_timer {
            GICR_ISACTIVER0
        } else {
            GICR_ICACTIVER0
        };
        write32(sgi + reg, 1 << vtimer);
        host.timer_active = flush.mask_timer;
    }
    sysreg::isb();
}

/// ICH_HCR_EL2 bits asking for a maintenance interrupt when injections wait
/// for a list register: once at most one entry is left in use (UIE), or,
/// with a single list register, once none is pending (NPIE).
fn refill_bits(overflow: bool, lrs: usize) -> u64 {
    match (overflow, lrs >= 2) {
        (false, _) => 0,
        (true, true) => 1 << 1,
        (true, false) => 1 << 3,
    }
}
