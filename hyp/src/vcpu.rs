//! vCPUs: VCPU_RUN, the traps a running guest takes to EL2, the guest calls
//! of ABI.md section 2 the hypervisor answers itself, and the exits of 2.3.
//!
//! Running guest code is behind [`VcpuExecutor`]: the EL2 image enters the
//! guest through a world switch, the simulator through a model of the test
//! guest. Everything a trap means is decided here, once, for both.

use core::mem::offset_of;

use host_interface::{
    fault_flags, is_host_call_range, psci, Errno, ExitReason, GuestCallId, IrqRequest, RunPage,
    KVM_FEATURES_BITMAP, KVM_UID, PSCI_VERSION_1_1, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED,
    SMCCC_VERSION_1_1,
};
use pagetables::{Entry, Maintenance, PageState, PhysMem, Stage2};
use platform::MemClass;

use crate::hypervisor::{Hypervisor, Vm, VmGuard};
use crate::owner::{HostAnnotation, GUEST_MMIO_GUARD};
use crate::phys::{run_read, run_write};
use crate::vgic::VgicContext;

/// Number of words of [`VcpuContext::sys`].
pub const SYS_WORDS: usize = 48;
/// Number of words of [`VcpuContext::fp`]: V0..V31 (two words each), FPSR, FPCR.
pub const FP_WORDS: usize = 66;

/// The state of a vCPU that the hypervisor keeps while it is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    /// Program counter (ELR_EL2 at a trap).
    pub pc: u64,
    /// PSTATE and EL1 system registers, laid out by the executor that runs
    /// the vCPU (the core never interprets them; all zero means "reset").
    pub sys: [u64; SYS_WORDS],
    /// FP/SIMD registers, saved and restored by the executor.
    pub fp: [u64; FP_WORDS],
    /// The virtual CPU interface: list registers and injected interrupts.
    pub gic: VgicContext,
    /// When the guest's virtual timer fires, in physical counter ticks
    /// (`u64::MAX`: disabled or masked); kept by the executor at each trap
    /// and reported in the run page.
    pub timer_deadline: u64,
}

impl Default for VcpuContext {
    fn default() -> Self {
        Self {
            x: [0; 31],
            pc: 0,
            sys: [0; SYS_WORDS],
            fp: [0; FP_WORDS],
            gic: VgicContext::default(),
            timer_deadline: u64::MAX,
        }
    }
}

/// Why a running guest came back to EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// HVC: function ID and arguments in x0..x6, pc already past the HVC.
    Hvc,
    /// Stage-2 data abort at `ipa` (translation or permission fault), pc at
    /// the faulting instruction. `reg` is the transfer register (31 = xzr).
    DataAbort {
        /// Faulting IPA (byte address).
        ipa: u64,
        /// Write access.
        write: bool,
        /// Access size in bytes.
        size: u8,
        /// Register transferred.
        reg: u8,
        /// ESR_EL2 as the hardware reported it.
        esr: u64,
    },
    /// Stage-2 instruction abort at `ipa`.
    InstAbort {
        /// Faulting IPA.
        ipa: u64,
        /// ESR_EL2.
        esr: u64,
    },
    /// WFI, pc at the instruction, with no interrupt pending for the guest.
    Wfi,
    /// A write of `value` to ICC_SGI1R_EL1 (or ICC_ASGI1R_EL1, ICC_SGI0R_EL1):
    /// the guest sends an SGI to vCPUs of its VM. pc already past it.
    Sgi {
        /// The value written.
        value: u64,
    },
    /// Something the executor dealt with itself (the guest's own timer
    /// interrupt, a maintenance interrupt, a WFI with an interrupt already
    /// pending): enter the guest again.
    Resume,
    /// A physical interrupt for the host.
    Irq,
    /// Something the hypervisor cannot continue from.
    Fatal,
}

/// What a running guest may look at: its own stage-2 and memory.
pub struct GuestView<'a, P: PhysMem> {
    /// The VM's stage-2.
    pub s2: &'a Stage2<P>,
    /// Physical memory.
    pub phys: &'a P,
    /// Whether the VM is protected.
    pub protected: bool,
}

/// Runs guest code until it traps.
pub trait VcpuExecutor<P: PhysMem> {
    /// Enter the vCPU `vcpu` of VM `handle` with `ctx`; return at the next trap.
    fn enter(
        &mut self,
        handle: u64,
        vcpu: u64,
        view: GuestView<'_, P>,
        ctx: &mut VcpuContext,
    ) -> Trap;
}

/// An executor with no guest: every entry comes straight back as an
/// interrupt. For callers that never run vCPUs.
pub struct NoExecutor;

impl<P: PhysMem> VcpuExecutor<P> for NoExecutor {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, P>, _: &mut VcpuContext) -> Trap {
        Trap::Irq
    }
}

/// Move the SGIs other vCPUs sent `c` into its context.
fn take_sgis(c: &mut Vcpu, ctx: &mut VcpuContext) {
    while c.sgis != 0 {
        let intid = c.sgis.trailing_zeros();
        ctx.gic.inject(intid);
        c.sgis &= !(1 << intid);
    }
}

/// What the next VCPU_RUN must complete before re-entering the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    None,
    MmioRead {
        reg: u8,
        size: u8,
    },
    MmioWrite,
    MemFault {
        ipa: u64,
        reg: u8,
        size: u8,
        write: bool,
        emulatable: bool,
    },
    Hvc,
}

/// Answer a guest call that depends on nothing but its registers (SMCCC
/// and PSCI versions and features, the vendor hypervisor UID and
/// features, HYP_MEMINFO; an ID in the host-call range: NOT_SUPPORTED).
/// `true` if it was one of those: the answer is in `ctx.x` and the guest
/// goes on. It reads no VM state, so the EL2 image calls it without any
/// lock; every other call goes through the core.
pub fn answer_guest_call(ctx: &mut VcpuContext) -> bool {
    match <&mut [u64; 4]>::try_from(&mut ctx.x[..4]) {
        Ok(x) => answer_guest_call_regs(x),
        Err(_) => false,
    }
}

/// Whether the EL2 image's guest vector lets a guest HVC with function ID
/// `id` in x0 try [`answer_guest_call_regs`] (`__guest_hvc` in
/// hyp/el2/src/guest.rs; the same test in assembly). Every call that
/// function answers passes, so the filter only spares other calls the
/// attempt.
pub const fn vector_may_answer(id: u64) -> bool {
    let function = id & 0xffff;
    function < 0x200 || function == 0xff01
}

/// [`answer_guest_call`] on the call's registers x0..x3 alone, which are
/// all such a call reads or writes (the EL2 image answers these calls in
/// its guest vector, saving only the registers the compiler may use).
/// Unchanged when the answer is `false`.
pub fn answer_guest_call_regs(x: &mut [u64; 4]) -> bool {
    let id = x[0];
    if is_host_call_range(id) {
        x[0] = SMCCC_NOT_SUPPORTED;
        return true;
    }
    let Some(call) = GuestCallId::from_id(id) else {
        return false;
    };
    // The calls answered here that take an argument (SMCCC_ARCH_FEATURES,
    // PSCI_FEATURES) are SMC32 functions: they take W1, and the upper half
    // of x1 is not part of the call.
    let arg1 = x[1] & 0xffff_ffff;
    match call {
        GuestCallId::SmcccVersion => x[0] = SMCCC_VERSION_1_1,
        GuestCallId::SmcccArchFeatures => {
            let known = matches!(
                GuestCallId::from_id(arg1),
                Some(GuestCallId::SmcccVersion | GuestCallId::SmcccArchFeatures)
            );
            x[0] = if known { 0 } else { SMCCC_NOT_SUPPORTED };
        }
        GuestCallId::VendorHypCallUid => {
            for (k, w) in KVM_UID.iter().enumerate() {
                x[k] = u64::from(*w);
            }
        }
        GuestCallId::VendorHypKvmFeatures => {
            x[0] = KVM_FEATURES_BITMAP;
            x[1..4].fill(0);
        }
        GuestCallId::HypMeminfo => {
            if x[1..4].iter().all(|&r| r == 0) {
                x[0] = 4096;
                x[1..4].fill(0);
            } else {
                x[0] = SMCCC_INVALID_PARAMETER;
            }
        }
        GuestCallId::PsciVersion => x[0] = PSCI_VERSION_1_1,
        GuestCallId::PsciFeatures => {
            // PSCI 1.1: PSCI_FEATURES also reports SMCCC_VERSION, which is
            // how Linux discovers SMCCC 1.1 (and with it the vendor
            // hypervisor services).
            let is_psci = matches!(
                GuestCallId::from_id(arg1),
                Some(c) if c.is_psci() || c == GuestCallId::SmcccVersion
            );
            x[0] = if is_psci {
                psci::SUCCESS
            } else {
                psci::NOT_SUPPORTED
            };
        }
        GuestCallId::PsciMigrateInfoType => x[0] = 2,
        _ => return false,
    }
    true
}

/// One vCPU.
pub struct Vcpu {
    pub(crate) run_pfn: u64,
    pub(crate) ctx_page: u64,
    pub(crate) ctx: VcpuContext,
    pub(crate) started: bool,
    pub(crate) running: bool,
    pub(crate) powered: bool,
    pub(crate) pending: Pending,
    /// SGIs other vCPUs of the VM sent this one, not yet in its context.
    pub(crate) sgis: u16,
}

impl Vcpu {
    /// A new vCPU. `powered` is false for a protected VM's secondaries
    /// (ABI.md, VCPU_CREATE): only the guest's own CPU_ON starts them.
    pub(crate) fn new(run_pfn: u64, ctx_page: u64, powered: bool) -> Self {
        Self {
            run_pfn,
            ctx_page,
            ctx: VcpuContext::default(),
            started: false,
            running: false,
            powered,
            pending: Pending::None,
            sgis: 0,
        }
    }
}

/// A vCPU between [`Hypervisor::vcpu_run_begin`] and the end of its run.
pub struct Run {
    slot: usize,
    index: usize,
    run_pfn: u64,
    /// The vCPU's state while it runs.
    pub ctx: VcpuContext,
    /// VTTBR_EL2 for the VM: its stage-2 root and VMID.
    pub vttbr: u64,
    /// Whether the VM is protected.
    pub protected: bool,
    /// Whether the VM was created with MTE (allocation tags and the MTE
    /// registers are its to use; otherwise they trap).
    pub mte: bool,
    /// Other vCPUs this run sent SGIs to, for the run page at the exit.
    kick: u64,
}

impl Run {
    /// A run of nothing yet, for [`Hypervisor::vcpu_run_begin_in`].
    pub fn idle() -> Self {
        Self {
            slot: usize::MAX,
            index: 0,
            run_pfn: 0,
            ctx: VcpuContext::default(),
            vttbr: 0,
            protected: false,
            mte: false,
            kick: 0,
        }
    }
}

/// Guest exits end the run; everything else goes back into the guest.
enum Next {
    Continue,
    Exit(ExitReason),
}

/// Traps handled at EL2 in one VCPU_RUN before it counts as an interrupt
/// (the simulator's stand-in for the host's timer tick).
pub const MAX_TRAPS_PER_RUN: usize = 4096;

const IPA_LIMIT: u64 = 1 << host_interface::GUEST_IPA_BITS;

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

macro_rules! run_off {
    ($f:ident) => {
        offset_of!(RunPage, $f)
    };
}

impl<P: PhysMem, M: Maintenance + Clone> Hypervisor<P, M> {
    /// VCPU_RUN: run vCPU `vcpu` of VM `handle` until an exit for the host.
    /// The guest runs under its VM's lock, taken for each entry; the EL2
    /// image instead uses [`Self::vcpu_run_begin`] and
    /// [`Self::vcpu_run_trap`] so that the guest runs without any lock.
    pub(crate) fn vcpu_run(
        &self,
        handle: u64,
        vcpu: u64,
        exec: &mut dyn VcpuExecutor<P>,
    ) -> Result<u64, Errno> {
        let mut run = match self.vcpu_run_begin(handle, vcpu)? {
            Ok(run) => run,
            Err(reason) => return Ok(reason),
        };
        for _ in 0..MAX_TRAPS_PER_RUN {
            let trap = {
                let Some(vm) = self.lock_slot(run.slot) else {
                    break;
                };
                let view = GuestView {
                    s2: &vm.s2,
                    phys: &self.phys,
                    protected: vm.protected,
                };
                exec.enter(handle, vcpu, view, &mut run.ctx)
            };
            if let Some(reason) = self.vcpu_run_trap(&mut run, trap) {
                return Ok(reason);
            }
        }
        Ok(self.vcpu_run_end(&mut run, ExitReason::Interrupted))
    }

    /// First half of VCPU_RUN: checks (ENOENT, EBUSY, EPERM), the first
    /// entry or the completion of the last exit, and the vCPU marked
    /// running. `Ok(Err(reason))` is an exit decided without entering the
    /// guest (a dead VM, a powered-off vCPU). While a [`Run`] is out, the
    /// vCPU counts as running: VCPU_RUN of it is -EBUSY and VM_DESTROY of
    /// its VM -EBUSY, so its tables stay in place. Takes the VM's lock only.
    pub fn vcpu_run_begin(&self, handle: u64, vcpu: u64) -> Result<Result<Run, u64>, Errno> {
        let mut run = Run::idle();
        Ok(self
            .vcpu_run_begin_in(handle, vcpu, &mut run)?
            .map(|()| run))
    }

    /// [`Self::vcpu_run_begin`] into `run`, which the caller keeps in place:
    /// the vCPU's context (over 1 KiB) is copied once, here, and once back
    /// by [`Self::vcpu_run_end`]. `run` is left as it was unless this
    /// answers `Ok(Ok(()))`.
    pub fn vcpu_run_begin_in(
        &self,
        handle: u64,
        vcpu: u64,
        run: &mut Run,
    ) -> Result<Result<(), u64>, Errno> {
        let mut vm = self.lock_vm(handle)?;
        let i = usize::try_from(vcpu).map_err(|_| Errno::ENOENT)?;
        let c = vm.vcpus.get(i).ok_or(Errno::ENOENT)?;
        let run_pfn = c.run_pfn;
        // The run page is host memory: read the request once.
        let irq = match IrqRequest::decode(run_read(&self.phys, run_pfn, run_off!(inject_irq))) {
            IrqRequest::Malformed => return Err(Errno::EINVAL),
            IrqRequest::None => None,
            IrqRequest::Inject(intid) => Some(intid),
        };
        if c.running {
            return Err(Errno::EBUSY);
        }
        if vm.dead {
            return Ok(Err(self.exit_without_running(run_pfn, ExitReason::Fatal)));
        }
        if !c.powered {
            // Powered off (a protected VM's secondary before the guest's
            // CPU_ON, or any vCPU after its CPU_OFF): nothing runs and
            // nothing is taken. An interrupt request stays in the run page
            // for the first run after CPU_ON (which starts the vCPU afresh),
            // and no timer can wake it: the host sleeps until the CPU_ON
            // names it in `kick_vcpus`.
            run_write(&self.phys, run_pfn, run_off!(timer_deadline), u64::MAX);
            return Ok(Err(self.exit_without_running(run_pfn, ExitReason::Wfi)));
        }
        run.ctx = c.ctx;
        let ctx = &mut run.ctx;
        if !c.started {
            // Only a vCPU that is powered and has never run takes its entry
            // from the host: a protected VM's secondary waits, powered off,
            // for the guest's CPU_ON, and once a vCPU has run the host never
            // sets its registers again (RULES.md S4).
            let entry = run_read(&self.phys, run_pfn, run_off!(entry));
            let x0 = run_read(&self.phys, run_pfn, run_off!(x0));
            if vm.protected && !Self::guest_owns(&vm.s2, entry) {
                return Err(Errno::EPERM);
            }
            *ctx = VcpuContext::default();
            ctx.pc = entry;
            ctx.x[0] = x0;
        } else {
            self.complete_pending(&vm, i, ctx);
        }
        if let Some(intid) = irq {
            // Decoded above, so within range; the request is taken.
            ctx.gic.inject(intid);
            run_write(&self.phys, run_pfn, run_off!(inject_irq), 0);
        }
        let (root, vmid, protected, mte) = (vm.s2.root_pa(), vm.s2.vmid(), vm.protected, vm.mte);
        let slot = vm.slot;
        let c = &mut vm.vcpus[i];
        c.started = true;
        c.pending = Pending::None;
        take_sgis(c, ctx);
        c.running = true;
        run.slot = slot;
        run.index = i;
        run.run_pfn = run_pfn;
        run.vttbr = root | (u64::from(vmid) << 48);
        run.protected = protected;
        run.mte = mte;
        run.kick = 0;
        Ok(Ok(()))
    }

    /// A VCPU_RUN that enters no guest: `reason` in the run page, and the
    /// answer's x2.
    fn exit_without_running(&self, run_pfn: u64, reason: ExitReason) -> u64 {
        run_write(&self.phys, run_pfn, run_off!(exit_reason), reason as u64);
        reason as u64
    }

    /// Second half of VCPU_RUN, after each trap: `None` to enter the guest
    /// again, `Some(exit reason)` when the run is over (the exit is in the
    /// run page, the vCPU no longer running).
    pub fn vcpu_run_trap(&self, run: &mut Run, trap: Trap) -> Option<u64> {
        let reason = self.vcpu_run_step(run, trap)?;
        Some(self.vcpu_run_end(run, reason))
    }

    /// [`Self::vcpu_run_trap`] without ending the run: `Some(reason)` when
    /// the run must end, which the caller then does with
    /// [`Self::vcpu_run_end`] once `run.ctx` holds the vCPU's whole state
    /// (an executor that keeps the guest's registers loaded across traps
    /// saves them first). The vCPU counts as running until then. Takes the
    /// VM's lock, and the host's as well only for a guest call that changes
    /// the host's access (MEM_SHARE, MEM_UNSHARE).
    pub fn vcpu_run_step(&self, run: &mut Run, trap: Trap) -> Option<ExitReason> {
        let Some(mut vm) = self.lock_slot(run.slot) else {
            return Some(ExitReason::Fatal);
        };
        // A guest CPU_ON names a vCPU the host must now run: as for an SGI,
        // the run ends INTERRUPTED with it in `kick_vcpus`.
        let cpu_on = match (trap, run.ctx.x[0]) {
            (Trap::Hvc, 0xC400_0003) => Self::vcpu_of_mpidr(run.ctx.x[1]),
            (Trap::Hvc, 0x8400_0003) => Self::vcpu_of_mpidr(run.ctx.x[1] & 0xffff_ffff),
            _ => None,
        };
        let next = match trap {
            Trap::Sgi { value } => Self::send_sgi(&mut vm, run, value),
            _ => self.handle_trap(&mut vm, run.index, run.run_pfn, trap, &mut run.ctx),
        };
        let next = match (next, cpu_on) {
            (Next::Continue, Some(t)) if run.ctx.x[0] == psci::SUCCESS && t < 64 => {
                run.kick |= 1 << t;
                Next::Exit(ExitReason::Interrupted)
            }
            (next, _) => next,
        };
        match next {
            Next::Continue => {
                // SGIs other vCPUs sent meanwhile.
                if let Some(c) = vm.vcpus.get_mut(run.index) {
                    take_sgis(c, &mut run.ctx);
                }
                None
            }
            Next::Exit(r) => Some(r),
        }
    }

    /// The guest wrote `value` to ICC_SGI1R_EL1: SGI `INTID` (bits 27:24)
    /// to every other vCPU (IRM, bit 40) or to those of the target list
    /// (bits 15:0, vCPU `RS * 16 + n`, RS in bits 47:44) whose MPIDR has
    /// the affinity given (vCPU MPIDRs have Aff0 = index and nothing else).
    /// The sender's own SGI goes straight into its context; others wait in
    /// their vCPU, and the run ends INTERRUPTED with them in the run page's
    /// `kick_vcpus`, so the host can run or wake them.
    fn send_sgi(vm: &mut Vm<P>, run: &mut Run, value: u64) -> Next {
        let intid = ((value >> 24) & 0xf) as u32;
        let n = vm.vcpus.len();
        let targets: u64 = if value & (1 << 40) != 0 {
            ((1u64 << n) - 1) & !(1 << run.index)
        } else {
            let upper_aff = value & ((0xff << 48) | (0xff << 32) | (0xff << 16));
            let rs = (value >> 44) & 0xf;
            if upper_aff != 0 || rs >= 4 {
                0
            } else {
                ((value & 0xffff) << (16 * rs)) & ((1u64 << n) - 1)
            }
        };
        let mut kick = 0;
        for t in 0..n {
            if targets & (1 << t) == 0 {
                continue;
            }
            if t == run.index {
                run.ctx.gic.inject(intid);
            } else {
                vm.vcpus[t].sgis |= 1 << intid;
                kick |= 1 << t;
            }
        }
        if kick == 0 {
            Next::Continue
        } else {
            run.kick |= kick;
            Next::Exit(ExitReason::Interrupted)
        }
    }

    /// End a run with `reason` (for an executor that gives up, e.g. after
    /// many traps in one VCPU_RUN). Takes the VM's lock.
    pub fn vcpu_run_end(&self, run: &mut Run, reason: ExitReason) -> u64 {
        run_write(
            &self.phys,
            run.run_pfn,
            run_off!(exit_reason),
            reason as u64,
        );
        run_write(
            &self.phys,
            run.run_pfn,
            run_off!(timer_deadline),
            run.ctx.timer_deadline,
        );
        run_write(&self.phys, run.run_pfn, run_off!(kick_vcpus), run.kick);
        run.kick = 0;
        if let Some(mut vm) = self.lock_slot(run.slot) {
            if let Some(c) = vm.vcpus.get_mut(run.index) {
                c.running = false;
                c.ctx = run.ctx;
            }
        }
        reason as u64
    }

    /// Whether `ipa` lies in memory the VM owns (OWNED or SHARED_OWNED RAM).
    fn guest_owns(s2: &Stage2<P>, ipa: u64) -> bool {
        ipa < IPA_LIMIT
            && matches!(
                s2.lookup(ipa & !0xfff),
                Entry::Mapped { leaf, .. }
                    if matches!(leaf.state, PageState::Owned | PageState::SharedOwned)
            )
    }

    /// Finish the access or call that the last exit left to the host.
    fn complete_pending(&self, vm: &Vm<P>, i: usize, ctx: &mut VcpuContext) {
        let c = &vm.vcpus[i];
        let run_pfn = c.run_pfn;
        let read_data =
            |size: u8| run_read(&self.phys, run_pfn, run_off!(mmio_read_data)) & size_mask(size);
        match c.pending {
            Pending::None => {}
            Pending::MmioRead { reg, size } => {
                if let Some(r) = ctx.x.get_mut(usize::from(reg)) {
                    *r = read_data(size);
                }
                ctx.pc = ctx.pc.wrapping_add(4);
            }
            Pending::MmioWrite => ctx.pc = ctx.pc.wrapping_add(4),
            Pending::Hvc => {
                for k in 0..4 {
                    ctx.x[k] = run_read(&self.phys, run_pfn, run_off!(hvc_results) + 8 * k);
                }
            }
            Pending::MemFault {
                ipa,
                reg,
                size,
                write,
                emulatable,
            } => {
                // A normal VM's host may have emulated the access (ABI.md
                // 2.2): if it mapped nothing there, complete it like MMIO;
                // otherwise the guest retries the access.
                let still_unmapped = matches!(vm.s2.lookup(ipa & !0xfff), Entry::Invalid { .. });
                if emulatable && still_unmapped {
                    if !write {
                        if let Some(r) = ctx.x.get_mut(usize::from(reg)) {
                            *r = read_data(size);
                        }
                    }
                    ctx.pc = ctx.pc.wrapping_add(4);
                }
            }
        }
    }

    fn handle_trap(
        &self,
        vm: &mut VmGuard<'_, P>,
        i: usize,
        run_pfn: u64,
        trap: Trap,
        ctx: &mut VcpuContext,
    ) -> Next {
        let protected = vm.protected;
        let w = |off: usize, v: u64| run_write(&self.phys, run_pfn, off, v);
        match trap {
            Trap::Hvc => self.guest_call(vm, i, run_pfn, ctx),
            Trap::DataAbort {
                ipa,
                write,
                size,
                reg,
                esr,
            } => {
                let page = ipa & !0xfff;
                let e = if ipa < IPA_LIMIT {
                    vm.s2.lookup(page)
                } else {
                    Entry::Invalid { annotation: 0 }
                };
                match e {
                    Entry::Mapped { leaf, .. }
                        if (write && leaf.perms.w) || (!write && leaf.perms.r) =>
                    {
                        Next::Continue
                    }
                    Entry::Invalid {
                        annotation: GUEST_MMIO_GUARD,
                    } => {
                        let data = if write {
                            ctx.x.get(usize::from(reg)).copied().unwrap_or(0) & size_mask(size)
                        } else {
                            0
                        };
                        w(run_off!(fault_ipa), ipa);
                        w(
                            run_off!(fault_flags),
                            if write { fault_flags::WRITE } else { 0 },
                        );
                        w(run_off!(fault_size), u64::from(size));
                        w(run_off!(fault_esr), 0);
                        w(run_off!(fault_data), data);
                        let pending = if write {
                            Pending::MmioWrite
                        } else {
                            Pending::MmioRead { reg, size }
                        };
                        Self::set_pending(vm, i, pending);
                        Next::Exit(ExitReason::Mmio)
                    }
                    _ => {
                        // Only a normal VM's host sees the syndrome and data.
                        let emulatable = !protected && matches!(e, Entry::Invalid { .. });
                        let mut flags = if write { fault_flags::WRITE } else { 0 };
                        let (esr_out, data) = if protected {
                            (0, 0)
                        } else {
                            flags |= fault_flags::SYNDROME_VALID;
                            let d = if write {
                                ctx.x.get(usize::from(reg)).copied().unwrap_or(0) & size_mask(size)
                            } else {
                                0
                            };
                            (esr, d)
                        };
                        w(run_off!(fault_ipa), ipa);
                        w(run_off!(fault_flags), flags);
                        w(run_off!(fault_size), u64::from(size));
                        w(run_off!(fault_esr), esr_out);
                        w(run_off!(fault_data), data);
                        Self::set_pending(
                            vm,
                            i,
                            Pending::MemFault {
                                ipa,
                                reg,
                                size,
                                write,
                                emulatable,
                            },
                        );
                        Next::Exit(ExitReason::MemFault)
                    }
                }
            }
            Trap::InstAbort { ipa, esr } => {
                if ipa < IPA_LIMIT {
                    if let Entry::Mapped { leaf, .. } = vm.s2.lookup(ipa & !0xfff) {
                        if leaf.perms.x {
                            return Next::Continue;
                        }
                    }
                }
                let mut flags = fault_flags::EXEC;
                if !protected {
                    flags |= fault_flags::SYNDROME_VALID;
                }
                w(run_off!(fault_ipa), ipa);
                w(run_off!(fault_flags), flags);
                w(run_off!(fault_size), 4);
                w(run_off!(fault_esr), if protected { 0 } else { esr });
                w(run_off!(fault_data), 0);
                Self::set_pending(
                    vm,
                    i,
                    Pending::MemFault {
                        ipa,
                        reg: 31,
                        size: 4,
                        write: false,
                        emulatable: false,
                    },
                );
                Next::Exit(ExitReason::MemFault)
            }
            Trap::Wfi => {
                ctx.pc = ctx.pc.wrapping_add(4);
                Next::Exit(ExitReason::Wfi)
            }
            Trap::Resume => Next::Continue,
            // Handled in `vcpu_run_step`, which has the run's kick mask.
            Trap::Sgi { .. } => Next::Continue,
            Trap::Irq => Next::Exit(ExitReason::Interrupted),
            Trap::Fatal => {
                vm.dead = true;
                Next::Exit(ExitReason::Fatal)
            }
        }
    }

    fn set_pending(vm: &mut Vm<P>, i: usize, p: Pending) {
        if let Some(c) = vm.vcpus.get_mut(i) {
            c.pending = p;
        }
    }

    /// A guest HVC: answer it here (ABI.md section 2) or forward it.
    fn guest_call(
        &self,
        vm: &mut VmGuard<'_, P>,
        i: usize,
        run_pfn: u64,
        ctx: &mut VcpuContext,
    ) -> Next {
        if answer_guest_call(ctx) {
            return Next::Continue;
        }
        let id = ctx.x[0];
        let Some(call) = GuestCallId::from_id(id) else {
            // Not ours: the host handles it (ABI.md 2, HVC exit).
            for k in 0..7 {
                run_write(&self.phys, run_pfn, run_off!(hvc_args) + 8 * k, ctx.x[k]);
            }
            Self::set_pending(vm, i, Pending::Hvc);
            return Next::Exit(ExitReason::Hvc);
        };
        let args_zero = |from: usize| ctx.x[from..4].iter().all(|&r| r == 0);
        // An SMC32 function (bit 30 of the ID clear) takes W1..W3: the upper
        // halves of its argument registers are not part of the call (SMCCC,
        // PSCI 5.2.1). The registers themselves are left as they are.
        let w = if id & (1 << 30) == 0 {
            0xffff_ffff
        } else {
            u64::MAX
        };
        let arg = [ctx.x[0], ctx.x[1] & w, ctx.x[2] & w, ctx.x[3] & w];
        match call {
            // Answered by `answer_guest_call` above.
            GuestCallId::SmcccVersion
            | GuestCallId::SmcccArchFeatures
            | GuestCallId::VendorHypCallUid
            | GuestCallId::VendorHypKvmFeatures
            | GuestCallId::HypMeminfo
            | GuestCallId::PsciVersion
            | GuestCallId::PsciFeatures
            | GuestCallId::PsciMigrateInfoType => {}
            GuestCallId::MemShare | GuestCallId::MemUnshare | GuestCallId::MmioGuard => {
                let ipa = ctx.x[1];
                ctx.x[0] = if ipa & 0xfff != 0 || ipa >= IPA_LIMIT || !args_zero(2) {
                    SMCCC_INVALID_PARAMETER
                } else {
                    let r = match call {
                        GuestCallId::MemShare => self.guest_mem_share(vm, ipa),
                        GuestCallId::MemUnshare => self.guest_mem_unshare(vm, ipa),
                        _ => self.guest_mmio_guard(vm, ipa),
                    };
                    if r.is_ok() {
                        0
                    } else {
                        SMCCC_INVALID_PARAMETER
                    }
                };
            }
            GuestCallId::PsciCpuSuspend => {
                ctx.x[0] = psci::SUCCESS;
                return Next::Exit(ExitReason::Wfi);
            }
            GuestCallId::PsciCpuOff => {
                vm.vcpus[i].powered = false;
                ctx.x[0] = psci::DENIED;
                return Next::Exit(ExitReason::Wfi);
            }
            GuestCallId::PsciCpuOn => ctx.x[0] = Self::guest_cpu_on(vm, arg[1], arg[2], arg[3]),
            GuestCallId::PsciAffinityInfo => {
                ctx.x[0] = match Self::vcpu_of_mpidr(arg[1]).and_then(|t| vm.vcpus.get(t)) {
                    Some(c) if c.powered && c.started => 0,
                    Some(_) => 1,
                    None => psci::INVALID_PARAMETERS,
                };
            }
            GuestCallId::PsciSystemOff | GuestCallId::PsciSystemReset => {
                let t = u64::from(call == GuestCallId::PsciSystemReset);
                run_write(&self.phys, run_pfn, run_off!(system_event), t);
                return Next::Exit(ExitReason::SystemEvent);
            }
        }
        Next::Continue
    }

    fn vcpu_of_mpidr(mpidr: u64) -> Option<usize> {
        // vCPU n has MPIDR affinity 0.0.0.n.
        if mpidr & !0xff != 0 {
            None
        } else {
            Some((mpidr & 0xff) as usize)
        }
    }

    fn guest_cpu_on(vm: &mut Vm<P>, target: u64, entry: u64, context: u64) -> u64 {
        let protected = vm.protected;
        let Some(t) = Self::vcpu_of_mpidr(target) else {
            return psci::INVALID_PARAMETERS;
        };
        if t >= vm.vcpus.len() {
            return psci::INVALID_PARAMETERS;
        }
        if protected && !Self::guest_owns(&vm.s2, entry) {
            return psci::INVALID_PARAMETERS;
        }
        let c = &mut vm.vcpus[t];
        if c.powered && c.started {
            return psci::ALREADY_ON;
        }
        c.ctx = VcpuContext::default();
        c.ctx.pc = entry;
        c.ctx.x[0] = context;
        c.started = true;
        c.powered = true;
        c.pending = Pending::None;
        psci::SUCCESS
    }

    /// MEM_SHARE: guest OWNED RAM -> guest SHARED_OWNED, host SHARED_BORROWED.
    /// Takes the host's lock (the VM's is held).
    fn guest_mem_share(&self, vm: &mut Vm<P>, ipa: u64) -> Result<(), ()> {
        let Entry::Mapped { pa, leaf, .. } = vm.s2.lookup(ipa) else {
            return Err(());
        };
        if leaf.state != PageState::Owned || self.platform.classify(pa >> 12).0 != MemClass::Ram {
            return Err(());
        }
        let mut h = self.host.lock();
        h.s2.room_for(pa, 1, false).map_err(|_| ())?;
        let host_leaf = pagetables::Leaf {
            perms: pagetables::Perms {
                r: true,
                w: true,
                x: false,
            },
            memtype: pagetables::MemType::NormalWb,
            state: PageState::SharedBorrowed,
        };
        self.host_map(&mut h, pa >> 12, 1, host_leaf, false)
            .map_err(|_| ())?;
        drop(h);
        let shared = pagetables::Leaf {
            state: PageState::SharedOwned,
            ..leaf
        };
        // Only the software state bits change: no table pages, no BBM.
        vm.s2
            .map(ipa, pa, 1, shared, false, &mut self.mnt())
            .map_err(|_| ())
    }

    /// MEM_UNSHARE: guest SHARED_OWNED -> OWNED; the host loses access.
    /// Takes the host's lock (the VM's is held).
    fn guest_mem_unshare(&self, vm: &mut VmGuard<'_, P>, ipa: u64) -> Result<(), ()> {
        let Entry::Mapped { pa, leaf, .. } = vm.s2.lookup(ipa) else {
            return Err(());
        };
        if leaf.state != PageState::SharedOwned {
            return Err(());
        }
        let mut h = self.host.lock();
        h.s2.room_for(pa, 1, false).map_err(|_| ())?;
        self.host_unmap(&mut h, pa >> 12, 1, HostAnnotation::Guest(vm.slot))
            .map_err(|_| ())?;
        drop(h);
        if !self.cpu.fwb {
            // Lines the host dirtied while the page was shared must not be
            // written back later over what the guest writes, perhaps with a
            // non-cacheable stage 1: the host's mapping is gone (above, with
            // its TLB invalidation), so clean them out now.
            self.mnt().dcache_clean_inval_poc(pa, crate::phys::PAGE);
        }
        let owned = pagetables::Leaf {
            state: PageState::Owned,
            ..leaf
        };
        vm.s2
            .map(ipa, pa, 1, owned, false, &mut self.mnt())
            .map_err(|_| ())
    }

    /// MMIO_GUARD: register an IPA with nothing mapped as MMIO.
    fn guest_mmio_guard(&self, vm: &mut Vm<P>, ipa: u64) -> Result<(), ()> {
        let s2 = &mut vm.s2;
        match s2.lookup(ipa) {
            Entry::Mapped { .. } => Err(()),
            Entry::Invalid {
                annotation: GUEST_MMIO_GUARD,
            } => Ok(()),
            Entry::Invalid { .. } => s2
                .set_invalid(ipa, 1, GUEST_MMIO_GUARD, &mut self.mnt())
                .map_err(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ID of the SMCCC form (bits 23..16 clear) with any owner and
    /// function number: what the core answers from registers, the EL2
    /// vector lets through.
    #[test]
    fn the_vector_filter_passes_every_call_answered_from_registers() {
        let mut answered = 0;
        for top in 0..=0xffu64 {
            for function in 0..=0xffffu64 {
                let id = (top << 24) | function;
                let mut x = [id, 0, 0, 0];
                if answer_guest_call_regs(&mut x) {
                    answered += 1;
                    assert!(vector_may_answer(id), "{id:#x}");
                }
            }
        }
        // The host-call range (256 IDs) and the eight constant answers.
        assert_eq!(answered, 256 + 8);
        assert!(!vector_may_answer(0xC600_0F01));
        assert!(!vector_may_answer(0xC600_0200));
    }
}
