//! `abifuzz` mode: guests that fault, loop, and call the hypervisor with
//! random arguments, on two physical CPUs, must neither crash nor hang the
//! hypervisor or the host, and must get the answers ABI.md 2 gives.
//!
//! Every guest runs [`crate::fuzz_guest`]'s program. The mode has four parts, each
//! check printing `abifuzz: FAILED <what>: <why>` when it fails:
//!
//! 1. **Random guest calls and accesses, on both CPUs at once.** CPU 0
//!    starts CPU 1 with PSCI CPU_ON ([`CPU1_CONTEXT`]); each CPU then runs
//!    single-vCPU VMs of its own (from its own [`Arena`]) whose guest makes
//!    [`OPS`] random operations in all, seeded by the host ([`SEEDS`]).
//!    The host answers every exit ([`fuzz_vm`]) and checks it against the
//!    operation the guest recorded in its status page: forwarded calls are
//!    only IDs the hypervisor does not handle and carry the guest's x0..x6;
//!    MMIO and MEM_FAULT exits name the access's IPA, direction, size and
//!    data (the data and syndrome only for normal VMs); SYSTEM_EVENT comes
//!    from SYSTEM_OFF (type 0) or SYSTEM_RESET (type 1); WFI from WFI,
//!    CPU_SUSPEND or CPU_OFF, after which the vCPU stays off. A VM ends at
//!    SYSTEM_OFF/RESET, CPU_OFF, or a fault the host does not resolve; the
//!    host destroys it ([`GuestVm::destroy`]: VM_DESTROY, RECLAIM, every page
//!    back to the host and scrubbed) and resumes the guest's sequence in a
//!    fresh VM, alternating protected and normal VMs. The guest itself
//!    checks the answers it gets and reports violations.
//! 2. **Faults, one VM each** ([`FAULT_TESTS`]): unmapped and
//!    beyond-40-bit IPAs, a store to a read-only page, execution of
//!    unmapped and non-executable pages, misaligned accesses, MMIO of every
//!    size, WFI and CPU_SUSPEND, host-call IDs and 32-bit PSCI arguments.
//! 3. **Unhandled traps** ([`unhandled_trap`]): PMU, timer and debug
//!    registers the hypervisor traps but does not emulate give FATAL, for
//!    good; the VM is still destroyed and its pages come back.
//! 4. **Guest SMP** ([`smp`]): vCPU 0 on CPU 0 starts vCPU 1 with PSCI
//!    CPU_ON; CPU 1 runs it while it spins, and meanwhile CPU 0's VCPU_RUN
//!    of it and VM_DESTROY are -EBUSY, AFFINITY_INFO says ON, CPU_ON
//!    ALREADY_ON, and host calls go on; then CPU_OFF, OFF, a second CPU_ON,
//!    SYSTEM_RESET and SYSTEM_OFF.
//!
//! Nothing here depends on timing: every wait is for an event, with a
//! generous timeout that only turns a hang into a failure.
//!
//! Host memory: CPU 0 goes through [`access`]; CPU 1 cannot (the abort flag
//! is CPU 0's), so it only touches pages the host must be able to access
//! (its own free pages, its run pages, pages it shares with guests,
//! [`Mem::Raw`]): an abort there would be a hypervisor bug, and stops the
//! run through the test host's panic.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use host_interface::{
    fault_flags, is_host_call_range, prot, psci, system_event, vm_flags, Errno, ExitReason,
    GuestCallId, HostCallId, RunPage, PAGE_SHIFT, PAGE_SIZE,
};
use scenario::Tally;

use crate::fuzz::{expect as expect_call, hex};
use crate::fuzz_guest::{self as guest, category, kind, op, rec, violation};
use crate::ram::RamPool;
use crate::vm::call;
use crate::{access, arch, entry, fdt, mmu, println};

/// Random operations each CPU's guests make in all.
pub const OPS: u64 = 5000;
/// Generator seeds of CPU 0's and CPU 1's guests.
pub const SEEDS: [u64; 2] = [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344];
/// The PSCI CPU_ON context that makes CPU 1 run [`secondary`].
pub const CPU1_CONTEXT: u64 = 3;

/// Pages VM_CREATE gets.
const CREATE_PAGES: u64 = 8;
/// Pages VM_TOPUP gets: tables for the regions the guest touches and the
/// far IPAs it MMIO_GUARDs.
const TOPUP_PAGES: u64 = 64;
/// Single pages in an arena: the VM's own pages, the pages the host maps
/// after faults, spares.
const ARENA_PAGES: u64 = 24;
/// Pages the host maps into one VM after faults before it ends the VM
/// instead.
const MAPPED_CAP: usize = 6;
/// A CPU that needs more VMs than this for its operations is not making
/// progress.
const MAX_VMS: u64 = 2000;
/// Exits of one fuzzing VM after which it is not making progress.
const MAX_EXITS: u64 = 200_000;
/// x0 of vCPU 0 at its first run (the guest reports it back).
const BOOT_X0: u64 = 0xB007_0000_600D_0001;
/// x0 in the run page of the other vCPUs: guest CPU_ON starts them, with
/// its own context, so this value must never reach the guest.
const RUN_PAGE_X0: u64 = 0x0BAD_0000_0BAD_0001;
/// How long CPU 0 waits for CPU 1 to start and to finish its operations.
const CPU1_SECONDS: u64 = 120;
/// How long CPU 0 waits for anything else CPU 1 does (it takes
/// milliseconds: this only turns a hang into a failure).
const WAIT_SECONDS: u64 = 30;
/// How long the SMP test's vCPU 1 spins at most before it gives up: far
/// longer than vCPU 0 takes to release it, so that a loaded machine does
/// not make the test fail, but finite, so that a broken release does not
/// hang the run.
const SPIN_SECONDS: u64 = 60;
/// An IPA with nothing mapped in any guest here.
const UNMAPPED_IPA: u64 = 0x6000_0000;
/// Failure messages a CPU keeps (all are counted).
const MAX_MESSAGES: usize = 24;
/// SMCCC INVALID_PARAMETER.
const INVALID_PARAMETER: u64 = -3i64 as u64;
/// The MPIDR bits PSCI names CPUs by (Aff3..Aff0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// How a CPU reaches host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mem {
    /// Through [`access`], which survives aborts (CPU 0).
    Checked,
    /// Plain volatile accesses (CPU 1), only to pages the host may access.
    Raw,
}

impl Mem {
    fn read(self, pa: u64) -> Result<u64, String> {
        match self {
            Mem::Checked => access::read(pa).map_err(|_| format!("host read of {pa:#x} aborted")),
            Mem::Raw => {
                check_reachable(pa)?;
                // SAFETY: `pa` is identity mapped (checked above) and, by the
                // callers' contract, a page the host may access that Rust
                // holds no reference to; an abort would be a hypervisor bug
                // and ends in the test host's panic.
                Ok(unsafe { (pa as *const u64).read_volatile() })
            }
        }
    }

    fn write(self, pa: u64, value: u64) -> Result<(), String> {
        match self {
            Mem::Checked => {
                access::write(pa, value).map_err(|_| format!("host write of {pa:#x} aborted"))
            }
            Mem::Raw => {
                check_reachable(pa)?;
                // SAFETY: as in `read`: a page the host may write, which no
                // Rust reference covers.
                unsafe { (pa as *mut u64).write_volatile(value) };
                Ok(())
            }
        }
    }

    /// Fill page `pfn` with `word(i)` for its words, clean it to the point
    /// of coherency (guests start with their MMU off).
    fn fill_page(self, pfn: u64, word: impl Fn(u64) -> u64) -> Result<(), String> {
        let pa = pfn << PAGE_SHIFT;
        for i in 0..PAGE_SIZE / 8 {
            self.write(pa + 8 * i, word(i))?;
        }
        arch::dcache_clean(pa as usize, (pa + PAGE_SIZE) as usize);
        Ok(())
    }
}

fn check_reachable(pa: u64) -> Result<(), String> {
    if pa
        .checked_add(8)
        .is_some_and(|end| end <= mmu::mapped_end())
    {
        Ok(())
    } else {
        Err(format!("{pa:#x} is outside the test host's identity map"))
    }
}

/// The answer of a host call that failed with `e`.
fn err(e: Errno) -> [u64; 5] {
    [0, e.to_x1(), 0, 0, 0]
}

/// A VCPU_RUN answer with exit `reason`.
fn exit(reason: ExitReason) -> [u64; 5] {
    [0, 0, reason as u64, 0, 0]
}

/// The pages a CPU builds its VMs from. They go back to it after each
/// VM's destruction (or are dropped if that went wrong).
struct Arena {
    mem: Mem,
    /// [`CREATE_PAGES`] pages for VM_CREATE.
    meta: u64,
    /// [`TOPUP_PAGES`] pages for VM_TOPUP.
    topup: u64,
    /// Two run pages, shared with the hypervisor for good.
    runs: [u64; 2],
    /// Single pages.
    free: Vec<u64>,
}

impl Arena {
    /// Take the pages from `pool` (CPU 0) and share the run pages.
    fn new(pool: &mut RamPool, mem: Mem) -> Result<Arena, String> {
        let mut take = |n: u64| {
            pool.take_low(n, 1)
                .ok_or_else(|| format!("no {n} free RAM pages"))
        };
        let meta = take(CREATE_PAGES)?;
        let topup = take(TOPUP_PAGES)?;
        let runs = [take(1)?, take(1)?];
        let mut free = Vec::new();
        for _ in 0..ARENA_PAGES {
            free.push(take(1)?);
        }
        for run in runs {
            expect_call(HostCallId::ShareHyp, &[run, 1], [0; 5])?;
        }
        Ok(Arena {
            mem,
            meta,
            topup,
            runs,
            free,
        })
    }

    fn page(&mut self) -> Result<u64, String> {
        self.free
            .pop()
            .ok_or_else(|| String::from("the arena has no free page left"))
    }
}

/// How the host gave a page to a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Given {
    Shared,
    Donated,
}

/// A VM running the fuzz guest.
struct GuestVm {
    handle: u64,
    protected: bool,
    mem: Mem,
    meta: u64,
    topup: u64,
    /// Run page of each vCPU.
    runs: Vec<u64>,
    /// Host page of the status page.
    status: u64,
    /// Every single page given: (pfn, gfn, how).
    pages: Vec<(u64, u64, Given)>,
    /// How many of those the host mapped after faults.
    mapped: usize,
}

impl GuestVm {
    /// A VM with `vcpus` vCPUs and the guest's own pages: the program
    /// (R+X), the status page (RW), the scratch pages (RW, donated). vCPU 0
    /// starts at the program with x0 = [`BOOT_X0`].
    fn create(arena: &mut Arena, protected: bool, vcpus: usize) -> Result<GuestVm, String> {
        use HostCallId as C;
        let mem = arena.mem;
        let code = guest::image();
        if code.len() as u64 > guest::CODE_PAGES * PAGE_SIZE {
            return Err(format!("the fuzz guest is {} bytes long", code.len()));
        }
        // Pages first, so that a failure leaves no VM behind.
        let mut own = Vec::new();
        for _ in 0..guest::OWN_PAGES {
            own.push(arena.page()?);
        }
        let flags = if protected { vm_flags::PROTECTED } else { 0 };
        let created = vm_call(C::VmCreate, &[flags, arena.meta, CREATE_PAGES]);
        let handle = match created {
            Ok(r) => r[2],
            Err(e) => {
                arena.free.extend(own);
                return Err(e);
            }
        };
        let mut vm = GuestVm {
            handle,
            protected,
            mem,
            meta: arena.meta,
            topup: arena.topup,
            runs: arena.runs[..vcpus.min(2)].to_vec(),
            status: own[guest::CODE_PAGES as usize],
            pages: Vec::new(),
            mapped: 0,
        };
        if let Err(e) = vm.build(&own, code) {
            // Best effort: the VM goes with what it was given; the pages it
            // was not given are still the host's.
            let given: Vec<u64> = vm.pages.iter().map(|&(pfn, _, _)| pfn).collect();
            arena
                .free
                .extend(own.iter().filter(|pfn| !given.contains(pfn)));
            let _ = vm.destroy(arena);
            return Err(e);
        }
        Ok(vm)
    }

    /// How the `i`th own page is given: a normal VM's program and status
    /// pages are shared (the host reads them), everything else donated.
    fn own_given(&self, i: u64) -> Given {
        if !self.protected && i <= guest::CODE_PAGES {
            Given::Shared
        } else {
            Given::Donated
        }
    }

    fn build(&mut self, own: &[u64], code: &[u8]) -> Result<(), String> {
        use HostCallId as C;
        vm_call(C::VmTopup, &[self.handle, self.topup, TOPUP_PAGES])?;
        for (i, &run) in self.runs.iter().enumerate() {
            self.mem.fill_page(run, |_| 0)?;
            let index = vm_call(C::VcpuCreate, &[self.handle, run])?[2];
            if index != i as u64 {
                return Err(format!("VCPU_CREATE gave index {index}, not {i}"));
            }
            let (entry, x0) = if i == 0 {
                (guest::CODE_IPA, BOOT_X0)
            } else {
                (guest::CODE_IPA + guest::secondary_offset(), RUN_PAGE_X0)
            };
            self.set_run(i, offset_of!(RunPage, entry), entry)?;
            self.set_run(i, offset_of!(RunPage, x0), x0)?;
        }
        for (i, &pfn) in own.iter().enumerate() {
            let i = i as u64;
            let gfn = (guest::CODE_IPA >> PAGE_SHIFT) + i;
            if i < guest::CODE_PAGES {
                let at = (i * PAGE_SIZE) as usize;
                self.mem.fill_page(pfn, |w| {
                    let from = at + 8 * w as usize;
                    let mut bytes = [0u8; 8];
                    for (k, b) in bytes.iter_mut().enumerate() {
                        *b = code.get(from + k).copied().unwrap_or(0);
                    }
                    u64::from_le_bytes(bytes)
                })?;
            } else if i == guest::CODE_PAGES {
                // The status page: no operation recorded yet in any slot.
                let slot_words = guest::SLOT_SIZE / 8;
                self.mem.fill_page(pfn, |w| {
                    if w % slot_words == rec::ITER / 8 {
                        u64::MAX
                    } else {
                        0
                    }
                })?;
            }
            let prot = if i < guest::CODE_PAGES {
                prot::R | prot::X
            } else {
                prot::R | prot::W
            };
            let given = self.own_given(i);
            let id = match given {
                Given::Shared => C::GuestShare,
                Given::Donated => C::GuestDonate,
            };
            vm_call(id, &[self.handle, pfn, gfn, 1, prot])?;
            self.pages.push((pfn, gfn, given));
        }
        Ok(())
    }

    /// Map a page with contents `word(i)` at `gfn` with `prot`: shared into
    /// a normal VM, donated into a protected one. `Ok(false)` if the VM's
    /// pool is exhausted (-ENOMEM), or the page cap is reached.
    fn map_page(
        &mut self,
        arena: &mut Arena,
        gfn: u64,
        prot: u64,
        word: impl Fn(u64) -> u64,
    ) -> Result<bool, String> {
        use HostCallId as C;
        if self.mapped >= MAPPED_CAP {
            return Ok(false);
        }
        let pfn = arena.page()?;
        self.mem.fill_page(pfn, word)?;
        let (id, given) = if self.protected {
            (C::GuestDonate, Given::Donated)
        } else {
            (C::GuestShare, Given::Shared)
        };
        let r = call(id, &[self.handle, pfn, gfn, 1, prot]);
        if r == err(Errno::ENOMEM) {
            arena.free.push(pfn);
            return Ok(false);
        }
        if r != [0; 5] {
            arena.free.push(pfn);
            return Err(format!(
                "{} of a page at gfn {gfn:#x} answered {}",
                id.name(),
                hex(&r)
            ));
        }
        self.pages.push((pfn, gfn, given));
        self.mapped += 1;
        Ok(true)
    }

    /// VM_DESTROY, then every page back: RECLAIM of the metadata and of
    /// every donated page, PAGE_QUERY of every page (host, OWNED, RAM), and
    /// the reclaimed pages read back as zeros. The pages go back to the
    /// arena only if all of that holds.
    fn destroy(self, arena: &mut Arena) -> Result<(), String> {
        use HostCallId as C;
        expect_call(C::VmDestroy, &[self.handle], [0; 5])?;
        expect_call(C::Reclaim, &[self.meta, CREATE_PAGES], [0; 5])?;
        expect_call(C::Reclaim, &[self.topup, TOPUP_PAGES], [0; 5])?;
        for &(pfn, _, given) in &self.pages {
            if given == Given::Donated {
                expect_call(C::Reclaim, &[pfn, 1], [0; 5])?;
            }
        }
        let metadata = (self.meta..self.meta + CREATE_PAGES)
            .chain(self.topup..self.topup + TOPUP_PAGES)
            .map(|pfn| (pfn, true));
        let pages = self
            .pages
            .iter()
            .map(|&(pfn, _, given)| (pfn, given == Given::Donated));
        for (pfn, scrubbed) in metadata.chain(pages) {
            expect_call(C::PageQuery, &[pfn], [0; 5])
                .map_err(|e| format!("after VM_DESTROY and RECLAIM: {e}"))?;
            if scrubbed {
                let pa = pfn << PAGE_SHIFT;
                // Whatever the guest or the hypervisor left there is gone.
                arch::dcache_clean_invalidate(pa as usize, (pa + PAGE_SIZE) as usize);
                for off in [0, 8, PAGE_SIZE / 2, PAGE_SIZE - 8] {
                    let v = self.mem.read(pa + off)?;
                    if v != 0 {
                        return Err(format!(
                            "reclaimed page {pfn:#x} holds {v:#x} at offset {off:#x}, not 0"
                        ));
                    }
                }
            }
        }
        for run in &self.runs {
            // Still shared with the hypervisor, no longer pinned.
            expect_call(C::PageQuery, &[*run], [0, 0, 0, 1, 0])?;
        }
        arena.free.extend(self.pages.iter().map(|&(pfn, _, _)| pfn));
        Ok(())
    }

    fn run_pa(&self, vcpu: usize, off: usize) -> u64 {
        (self.runs.get(vcpu).copied().unwrap_or(0) << PAGE_SHIFT) + off as u64
    }

    fn run_field(&self, vcpu: usize, off: usize) -> u64 {
        self.mem.read(self.run_pa(vcpu, off)).unwrap_or(u64::MAX)
    }

    fn set_run(&self, vcpu: usize, off: usize, v: u64) -> Result<(), String> {
        self.mem.write(self.run_pa(vcpu, off), v)
    }

    /// VCPU_RUN of `vcpu`.
    /// VCPU_RUN of `vcpu`, again after each INTERRUPTED exit: the
    /// hypervisor's time slice may end any run (10 ms, more often when the
    /// machine is loaded), and nothing here waits for one.
    fn run(&self, vcpu: usize) -> [u64; 5] {
        loop {
            let r = call(HostCallId::VcpuRun, &[self.handle, vcpu as u64]);
            if r != [0, 0, ExitReason::Interrupted as u64, 0, 0] {
                return r;
            }
        }
    }

    /// x0..x6 of the last HVC exit.
    fn hvc_args(&self, vcpu: usize) -> [u64; 7] {
        core::array::from_fn(|k| self.run_field(vcpu, offset_of!(RunPage, hvc_args) + 8 * k))
    }

    /// Write x0..x3 for the guest's next run (its pending HVC's results).
    fn set_results(&self, vcpu: usize, regs: [u64; 4]) -> Result<(), String> {
        for (k, v) in regs.into_iter().enumerate() {
            self.set_run(vcpu, offset_of!(RunPage, hvc_results) + 8 * k, v)?;
        }
        Ok(())
    }

    /// The MMIO or MEM_FAULT details of the last exit.
    fn fault(&self, vcpu: usize) -> Fault {
        let f = |off| self.run_field(vcpu, off);
        Fault {
            ipa: f(offset_of!(RunPage, fault_ipa)),
            flags: f(offset_of!(RunPage, fault_flags)),
            size: f(offset_of!(RunPage, fault_size)),
            esr: f(offset_of!(RunPage, fault_esr)),
            data: f(offset_of!(RunPage, fault_data)),
        }
    }

    /// The operation the guest on `vcpu` recorded last.
    fn record(&self, vcpu: usize) -> Result<Record, String> {
        let base = (self.status << PAGE_SHIFT) + guest::SLOT_SIZE * vcpu as u64;
        arch::dcache_clean_invalidate(base as usize, (base + guest::SLOT_SIZE) as usize);
        let w = |off: u64| self.mem.read(base + off);
        let mut args = [0; 6];
        for (k, a) in args.iter_mut().enumerate() {
            *a = w(rec::ARGS + 8 * k as u64)?;
        }
        Ok(Record {
            iter: w(rec::ITER)?,
            state: w(rec::STATE)?,
            kind: w(rec::KIND)?,
            addr: w(rec::ADDR)?,
            args,
            smc: w(rec::CONDUIT)? != 0,
        })
    }

    /// `r` must be an HVC exit with the guest's [`guest::FG_NEXT`] report:
    /// its x1..x6.
    fn report(&self, vcpu: usize, r: [u64; 5]) -> Result<[u64; 6], String> {
        self.expect_exit(vcpu, r, ExitReason::Hvc)?;
        let args = self.hvc_args(vcpu);
        if args[0] == guest::FG_NEXT {
            Ok([args[1], args[2], args[3], args[4], args[5], args[6]])
        } else {
            Err(format!(
                "vCPU {vcpu} exited with HVC {}, not the guest's report",
                hex(&args)
            ))
        }
    }

    /// Give `vcpu` its next command and run it: the VCPU_RUN answer.
    fn command(&self, vcpu: usize, cmd: [u64; 4]) -> Result<[u64; 5], String> {
        self.set_results(vcpu, cmd)?;
        Ok(self.run(vcpu))
    }

    /// A command that must end with the guest's report (of that command).
    fn step(&self, vcpu: usize, cmd: [u64; 4]) -> Result<[u64; 6], String> {
        let r = self.command(vcpu, cmd)?;
        let report = self.report(vcpu, r)?;
        if report[0] != cmd[0] & 0xff {
            return Err(format!(
                "the guest reported {} for command {}",
                hex(&report),
                hex(&cmd)
            ));
        }
        Ok(report)
    }

    /// Guest call `x0`..`x3` (HVC) on `vcpu`: its x0..x3.
    fn guest_call(
        &self,
        vcpu: usize,
        x0: u64,
        x1: u64,
        x2: u64,
        x3: u64,
    ) -> Result<[u64; 4], String> {
        if x3 >> 56 != 0 {
            return Err(format!("x3 {x3:#x} does not fit in a command"));
        }
        let r = self.step(vcpu, [op::CALL | (x3 << 8), x0, x1, x2])?;
        Ok([r[1], r[2], r[3], r[4]])
    }

    /// Guest call `x0`..`x2` that must answer x0 = `want`.
    fn expect_guest_call(
        &self,
        vcpu: usize,
        what: &str,
        regs: [u64; 3],
        want: u64,
    ) -> Result<(), String> {
        let got = self.guest_call(vcpu, regs[0], regs[1], regs[2], 0)?[0];
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "{what}: {} {} answered x0 = {got:#x}, want {want:#x}",
                call_name(regs[0]),
                hex(&regs[1..])
            ))
        }
    }

    /// `r` must be exit `want`, also in the run page.
    fn expect_exit(&self, vcpu: usize, r: [u64; 5], want: ExitReason) -> Result<(), String> {
        let in_page = self.run_field(vcpu, offset_of!(RunPage, exit_reason));
        if r == exit(want) && in_page == want as u64 {
            Ok(())
        } else {
            let more = if r[2] == ExitReason::Hvc as u64 {
                format!(" (HVC {})", hex(&self.hvc_args(vcpu)))
            } else {
                String::new()
            };
            Err(format!(
                "VCPU_RUN of VM {} vCPU {vcpu} answered {}{more} (run page exit reason {in_page}), not exit {}",
                self.handle,
                hex(&r),
                want.name()
            ))
        }
    }

    /// The last exit must be a MEM_FAULT (or MMIO) exit at `ipa` with
    /// `flags` (SYNDROME_VALID added for a normal VM); a protected VM's host
    /// sees no syndrome and no data.
    fn expect_fault(&self, vcpu: usize, ipa: u64, flags: u64) -> Result<Fault, String> {
        let f = self.fault(vcpu);
        let flags = if self.protected {
            flags
        } else {
            flags | fault_flags::SYNDROME_VALID
        };
        let hidden = !self.protected || (f.esr == 0 && f.data == 0);
        if f.ipa == ipa && f.flags == flags && hidden {
            Ok(f)
        } else {
            Err(format!(
                "fault details {f:x?}, want IPA {ipa:#x}, flags {flags:#x}{}",
                if self.protected {
                    ", no ESR or data (protected VM)"
                } else {
                    ""
                }
            ))
        }
    }
}

/// Host call `id` with `args`, which must succeed (x0 = 0, x1 = 0).
fn vm_call(id: HostCallId, args: &[u64]) -> Result<[u64; 5], String> {
    let r = call(id, args);
    if r[0] == 0 && r[1] == 0 {
        Ok(r)
    } else {
        Err(format!("{} {} answered {}", id.name(), hex(args), hex(&r)))
    }
}

/// The MMIO/MEM_FAULT fields of a run page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fault {
    ipa: u64,
    flags: u64,
    size: u64,
    esr: u64,
    data: u64,
}

/// An operation as the guest recorded it ([`rec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    iter: u64,
    state: u64,
    kind: u64,
    addr: u64,
    args: [u64; 6],
    smc: bool,
}

impl Record {
    /// Whether the record is a call of one of `ids`.
    fn is_call(&self, ids: &[u64]) -> bool {
        self.kind == kind::CALL && ids.contains(&self.addr)
    }

    fn describe(&self) -> String {
        match self.kind {
            kind::CALL => format!(
                "{} {} {}",
                if self.smc { "SMC" } else { "HVC" },
                call_name(self.addr),
                hex(&self.args)
            ),
            kind::READ | kind::WRITE => format!(
                "{}-byte {} {} IPA {:#x}{}",
                self.args[0],
                if self.kind == kind::READ {
                    "load from"
                } else {
                    "store to"
                },
                category_name(self.args[2]),
                self.addr,
                if self.kind == kind::WRITE {
                    format!(" of {:#x}", self.args[1])
                } else {
                    String::new()
                }
            ),
            kind::EXEC => format!(
                "branch to {} IPA {:#x}",
                category_name(self.args[2]),
                self.addr
            ),
            kind::WFI => String::from("WFI"),
            k => format!("unknown operation kind {k:#x}"),
        }
    }
}

/// A function ID with its ABI name.
fn call_name(id: u64) -> String {
    if let Some(c) = GuestCallId::from_id(id) {
        format!("{}({id:#x})", c.name())
    } else if let Some(c) = HostCallId::from_id(id) {
        format!("host call {}({id:#x})", c.name())
    } else {
        format!("{id:#x}")
    }
}

fn category_name(c: u64) -> &'static str {
    match c {
        category::SCRATCH => "scratch",
        category::GUARD => "guard-page",
        category::NEAR => "near",
        category::FAR => "far",
        category::BEYOND => "beyond-40-bit",
        category::UNALIGNED => "misaligned",
        _ => "unknown-category",
    }
}

/// Why a fuzzing VM stopped.
enum Outcome {
    /// The guest made all its operations.
    Done,
    /// The VM ended at operation `iter - 1`: go on from `iter` with the
    /// generator state `state`.
    Resume { state: u64, iter: u64 },
    /// Nothing sensible can follow (the failure is reported).
    Stop,
}

/// What one CPU's fuzzing saw.
#[derive(Debug, Default)]
struct FuzzReport {
    /// Operations made (the iteration the last VM reached).
    ops: u64,
    /// VMs created.
    vms: u64,
    /// Exits by reason (index = the reason's value, 0 = anything else).
    exits: [u64; 8],
    /// VMs ended by SYSTEM_OFF, SYSTEM_RESET, CPU_OFF, a fault.
    ended: [u64; 4],
    /// Pages the host mapped after faults.
    mapped: u64,
    /// Failed checks.
    failed: u32,
    /// The first [`MAX_MESSAGES`] of them.
    messages: Vec<String>,
}

impl FuzzReport {
    fn fail(&mut self, message: String) {
        self.failed = self.failed.saturating_add(1);
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message);
        }
    }

    fn line(&self) -> String {
        let names = [
            "other",
            "MMIO",
            "MEM_FAULT",
            "HVC",
            "SYSTEM_EVENT",
            "INTERRUPTED",
            "WFI",
            "FATAL",
        ];
        let exits: Vec<String> = names
            .iter()
            .zip(self.exits)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        format!(
            "{} operations in {} VMs (ended by SYSTEM_OFF {}, SYSTEM_RESET {}, CPU_OFF {}, faults {}); {} pages mapped after faults; exits: {}",
            self.ops,
            self.vms,
            self.ended[0],
            self.ended[1],
            self.ended[2],
            self.ended[3],
            self.mapped,
            exits.join(", ")
        )
    }
}

/// A small xorshift64 generator for the host's own choices.
struct HostRng(u64);

impl HostRng {
    fn coin(&mut self) -> bool {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x & 1 != 0
    }
}

/// Part 1 on one CPU: [`OPS`] random operations in as many VMs as it
/// takes.
fn fuzz_cpu(cpu: usize, arena: &mut Arena, report: &mut FuzzReport) {
    let mut state = SEEDS[cpu];
    let mut iter = 0;
    let mut protected = cpu == 0;
    let mut rng = HostRng(SEEDS[cpu] | 1);
    while iter < OPS {
        if report.vms >= MAX_VMS {
            report.fail(format!(
                "CPU{cpu}: {MAX_VMS} VMs made only {iter} of {OPS} operations"
            ));
            return;
        }
        let mut vm = match GuestVm::create(arena, protected, 1) {
            Ok(vm) => vm,
            Err(e) => {
                report.fail(format!("CPU{cpu}: creating a VM: {e}"));
                return;
            }
        };
        report.vms += 1;
        let outcome = fuzz_vm(cpu, &mut vm, arena, state, iter, &mut rng, report);
        let (handle, kind) = (vm.handle, vm_kind(protected));
        if let Err(e) = vm.destroy(arena) {
            report.fail(format!("CPU{cpu} VM {handle} ({kind}): destroying it: {e}"));
            return;
        }
        match outcome {
            Outcome::Done => {
                report.ops = OPS;
                return;
            }
            Outcome::Resume { state: s, iter: i } => {
                state = s;
                iter = i;
                report.ops = i;
            }
            Outcome::Stop => return,
        }
        protected = !protected;
    }
}

fn vm_kind(protected: bool) -> &'static str {
    if protected {
        "protected"
    } else {
        "normal"
    }
}

/// Run one fuzzing VM from iteration `start` with generator `state` until
/// its guest is done or the VM ends.
fn fuzz_vm(
    cpu: usize,
    vm: &mut GuestVm,
    arena: &mut Arena,
    state: u64,
    start: u64,
    rng: &mut HostRng,
    report: &mut FuzzReport,
) -> Outcome {
    let who = format!("CPU{cpu} VM {} ({})", vm.handle, vm_kind(vm.protected));
    if let Err(e) = boot(vm) {
        report.fail(format!("{who}: boot: {e}"));
        return Outcome::Stop;
    }
    let protected = if vm.protected {
        guest::flags::PROTECTED
    } else {
        0
    };
    let flags = protected | (1 << guest::flags::VCPUS_SHIFT);
    if let Err(e) = vm.set_results(0, [op::FUZZ, state, start | (OPS << 32), flags]) {
        report.fail(format!("{who}: {e}"));
        return Outcome::Stop;
    }
    let mut fuzz = VmFuzz {
        vm,
        arena,
        start,
        rng,
        report,
        who,
    };
    for _ in 0..MAX_EXITS {
        let r = fuzz.vm.run(0);
        let reason = ExitReason::from_u64(r[2]).filter(|_| [r[0], r[1], r[3], r[4]] == [0; 4]);
        fuzz.report.exits[reason.map_or(0, |e| e as usize)] += 1;
        let step = match reason {
            None => Err(format!("VCPU_RUN answered {}", hex(&r))),
            Some(ExitReason::Hvc) => fuzz.on_hvc(),
            Some(ExitReason::Mmio) => fuzz.on_mmio(),
            Some(ExitReason::MemFault) => fuzz.on_mem_fault(),
            Some(ExitReason::SystemEvent) => fuzz.on_system_event(),
            Some(ExitReason::Wfi) => fuzz.on_wfi(),
            Some(ExitReason::Interrupted) => Ok(Next::Run),
            Some(ExitReason::Fatal) => Err(String::from("FATAL exit")),
        };
        match step {
            Ok(Next::Run) => {}
            Ok(Next::Done) => return Outcome::Done,
            Ok(Next::End(why)) => {
                fuzz.report.ended[why] += 1;
                return fuzz.resume();
            }
            Err(e) => {
                let during = match fuzz.vm.record(0) {
                    Ok(rec) if rec.iter != u64::MAX => {
                        format!("op {}, {}", rec.iter, rec.describe())
                    }
                    Ok(_) => String::from("before the first operation"),
                    Err(e) => format!("record unreadable: {e}"),
                };
                fuzz.report.fail(format!("{} {during}: {e}", fuzz.who));
                return fuzz.resume();
            }
        }
    }
    fuzz.report
        .fail(format!("{}: {MAX_EXITS} exits without finishing", fuzz.who));
    fuzz.resume()
}

/// The first run of a VM's vCPU 0: the guest's boot report.
fn boot(vm: &GuestVm) -> Result<(), String> {
    let r = vm.run(0);
    let b = vm.report(0, r)?;
    let share = if vm.protected { 0 } else { INVALID_PARAMETER };
    if b[0] != guest::BOOT_PRIMARY
        || b[1] != BOOT_X0
        || b[2] & MPIDR_AFFINITY != 0
        || b[3] != share
        || b[4] != 0
    {
        return Err(format!(
            "the guest reported {}, want [{:#x}, x0 {BOOT_X0:#x}, MPIDR affinity 0, MEM_SHARE of its status page {share:#x}, 0 failed MMIO_GUARDs]",
            hex(&b),
            guest::BOOT_PRIMARY
        ));
    }
    Ok(())
}

/// What follows an exit.
enum Next {
    Run,
    Done,
    /// The VM is over, for the reason with this index in
    /// [`FuzzReport::ended`].
    End(usize),
}

/// A fuzzing VM's state between exits.
struct VmFuzz<'a> {
    vm: &'a mut GuestVm,
    arena: &'a mut Arena,
    start: u64,
    rng: &'a mut HostRng,
    report: &'a mut FuzzReport,
    who: String,
}

impl VmFuzz<'_> {
    /// Where the next VM resumes after this one ended.
    fn resume(&mut self) -> Outcome {
        match self.vm.record(0) {
            Ok(r) if (self.start..OPS).contains(&r.iter) => Outcome::Resume {
                state: r.state,
                iter: r.iter + 1,
            },
            Ok(r) => {
                self.report.fail(format!(
                    "{}: the VM ended with recorded iteration {:#x}, outside {}..{OPS}",
                    self.who, r.iter, self.start
                ));
                Outcome::Stop
            }
            Err(e) => {
                self.report.fail(format!("{}: {e}", self.who));
                Outcome::Stop
            }
        }
    }

    fn violation(&mut self, args: [u64; 7]) {
        let [_, iter, code, id, got, want, detail] = args;
        let what = match code {
            violation::CLOBBERED => {
                format!("x{detail} changed across the call: {want:#x} before, {got:#x} after")
            }
            violation::X0 => format!("x0 = {got:#x}, want {want:#x}"),
            violation::X1 => format!("x1 = {got:#x}, want {want:#x}"),
            violation::X2 => format!("x2 = {got:#x}, want {want:#x}"),
            violation::X3 => format!("x3 = {got:#x}, want {want:#x}"),
            violation::X0_EITHER => format!("x0 = {got:#x}, want {want:#x} or {detail:#x}"),
            violation::RETURNED => format!("returned (x0 / ESR {got:#x}), which it must not"),
            violation::READ_VALUE => format!("read {got:#x}, want {want:#x}"),
            violation::EL1_EXCEPTION => {
                format!("ESR_EL1 after it {got:#x}, want {want:#x} (0: no exception)")
            }
            _ => format!("violation code {code:#x}: {}", hex(&args)),
        };
        let op = match self.vm.record(0) {
            Ok(r) if r.iter == iter => r.describe(),
            _ => format!("function ID or address {id:#x}"),
        };
        self.report
            .fail(format!("{} op {iter}: {op}: {what}", self.who));
    }

    fn on_hvc(&mut self) -> Result<Next, String> {
        let args = self.vm.hvc_args(0);
        match args[0] {
            guest::FG_VIOLATION => {
                self.violation(args);
                Ok(Next::Run)
            }
            guest::FG_UNEXPECTED => Err(format!(
                "unexpected exception in the guest: ESR {:#x} ELR {:#x} FAR {:#x} vector {}",
                args[1], args[2], args[3], args[4]
            )),
            guest::FG_NEXT if args[1] == op::FUZZ && args[2] == OPS => Ok(Next::Done),
            guest::FG_NEXT => Err(format!("the guest reported {}", hex(&args[1..]))),
            id => {
                // A forwarded call: exactly the one the guest made, and not
                // one the hypervisor must answer itself.
                let r = self.vm.record(0)?;
                if r.kind != kind::CALL || r.addr != id || r.args != args[1..] {
                    return Err(format!(
                        "HVC exit with {}, not the call the guest made",
                        hex(&args)
                    ));
                }
                if GuestCallId::from_id(id).is_some() || is_host_call_range(id) {
                    return Err(String::from(
                        "forwarded to the host, but the hypervisor must answer it",
                    ));
                }
                let answer = guest::forwarded_answer(&args);
                self.vm.set_results(0, answer)?;
                Ok(Next::Run)
            }
        }
    }

    fn on_mmio(&mut self) -> Result<Next, String> {
        let r = self.vm.record(0)?;
        let f = self.vm.fault(0);
        let write = r.kind == kind::WRITE;
        if !(r.kind == kind::READ || write) {
            return Err(format!("MMIO exit {f:x?}"));
        }
        let size = r.args[0];
        let data = if write { mask(r.args[1], size) } else { 0 };
        let flags = if write { fault_flags::WRITE } else { 0 };
        let want = Fault {
            ipa: r.addr,
            flags,
            size,
            esr: 0,
            data,
        };
        if f != want {
            return Err(format!("MMIO exit {f:x?}, want {want:x?}"));
        }
        if !write {
            self.vm
                .set_run(0, offset_of!(RunPage, mmio_read_data), read_data(r.addr))?;
        }
        Ok(Next::Run)
    }

    fn on_mem_fault(&mut self) -> Result<Next, String> {
        let r = self.vm.record(0)?;
        let (flags, size) = match r.kind {
            kind::READ => (0, r.args[0]),
            kind::WRITE => (fault_flags::WRITE, r.args[0]),
            kind::EXEC => (fault_flags::EXEC, 4),
            _ => return Err(format!("MEM_FAULT exit {:x?}", self.vm.fault(0))),
        };
        let f = self.vm.expect_fault(0, r.addr, flags)?;
        if !self.vm.protected && r.kind != kind::EXEC {
            let data = if r.kind == kind::WRITE {
                mask(r.args[1], size)
            } else {
                0
            };
            if f.size != size || f.data != data || f.esr >> 26 != 0x24 {
                return Err(format!(
                    "MEM_FAULT {f:x?}: want size {size}, data {data:#x}, a data-abort ESR"
                ));
            }
        }
        let gfn = r.addr >> PAGE_SHIFT;
        let ours = self.vm.pages.iter().any(|&(_, g, _)| g == gfn);
        let cat = r.args[2];
        match (r.kind, cat) {
            (kind::EXEC, category::NEAR) => {
                if ours {
                    return Err(String::from("instruction fetch fault on a page mapped R+X"));
                }
                self.map_or_end(gfn, prot::R | prot::X, |_| guest::RET_PAIR)
            }
            // Not executable, or nothing the host maps.
            (kind::EXEC, _) => Ok(Next::End(3)),
            (_, category::NEAR) if ours => {
                if r.kind == kind::WRITE {
                    // The host mapped it read-only.
                    Ok(Next::End(3))
                } else {
                    Err(String::from("load fault on a page mapped readable"))
                }
            }
            (_, category::NEAR) if self.vm.protected => {
                if r.kind == kind::READ {
                    let page = gfn << PAGE_SHIFT;
                    self.map_or_end(gfn, prot::R, |i| read_data(page + 8 * i))
                } else {
                    Ok(Next::End(3))
                }
            }
            (_, category::NEAR) if r.kind == kind::READ && self.rng.coin() => {
                let page = gfn << PAGE_SHIFT;
                self.map_or_end(gfn, prot::R, |i| read_data(page + 8 * i))
            }
            (_, category::NEAR | category::FAR | category::BEYOND) => {
                if self.vm.protected {
                    // Nothing the host can complete or map.
                    Ok(Next::End(3))
                } else {
                    // A normal VM's access is emulated like MMIO.
                    if r.kind == kind::READ {
                        self.vm.set_run(
                            0,
                            offset_of!(RunPage, mmio_read_data),
                            read_data(r.addr),
                        )?;
                    }
                    Ok(Next::Run)
                }
            }
            _ => Err(format!(
                "MEM_FAULT exit {f:x?} for memory the guest may access"
            )),
        }
    }

    /// Map a page at `gfn` and run on, or end the VM when the host cannot.
    fn map_or_end(
        &mut self,
        gfn: u64,
        prot: u64,
        word: impl Fn(u64) -> u64,
    ) -> Result<Next, String> {
        if self.vm.map_page(self.arena, gfn, prot, word)? {
            self.report.mapped += 1;
            Ok(Next::Run)
        } else {
            Ok(Next::End(3))
        }
    }

    fn on_system_event(&mut self) -> Result<Next, String> {
        let r = self.vm.record(0)?;
        let t = self.vm.run_field(0, offset_of!(RunPage, system_event));
        let (want, why) = if r.is_call(&[GuestCallId::PsciSystemOff.id().into()]) {
            (system_event::OFF, 0)
        } else if r.is_call(&[GuestCallId::PsciSystemReset.id().into()]) {
            (system_event::RESET, 1)
        } else {
            return Err(format!("SYSTEM_EVENT exit (type {t})"));
        };
        if t == want {
            Ok(Next::End(why))
        } else {
            Err(format!("SYSTEM_EVENT of type {t}, want {want}"))
        }
    }

    fn on_wfi(&mut self) -> Result<Next, String> {
        let r = self.vm.record(0)?;
        if r.kind == kind::WFI || r.is_call(&[0xC400_0001, 0x8400_0001]) {
            return Ok(Next::Run);
        }
        if !r.is_call(&[GuestCallId::PsciCpuOff.id().into()]) {
            return Err(String::from("WFI exit"));
        }
        // CPU_OFF: the vCPU stays off.
        for _ in 0..2 {
            let again = self.vm.run(0);
            self.vm
                .expect_exit(0, again, ExitReason::Wfi)
                .map_err(|e| format!("after CPU_OFF: {e}"))?;
        }
        let after = self.vm.record(0)?;
        if after != r {
            return Err(format!(
                "the vCPU ran after CPU_OFF: its record is now {after:x?}"
            ));
        }
        Ok(Next::End(2))
    }
}

/// `v` cut to `size` bytes.
fn mask(v: u64, size: u64) -> u64 {
    if size >= 8 {
        v
    } else {
        v & ((1 << (8 * size)) - 1)
    }
}

/// The data the host gives a load at `ipa` (the hypervisor cuts it to the
/// access's size): [`guest::expected_read`]'s word.
fn read_data(ipa: u64) -> u64 {
    guest::expected_read(ipa, 8)
}

// CPU 1's side: its job (set before CPU_ON), whether it started, its
// report (set when done), and the VCPU_RUN service it offers after that.
static CPU1_JOB: AtomicPtr<Arena> = AtomicPtr::new(core::ptr::null_mut());
static CPU1_STARTED: AtomicBool = AtomicBool::new(false);
static CPU1_REPORT: AtomicPtr<FuzzReport> = AtomicPtr::new(core::ptr::null_mut());
static REMOTE_SEQ: AtomicU64 = AtomicU64::new(0);
static REMOTE_HANDLE: AtomicU64 = AtomicU64::new(0);
static REMOTE_VCPU: AtomicU64 = AtomicU64::new(0);
static REMOTE_DONE: AtomicU64 = AtomicU64::new(0);
static REMOTE_ANSWER: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// CPU 1, from `rust_secondary_main`: fuzz with its arena, publish the
/// report, then make VCPU_RUN calls for CPU 0 ([`remote_run`]) for ever.
pub fn secondary() -> ! {
    CPU1_STARTED.store(true, Ordering::Release);
    let job = CPU1_JOB.swap(core::ptr::null_mut(), Ordering::Acquire);
    let mut report = FuzzReport::default();
    if job.is_null() {
        report.fail(String::from("CPU1: no arena"));
    } else {
        // SAFETY: CPU 0 stored a pointer from `Box::into_raw` before CPU_ON
        // and never touches it again; the swap above took it.
        let mut arena = unsafe { Box::from_raw(job) };
        fuzz_cpu(1, &mut arena, &mut report);
    }
    CPU1_REPORT.store(Box::into_raw(Box::new(report)), Ordering::Release);
    let mut served = 0;
    loop {
        let seq = REMOTE_SEQ.load(Ordering::Acquire);
        if seq == served {
            core::hint::spin_loop();
            continue;
        }
        let handle = REMOTE_HANDLE.load(Ordering::Relaxed);
        let vcpu = REMOTE_VCPU.load(Ordering::Relaxed);
        // Time slices end runs now and then: run again, as any host would.
        let r = loop {
            let r = call(HostCallId::VcpuRun, &[handle, vcpu]);
            if r != [0, 0, ExitReason::Interrupted as u64, 0, 0] {
                break r;
            }
        };
        for (slot, v) in REMOTE_ANSWER.iter().zip(r) {
            slot.store(v, Ordering::Relaxed);
        }
        served = seq;
        REMOTE_DONE.store(seq, Ordering::Release);
    }
}

/// Ask CPU 1 for VCPU_RUN of `vcpu` of `vm` (its run page ready); collect
/// the answer with [`remote_wait`].
fn remote_run(vm: &GuestVm, vcpu: usize) -> u64 {
    REMOTE_HANDLE.store(vm.handle, Ordering::Relaxed);
    REMOTE_VCPU.store(vcpu as u64, Ordering::Relaxed);
    REMOTE_SEQ.fetch_add(1, Ordering::AcqRel) + 1
}

/// CPU 1's answer to request `seq`.
fn remote_wait(seq: u64, seconds: u64) -> Result<[u64; 5], String> {
    if wait_until(seconds, || REMOTE_DONE.load(Ordering::Acquire) == seq) {
        Ok(core::array::from_fn(|i| {
            REMOTE_ANSWER[i].load(Ordering::Relaxed)
        }))
    } else {
        Err(format!(
            "CPU 1's VCPU_RUN did not return within {seconds} s"
        ))
    }
}

/// Spin until `done()` or `seconds` of the generic counter pass; whether
/// it became true.
fn wait_until(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = arch::cntvct();
    let limit = arch::cntfrq_el0().max(1).saturating_mul(seconds);
    while !done() {
        if arch::cntvct().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// The checks' tally, printing each failure.
struct Checks(Tally);

impl Checks {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.0.passed += 1,
            Err(why) => {
                println!("abifuzz: FAILED {what}: {why}");
                self.0.failed += 1;
            }
        }
    }
}

/// The mode: returns whether every check passed.
pub fn run(pool: &mut RamPool, cpus: fdt::Cpus, psci_hvc: bool) -> bool {
    let mut checks = Checks(Tally::default());
    checks.check("the guest's function-ID table matches ABI.md 2", id_table());
    let arenas = (Arena::new(pool, Mem::Checked), Arena::new(pool, Mem::Raw));
    let (mut arena, arena1) = match arenas {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            checks.check("arenas", Err(e));
            println!("{}", scenario::summary_line(&checks.0));
            return false;
        }
    };
    println!(
        "abifuzz: 2 CPUs, {OPS} random guest operations each; seeds {:#x} {:#x}",
        SEEDS[0], SEEDS[1]
    );

    // Part 1, on both CPUs.
    let started = match cpus.get(1) {
        Some(mpidr) => {
            CPU1_JOB.store(Box::into_raw(Box::new(arena1)), Ordering::Release);
            let entry = entry::secondary_entry as *const () as u64;
            match arch::psci_cpu_on(psci_hvc, mpidr, entry, CPU1_CONTEXT) {
                0 => Ok(()),
                status => Err(format!(
                    "PSCI CPU_ON of MPIDR {mpidr:#x} returned {status:#x}"
                )),
            }
        }
        None => Err(format!(
            "the device tree lists {} CPU(s); this mode needs two",
            cpus.len()
        )),
    };
    let mut cpu0 = FuzzReport::default();
    fuzz_cpu(0, &mut arena, &mut cpu0);
    let started = started.and_then(|()| {
        wait_until(CPU1_SECONDS, || CPU1_STARTED.load(Ordering::Acquire))
            .then_some(())
            .ok_or_else(|| format!("CPU 1 did not start within {CPU1_SECONDS} s"))
    });
    let cpu1 = started.clone().and_then(|()| {
        if wait_until(CPU1_SECONDS, || {
            !CPU1_REPORT.load(Ordering::Acquire).is_null()
        }) {
            let p = CPU1_REPORT.swap(core::ptr::null_mut(), Ordering::Acquire);
            // SAFETY: CPU 1 stored a pointer from `Box::into_raw` and never
            // touches it again; the swap above took it.
            Ok(unsafe { Box::from_raw(p) })
        } else {
            Err(format!("CPU 1 did not finish within {CPU1_SECONDS} s"))
        }
    });
    checks.check("CPU 1 started", started);
    // Once done, CPU 1 runs vCPUs for part 4.
    let cpu1_serves = cpu1.is_ok();
    for (name, report) in [("CPU0", Ok(Box::new(cpu0))), ("CPU1", cpu1)] {
        let result = report.and_then(|r| {
            println!("abifuzz: {name}: {}", r.line());
            for m in &r.messages {
                println!("abifuzz: {name}: {m}");
            }
            if r.failed > 0 {
                Err(format!("{} failed checks (the first above)", r.failed))
            } else if r.ops != OPS {
                Err(format!("{} of {OPS} operations", r.ops))
            } else {
                Ok(())
            }
        });
        checks.check(&format!("{name}: random guest calls and accesses"), result);
    }

    // Part 2.
    for protected in [false, true] {
        for &(name, test) in FAULT_TESTS {
            let what = format!("{name} ({} VM)", vm_kind(protected));
            checks.check(&what, in_vm(&mut arena, protected, test));
        }
    }

    // Part 3.
    let pmu = guest::pmu_version();
    for protected in [false, true] {
        for (name, which) in [
            ("PMCR_EL0 read", guest::sysreg::PMCR_READ),
            ("CNTP_CTL_EL0 read", guest::sysreg::CNTP_CTL_READ),
            ("CNTP_CTL_EL0 write", guest::sysreg::CNTP_CTL_WRITE),
            ("DBGBVR0_EL1 read", guest::sysreg::DBGBVR0_READ),
            ("OSLSR_EL1 read", guest::sysreg::OSLSR_READ),
        ] {
            if which == guest::sysreg::PMCR_READ && !(1..=14).contains(&pmu) {
                println!("abifuzz: no PMU (ID_AA64DFR0_EL1.PMUVer {pmu:#x}): {name} skipped");
                checks.0.skipped += 1;
                continue;
            }
            let what = format!(
                "{name} is FATAL, for good; the pages come back ({} VM)",
                vm_kind(protected)
            );
            let result = in_vm(&mut arena, protected, |vm, _| unhandled_trap(vm, which));
            checks.check(&what, result);
        }
    }

    // Part 4.
    for protected in [false, true] {
        let what = format!(
            "guest SMP: CPU_ON, AFFINITY_INFO, CPU_OFF across CPUs, EBUSY while running ({} VM)",
            vm_kind(protected)
        );
        let result = if cpu1_serves {
            smp(&mut arena, protected)
        } else {
            Err(String::from("CPU 1 is not available"))
        };
        checks.check(&what, result);
    }

    checks.check(
        "HYP_VERSION still answers 1.0",
        expect_call(HostCallId::HypVersion, &[], [0, 0, 0x1_0000, 0, 0]),
    );
    println!("{}", scenario::summary_line(&checks.0));
    checks.0.failed == 0
}

/// The guest's assembled table is ABI.md 2's guest calls (with PSCI's
/// SMC32 forms), each once.
fn id_table() -> Result<(), String> {
    let table = guest::assembled_ids();
    if table != guest::GUEST_CALL_IDS {
        return Err(format!("assembled {}", hex(&table)));
    }
    let mut want: Vec<u64> = GuestCallId::ALL
        .iter()
        .flat_map(|c| [Some(c.id()), c.smc32_alias()])
        .flatten()
        .map(u64::from)
        .collect();
    let mut have = table.to_vec();
    want.sort_unstable();
    have.sort_unstable();
    if want == have {
        Ok(())
    } else {
        Err(format!(
            "the table {} is not host-interface's {}",
            hex(&have),
            hex(&want)
        ))
    }
}

/// A test in a fresh VM.
type VmTest = fn(&mut GuestVm, &mut Arena) -> Result<(), String>;

/// Run `test` in a fresh booted one-vCPU VM, then destroy it and check its
/// pages.
fn in_vm(
    arena: &mut Arena,
    protected: bool,
    test: impl FnOnce(&mut GuestVm, &mut Arena) -> Result<(), String>,
) -> Result<(), String> {
    let mut vm = GuestVm::create(arena, protected, 1)?;
    let handle = vm.handle;
    let result = boot(&vm).and_then(|()| test(&mut vm, arena));
    let destroyed = vm
        .destroy(arena)
        .map_err(|e| format!("destroying VM {handle}: {e}"));
    result.and(destroyed)
}

/// The fault tests (part 2), each in a fresh VM of each kind.
const FAULT_TESTS: &[(&str, VmTest)] = &[
    (
        "load from an unmapped IPA: MEM_FAULT, then emulated or mapped",
        unmapped_load,
    ),
    (
        "store to an unmapped IPA: MEM_FAULT, then mapped",
        unmapped_store,
    ),
    (
        "load beyond the 40-bit IPA space: MEM_FAULT (or the guest's own fault)",
        beyond_load,
    ),
    (
        "branch beyond the 40-bit IPA space: MEM_FAULT (or the guest's own fault)",
        beyond_exec,
    ),
    (
        "store to a read-only page: MEM_FAULT, retried",
        read_only_store,
    ),
    (
        "branch to an unmapped IPA: MEM_FAULT, runs once mapped",
        unmapped_exec,
    ),
    (
        "branch to a non-executable page: MEM_FAULT, retried",
        no_exec,
    ),
    (
        "misaligned loads: the bytes, MMIO, or an alignment fault at EL1",
        misaligned,
    ),
    ("MMIO of 1, 2, 4 and 8 bytes", mmio_sizes),
    (
        "WFI and CPU_SUSPEND: WFI exits, then the guest goes on",
        wfi,
    ),
    (
        "host-call IDs from a guest: NOT_SUPPORTED, never forwarded",
        host_calls,
    ),
    ("SMC32 PSCI calls read W1..W3 (PSCI 5.2.1)", smc32_arguments),
];

/// Run the guest again: the same MEM_FAULT exit (the access is retried,
/// not completed).
fn expect_retried(vm: &GuestVm, ipa: u64, flags: u64) -> Result<(), String> {
    let r = vm.run(0);
    vm.expect_exit(0, r, ExitReason::MemFault)
        .and_then(|()| vm.expect_fault(0, ipa, flags).map(|_| ()))
        .map_err(|e| format!("running it again: {e}"))
}

/// A guest's report must be `want` in x2..: `what` otherwise.
fn expect_report(report: [u64; 6], want: &[u64], what: &str) -> Result<(), String> {
    if report.get(1..=want.len()) == Some(want) {
        Ok(())
    } else {
        Err(format!(
            "{what}: the guest reported {}, want {}",
            hex(&report),
            hex(want)
        ))
    }
}

fn unmapped_load(vm: &mut GuestVm, arena: &mut Arena) -> Result<(), String> {
    let ipa = UNMAPPED_IPA + 8;
    let r = vm.command(0, [op::READ, ipa, 8, 0])?;
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    let f = vm.expect_fault(0, ipa, 0)?;
    let value = 0x1122_3344_5566_7788;
    if vm.protected {
        expect_retried(vm, ipa, 0)?;
        let mapped = vm.map_page(arena, ipa >> PAGE_SHIFT, prot::R, |i| {
            if i == 1 {
                value
            } else {
                0
            }
        })?;
        if !mapped {
            return Err(String::from("GUEST_DONATE ran out of pool pages"));
        }
    } else {
        if f.size != 8 || f.esr >> 26 != 0x24 {
            return Err(format!(
                "MEM_FAULT {f:x?}: want size 8 and a data-abort ESR"
            ));
        }
        vm.set_run(0, offset_of!(RunPage, mmio_read_data), value)?;
    }
    let rep = vm.report(0, vm.run(0))?;
    expect_report(rep, &[value, 0], "the load's value")
}

fn unmapped_store(vm: &mut GuestVm, arena: &mut Arena) -> Result<(), String> {
    let ipa = UNMAPPED_IPA + 0x1010;
    let value = 0xA1B2_C3D4_E5F6_0718;
    let r = vm.command(0, [op::WRITE, ipa, 4, value])?;
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    let f = vm.expect_fault(0, ipa, fault_flags::WRITE)?;
    if !vm.protected && (f.size != 4 || f.data != value & 0xffff_ffff || f.esr >> 26 != 0x24) {
        return Err(format!(
            "MEM_FAULT {f:x?}: want size 4, data {:#x} and a data-abort ESR",
            value & 0xffff_ffff
        ));
    }
    // The host maps a page there: the store lands in it.
    let mapped = vm.map_page(arena, ipa >> PAGE_SHIFT, prot::R | prot::W, |_| 0)?;
    if !mapped {
        return Err(String::from("mapping a page ran out of pool pages"));
    }
    expect_report(vm.report(0, vm.run(0))?, &[0, 0], "the store")?;
    let rep = vm.step(0, [op::READ, ipa, 4, 0])?;
    expect_report(rep, &[value & 0xffff_ffff, 0], "loading it back")?;
    let pfn = vm.pages.last().map_or(0, |&(pfn, _, _)| pfn);
    let pa = (pfn << PAGE_SHIFT) + (ipa & 0xff8);
    arch::dcache_clean_invalidate(pa as usize, pa as usize + 8);
    match (vm.protected, vm.mem.read(pa)) {
        (false, Ok(v)) if v & 0xffff_ffff == value & 0xffff_ffff => Ok(()),
        (true, Err(_)) => Ok(()),
        (_, got) => Err(format!(
            "the host's read of the page it {} gave {got:x?}",
            if vm.protected { "donated" } else { "shared" }
        )),
    }
}

/// On a CPU whose physical addresses have no more bits than the guest's
/// IPA space (cortex-a710: 40), a guest address beyond it, with the guest's
/// MMU off, is an address size fault at the guest's own EL1 before stage 2
/// is involved: the guest reports that exception (`rep`: its ESR, then FAR)
/// with exception class `ec`.
fn el1_address_size_fault(rep: [u64; 6], ipa: u64, ec: u64) -> Result<(), String> {
    let (esr, far) = (rep[2], rep[3]);
    if esr >> 26 == ec && esr & 0x3c == 0 && far == ipa {
        Ok(())
    } else {
        Err(format!(
            "expected the guest's own address size fault at {ipa:#x} (EC {ec:#x}), got ESR {esr:#x} FAR {far:#x}"
        ))
    }
}

fn beyond_load(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let ipa = guest::IPA_LIMIT + 0x1234_5008;
    let r = vm.command(0, [op::READ, ipa, 8, 0])?;
    if arch::pa_bits() <= host_interface::GUEST_IPA_BITS {
        return el1_address_size_fault(vm.report(0, r)?, ipa, 0x25);
    }
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    vm.expect_fault(0, ipa, 0)?;
    // Nothing can be mapped there.
    let gfn = ipa >> PAGE_SHIFT;
    let page = vm.pages.first().map_or(0, |&(pfn, _, _)| pfn);
    let id = if vm.protected {
        HostCallId::GuestDonate
    } else {
        HostCallId::GuestShare
    };
    expect_call(id, &[vm.handle, page, gfn, 1, prot::R], err(Errno::EINVAL))?;
    if vm.protected {
        expect_retried(vm, ipa, 0)
    } else {
        let value = 0x0DDC_0FFE_E15B_A5ED;
        vm.set_run(0, offset_of!(RunPage, mmio_read_data), value)?;
        let rep = vm.report(0, vm.run(0))?;
        expect_report(rep, &[value, 0], "the emulated load")
    }
}

fn beyond_exec(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let ipa = guest::IPA_LIMIT + 0x5000;
    let r = vm.command(0, [op::EXEC, ipa, 0, 0])?;
    if arch::pa_bits() <= host_interface::GUEST_IPA_BITS {
        return el1_address_size_fault(vm.report(0, r)?, ipa, 0x21);
    }
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    vm.expect_fault(0, ipa, fault_flags::EXEC)?;
    expect_retried(vm, ipa, fault_flags::EXEC)
}

fn read_only_store(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let ipa = guest::CODE_IPA + 2 * PAGE_SIZE - 8;
    let r = vm.command(0, [op::WRITE, ipa, 8, 0x5707_E000_5707_E000])?;
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    vm.expect_fault(0, ipa, fault_flags::WRITE)?;
    expect_retried(vm, ipa, fault_flags::WRITE)?;
    if !vm.protected {
        // The host shares the page: it still holds the program.
        let pfn = vm.pages.get(1).map_or(0, |&(pfn, _, _)| pfn);
        let pa = (pfn << PAGE_SHIFT) + PAGE_SIZE - 8;
        let at = (ipa - guest::CODE_IPA) as usize;
        let mut bytes = [0u8; 8];
        for (k, b) in bytes.iter_mut().enumerate() {
            *b = guest::image().get(at + k).copied().unwrap_or(0);
        }
        let (v, want) = (vm.mem.read(pa)?, u64::from_le_bytes(bytes));
        if v != want {
            return Err(format!(
                "the program page changed: {v:#x} at its end, not {want:#x}"
            ));
        }
    }
    Ok(())
}

fn unmapped_exec(vm: &mut GuestVm, arena: &mut Arena) -> Result<(), String> {
    let ipa = UNMAPPED_IPA + 0x2010;
    let r = vm.command(0, [op::EXEC, ipa, 0, 0])?;
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    vm.expect_fault(0, ipa, fault_flags::EXEC)?;
    if !vm.map_page(arena, ipa >> PAGE_SHIFT, prot::R | prot::X, |_| {
        guest::RET_PAIR
    })? {
        return Err(String::from("mapping a page ran out of pool pages"));
    }
    let rep = vm.report(0, vm.run(0))?;
    expect_report(rep, &[0, 0], "the branch (ESR 0: it returned)")
}

fn no_exec(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let ipa = guest::SCRATCH_IPA + 0x40;
    let r = vm.command(0, [op::EXEC, ipa, 0, 0])?;
    vm.expect_exit(0, r, ExitReason::MemFault)?;
    vm.expect_fault(0, ipa, fault_flags::EXEC)?;
    expect_retried(vm, ipa, fault_flags::EXEC)
}

fn misaligned(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let is_alignment_fault = |esr: u64| esr >> 26 == 0x25 && esr & 0x3f == 0x21;
    // Scratch memory: the bytes there (stage 2 may make it Normal memory,
    // where misaligned loads are allowed), or an alignment fault at EL1.
    let (a, b) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
    let at = guest::SCRATCH_IPA + 0x100;
    vm.step(0, [op::WRITE, at, 8, a])?;
    vm.step(0, [op::WRITE, at + 8, 8, b])?;
    let rep = vm.step(0, [op::READ, at + 1, 8, 0])?;
    let bytes = (a >> 8) | (b << 56);
    match rep[2] {
        0 if rep[1] == bytes => {}
        esr if esr != 0 && is_alignment_fault(esr) && rep[3] == at + 1 => {}
        _ => {
            return Err(format!(
                "8-byte load at {:#x}: value {:#x}, ESR_EL1 {:#x}, FAR {:#x}; want {bytes:#x} or an alignment fault (EC 0x25, DFSC 0x21) there",
                at + 1,
                rep[1],
                rep[2],
                rep[3]
            ))
        }
    }
    // A guard page: an MMIO exit for exactly that access, or an alignment
    // fault at EL1.
    let ipa = guest::GUARD_IPA + 2;
    let r = vm.command(0, [op::READ, ipa, 4, 0])?;
    let data = 0x8899_AABB_CCDD_EEFF;
    let rep = if r == exit(ExitReason::Mmio) {
        let want = Fault {
            ipa,
            flags: 0,
            size: 4,
            esr: 0,
            data: 0,
        };
        if vm.fault(0) != want {
            return Err(format!(
                "misaligned 4-byte MMIO load: {:x?}, want {want:x?}",
                vm.fault(0)
            ));
        }
        vm.set_run(0, offset_of!(RunPage, mmio_read_data), data)?;
        vm.report(0, vm.run(0))?
    } else {
        vm.report(0, r)?
    };
    match rep[2] {
        0 if r == exit(ExitReason::Mmio) && rep[1] == mask(data, 4) => Ok(()),
        esr if esr != 0 && is_alignment_fault(esr) && rep[3] == ipa => Ok(()),
        _ => Err(format!(
            "4-byte load at {ipa:#x}: the guest reported {}; want the MMIO data {:#x} or an alignment fault there",
            hex(&rep),
            mask(data, 4)
        )),
    }
}

fn mmio_sizes(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let data = 0xF0E1_D2C3_B4A5_9687;
    let value = 0x0123_4567_89AB_CDEF;
    for size in [1, 2, 4, 8] {
        let ipa = guest::GUARD_IPA + 0x10;
        let r = vm.command(0, [op::READ, ipa, size, 0])?;
        vm.expect_exit(0, r, ExitReason::Mmio)?;
        let want = Fault {
            ipa,
            flags: 0,
            size,
            esr: 0,
            data: 0,
        };
        if vm.fault(0) != want {
            return Err(format!(
                "{size}-byte load: {:x?}, want {want:x?}",
                vm.fault(0)
            ));
        }
        vm.set_run(0, offset_of!(RunPage, mmio_read_data), data)?;
        let rep = vm.report(0, vm.run(0))?;
        expect_report(rep, &[mask(data, size), 0], &format!("{size}-byte load"))?;

        let ipa = guest::GUARD_IPA + 0x1020;
        let r = vm.command(0, [op::WRITE, ipa, size, value])?;
        vm.expect_exit(0, r, ExitReason::Mmio)?;
        let want = Fault {
            ipa,
            flags: fault_flags::WRITE,
            size,
            esr: 0,
            data: mask(value, size),
        };
        if vm.fault(0) != want {
            return Err(format!(
                "{size}-byte store: {:x?}, want {want:x?}",
                vm.fault(0)
            ));
        }
        expect_report(
            vm.report(0, vm.run(0))?,
            &[0, 0],
            &format!("{size}-byte store"),
        )?;
    }
    Ok(())
}

fn wfi(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let r = vm.command(0, [op::WFI, 0, 0, 0])?;
    vm.expect_exit(0, r, ExitReason::Wfi)?;
    let rep = vm.report(0, vm.run(0))?;
    if rep[0] != op::WFI {
        return Err(format!("after WFI the guest reported {}", hex(&rep)));
    }
    let suspend = GuestCallId::PsciCpuSuspend.id().into();
    let r = vm.command(0, [op::CALL, suspend, 0, 0])?;
    vm.expect_exit(0, r, ExitReason::Wfi)?;
    let rep = vm.report(0, vm.run(0))?;
    expect_report(rep, &[psci::SUCCESS], "CPU_SUSPEND's x0")
}

fn host_calls(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    let page = vm.pages.first().map_or(0, |&(pfn, _, _)| pfn);
    for (id, x1, x2) in [
        (HostCallId::HypVersion, 0, 0),
        (HostCallId::VmCreate, 0, page),
        (HostCallId::PageQuery, page, 0),
        (HostCallId::VmDestroy, vm.handle, 0),
    ] {
        for conduit in [op::CALL, op::SMC_CALL] {
            // The guest's report is the very next exit: nothing forwarded.
            let rep = vm.step(0, [conduit, id.id().into(), x1, x2])?;
            if rep[1] != u64::MAX {
                return Err(format!(
                    "{} {} from the guest answered x0 = {:#x}, want NOT_SUPPORTED",
                    if conduit == op::CALL { "HVC" } else { "SMC" },
                    id.name(),
                    rep[1]
                ));
            }
        }
    }
    Ok(())
}

fn smc32_arguments(vm: &mut GuestVm, _: &mut Arena) -> Result<(), String> {
    // PSCI 5.2.1: an SMC32 function takes W1..W3; the upper halves of
    // X1..X3 are not part of the call. Each form with clean arguments
    // first, then with bits 63:32 set.
    let (affinity32, cpu_on32) = (0x8400_0004, 0x8400_0003);
    let entry = guest::CODE_IPA + guest::secondary_offset();
    let high = 0xFFFF_FFFF_0000_0000;
    let mut wrong = Vec::new();
    for (what, regs, want) in [
        (
            "AFFINITY_INFO (SMC32) of vCPU 0",
            [affinity32, 0, 0],
            psci::AFFINITY_ON,
        ),
        (
            "AFFINITY_INFO (SMC32) of vCPU 0 with bits 63:32 of x1 and x2 set",
            [affinity32, high, high],
            psci::AFFINITY_ON,
        ),
        (
            "CPU_ON (SMC32) of vCPU 0 (itself)",
            [cpu_on32, 0, entry],
            psci::ALREADY_ON,
        ),
        (
            "CPU_ON (SMC32) of vCPU 0 (itself) with bits 63:32 of x1 and x2 set",
            [cpu_on32, high, high | entry],
            psci::ALREADY_ON,
        ),
    ] {
        if let Err(e) = vm.expect_guest_call(0, what, regs, want) {
            wrong.push(e);
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Part 3: the trapped access must give FATAL, and VCPU_RUN must keep
/// answering FATAL (the VM is dead; [`in_vm`] destroys it and checks its
/// pages).
fn unhandled_trap(vm: &mut GuestVm, which: u64) -> Result<(), String> {
    let r = vm.command(0, [op::SYSREG, which, 0, 0])?;
    if r == exit(ExitReason::Hvc) {
        let rep = vm.report(0, r)?;
        return Err(format!(
            "the access did not reach the hypervisor: the guest read {:#x}, ESR_EL1 {:#x}",
            rep[1], rep[2]
        ));
    }
    vm.expect_exit(0, r, ExitReason::Fatal)?;
    for _ in 0..2 {
        let again = vm.run(0);
        vm.expect_exit(0, again, ExitReason::Fatal)
            .map_err(|e| format!("running the dead VM again: {e}"))?;
    }
    Ok(())
}

/// Part 4 in a fresh two-vCPU VM.
fn smp(arena: &mut Arena, protected: bool) -> Result<(), String> {
    let mut vm = GuestVm::create(arena, protected, 2)?;
    let handle = vm.handle;
    let result = boot(&vm).and_then(|()| smp_steps(&mut vm));
    if result.is_err() {
        // vCPU 1 may still run on CPU 1: let it go (or time out) first.
        let _ = vm.step(0, [op::WRITE, guest::SCRATCH_IPA, 8, 1]);
        wait_until(SPIN_SECONDS + WAIT_SECONDS, || {
            REMOTE_DONE.load(Ordering::Acquire) == REMOTE_SEQ.load(Ordering::Acquire)
        });
    }
    let destroyed = vm
        .destroy(arena)
        .map_err(|e| format!("destroying VM {handle}: {e}"));
    result.and(destroyed)
}

/// vCPU 1's first report after CPU_ON with `context`, run by CPU 1.
fn secondary_boot(vm: &GuestVm, context: u64) -> Result<(), String> {
    let seq = remote_run(vm, 1);
    let r = remote_wait(seq, WAIT_SECONDS)?;
    let rep = vm
        .report(1, r)
        .map_err(|e| format!("vCPU 1 on CPU 1: {e}"))?;
    if rep[0] != guest::BOOT_SECONDARY || rep[1] != context || rep[2] & MPIDR_AFFINITY != 1 {
        return Err(format!(
            "vCPU 1 on CPU 1 reported {}, want [{:#x}, context {context:#x}, MPIDR affinity 1]",
            hex(&rep),
            guest::BOOT_SECONDARY
        ));
    }
    Ok(())
}

/// While vCPU 1 spins on CPU 1: CPU 0's VCPU_RUN of it and VM_DESTROY are
/// -EBUSY, vCPU 0 sees it ON (and CPU_ON says ALREADY_ON), host calls go on.
fn while_spinning(vm: &GuestVm) -> Result<(), String> {
    use HostCallId as C;
    let affinity = GuestCallId::PsciAffinityInfo.id().into();
    let cpu_on = GuestCallId::PsciCpuOn.id().into();
    // Between two of CPU 1's runs (a time slice ended one) CPU 0 may get
    // vCPU 1 for a slice instead: that run ends INTERRUPTED; try again.
    let mut busy = Err(String::new());
    for _ in 0..8 {
        busy = expect_call(C::VcpuRun, &[vm.handle, 1], err(Errno::EBUSY));
        if busy.is_ok() {
            break;
        }
    }
    busy.map_err(|e| format!("VCPU_RUN of vCPU 1 while CPU 1 runs it: {e}"))?;
    expect_call(C::VmDestroy, &[vm.handle], err(Errno::EBUSY))
        .map_err(|e| format!("VM_DESTROY while CPU 1 runs vCPU 1: {e}"))?;
    vm.expect_guest_call(0, "while vCPU 1 runs", [affinity, 1, 0], psci::AFFINITY_ON)?;
    let entry = guest::CODE_IPA + guest::secondary_offset();
    vm.expect_guest_call(0, "while vCPU 1 runs", [cpu_on, 1, entry], psci::ALREADY_ON)?;
    expect_call(C::HypVersion, &[], [0, 0, 0x1_0000, 0, 0])
}

fn smp_steps(vm: &mut GuestVm) -> Result<(), String> {
    let affinity = GuestCallId::PsciAffinityInfo.id().into();
    let cpu_on = GuestCallId::PsciCpuOn.id().into();
    let release = guest::SCRATCH_IPA;
    let marker = guest::SCRATCH_IPA + 8;
    let (c1, c2) = (0x00C0_FFEE_0000_0001, 0x00C0_FFEE_0000_0002);

    vm.expect_guest_call(0, "before CPU_ON", [affinity, 1, 0], psci::AFFINITY_OFF)?;
    vm.expect_guest_call(0, "no vCPU 2", [affinity, 2, 0], psci::INVALID_PARAMETERS)?;
    let on2 = vm.step(0, [op::CPU_ON, 2, c1, 0])?[1];
    if on2 != psci::INVALID_PARAMETERS {
        return Err(format!("CPU_ON of vCPU 2 (none) answered {on2:#x}"));
    }
    if vm.protected {
        // The entry point must be memory the VM owns.
        let bad = vm.guest_call(0, cpu_on, 1, UNMAPPED_IPA, c1)?[0];
        if bad != psci::INVALID_PARAMETERS && bad != (-9i64) as u64 {
            return Err(format!(
                "CPU_ON of vCPU 1 at IPA {UNMAPPED_IPA:#x} (not the VM's) answered {bad:#x}, want INVALID_PARAMETERS or INVALID_ADDRESS"
            ));
        }
        vm.expect_guest_call(
            0,
            "after a refused CPU_ON",
            [affinity, 1, 0],
            psci::AFFINITY_OFF,
        )?;
    }
    vm.step(0, [op::WRITE, release, 8, 0])?;
    vm.step(0, [op::WRITE, marker, 8, 0])?;
    let on = vm.step(0, [op::CPU_ON, 1, c1, 0])?[1];
    if on != psci::SUCCESS {
        return Err(format!("CPU_ON of vCPU 1 answered {on:#x}"));
    }
    let state = vm.guest_call(0, affinity, 1, 0, 0)?[0];
    if state != psci::AFFINITY_ON && state != psci::AFFINITY_ON_PENDING {
        return Err(format!(
            "AFFINITY_INFO of vCPU 1 after CPU_ON answered {state:#x}"
        ));
    }
    secondary_boot(vm, c1)?;

    // vCPU 1 spins on CPU 1 until vCPU 0 releases it.
    let hz = arch::cntfrq_el0().max(1);
    vm.set_results(1, [op::SPIN, release, marker, SPIN_SECONDS * hz])?;
    let seq = remote_run(vm, 1);
    let mut spinning = false;
    let mut polled = Ok(());
    wait_until(WAIT_SECONDS, || {
        match vm.step(0, [op::READ, marker, 8, 0]) {
            Ok(rep) => spinning = rep[1] == 1,
            Err(e) => polled = Err(e),
        }
        spinning || polled.is_err()
    });
    polled?;
    if !spinning {
        return Err(format!(
            "vCPU 1 did not start spinning on CPU 1 within {WAIT_SECONDS} s"
        ));
    }
    let busy = while_spinning(vm);
    vm.step(0, [op::WRITE, release, 8, 1])?;
    let r = remote_wait(seq, SPIN_SECONDS + WAIT_SECONDS)?;
    busy?;
    let rep = vm.report(1, r).map_err(|e| format!("vCPU 1's spin: {e}"))?;
    if rep[0] != op::SPIN || rep[1] != 0 {
        return Err(format!(
            "vCPU 1's spin reported {} (x2 = 1: not released)",
            hex(&rep)
        ));
    }

    // CPU_OFF on CPU 1: the vCPU stays off.
    vm.set_results(1, [op::CALL, GuestCallId::PsciCpuOff.id().into(), 0, 0])?;
    for i in 0..2 {
        let r = remote_wait(remote_run(vm, 1), WAIT_SECONDS)?;
        vm.expect_exit(1, r, ExitReason::Wfi)
            .map_err(|e| format!("vCPU 1's CPU_OFF, run {}: {e}", i + 1))?;
    }
    vm.expect_guest_call(0, "after CPU_OFF", [affinity, 1, 0], psci::AFFINITY_OFF)?;

    // A second CPU_ON starts it afresh.
    let on = vm.step(0, [op::CPU_ON, 1, c2, 0])?[1];
    if on != psci::SUCCESS {
        return Err(format!("the second CPU_ON of vCPU 1 answered {on:#x}"));
    }
    secondary_boot(vm, c2)?;

    // SYSTEM_RESET on CPU 1, SYSTEM_OFF on CPU 0.
    vm.set_results(
        1,
        [op::CALL, GuestCallId::PsciSystemReset.id().into(), 0, 0],
    )?;
    let r = remote_wait(remote_run(vm, 1), WAIT_SECONDS)?;
    vm.expect_exit(1, r, ExitReason::SystemEvent)?;
    let t = vm.run_field(1, offset_of!(RunPage, system_event));
    if t != system_event::RESET {
        return Err(format!("SYSTEM_RESET gave a SYSTEM_EVENT of type {t}"));
    }
    let r = vm.command(0, [op::CALL, GuestCallId::PsciSystemOff.id().into(), 0, 0])?;
    vm.expect_exit(0, r, ExitReason::SystemEvent)?;
    let t = vm.run_field(0, offset_of!(RunPage, system_event));
    if t != system_event::OFF {
        return Err(format!("SYSTEM_OFF gave a SYSTEM_EVENT of type {t}"));
    }
    Ok(())
}
