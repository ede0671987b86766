//! The hypervisor's state and every host call of ABI.md section 1.
//!
//! Every call follows the same two phases: check everything (in the order of
//! ABI.md 3.1, reading only the platform description, the CPU features and
//! the stage-2 tables), then commit. The table pages a commit needs are
//! counted before the first write, so a commit cannot fail half-way.
//!
//! The state sits behind one lock per VM, one for the host's side (its
//! stage-2, the page metadata, the DMA view) and one for the VM table's
//! handle allocation; every method takes `&self`. Lock order: VM table, then
//! one VM, then the host's side (docs/DESIGN.md, "Lock order"). A call takes
//! every lock it needs before its first check, so what it checked still
//! holds when it commits.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

use host_interface::{
    features as fbits, Errno, HostCall, HostResult, MemClassCode, MemType as AbiMemType, Owner,
    Prot,
};
use pagetables::{
    stage2_root_geometry, Entry, Leaf, Maintenance, MemType, PageState, Perms, PhysMem, Stage2,
};
use platform::{CpuFeatures, MemClass, Platform};
use spin::mutex::{SpinMutex, SpinMutexGuard};

use crate::dma::DmaView;
use crate::meta::{PageMeta, MAX_SHARE_COUNT};
use crate::owner::HostAnnotation;
use crate::phys::{self, PAGE};
use crate::transitions::{host_may, HostState, Op};
use crate::vcpu::{NoExecutor, Vcpu, VcpuExecutor};

/// ABI version reported by HYP_VERSION (1.0).
pub const HYP_VERSION: u64 = 0x1_0000;
/// Most VMs that exist at once (HYP_FEATURES x3).
pub const MAX_VMS: usize = 32;
/// Most vCPUs per VM (HYP_FEATURES x4).
pub const MAX_VCPUS: usize = 8;
/// Fewest pages VM_CREATE accepts: the stage-2 root table and one pool page.
pub const VM_CREATE_MIN_PAGES: u64 = 2;

/// What kind of access the host made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Exec,
}

/// The host touched memory it may not touch: inject an abort at EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAbort;

/// Why the hypervisor could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// Fewer hypervisor pages than the host stage-2 needs.
    NotEnoughMemory {
        /// Pages needed.
        needed: u64,
        /// Pages given.
        given: u64,
    },
}

/// One VM.
pub struct Vm<P: PhysMem> {
    pub(crate) handle: u64,
    pub(crate) protected: bool,
    pub(crate) mte: bool,
    pub(crate) s2: Stage2<P>,
    pub(crate) vcpus: Vec<Vcpu>,
    /// The VM hit FATAL: its vCPUs no longer run.
    pub(crate) dead: bool,
}

impl<P: PhysMem> Vm<P> {
    /// The VM's stage-2.
    pub fn stage2(&self) -> &Stage2<P> {
        &self.s2
    }
    /// The handle the host uses.
    pub fn handle(&self) -> u64 {
        self.handle
    }
    /// Whether the VM is protected.
    pub fn protected(&self) -> bool {
        self.protected
    }
}

/// The host's side of the core, behind its own lock: what every call that
/// changes the host's ownership reads and writes.
pub(crate) struct HostSide<P: PhysMem> {
    /// The host's stage-2.
    pub(crate) s2: Stage2<P>,
    pub(crate) meta: PageMeta,
    /// Table pages that faults on untracked MMIO may still take from the
    /// host pool; the rest is kept for tracked memory, whose worst case is
    /// reserved at boot so that no transition on it can run out.
    untracked_budget: usize,
    /// What the host's devices may reach (RULES.md S1), when the platform
    /// has an IOMMU the hypervisor owns; kept in step by `host_map` and
    /// `host_unmap`.
    pub(crate) dma: Option<DmaView<P>>,
}

/// One slot of the VM table.
struct Slot<P: PhysMem> {
    /// The handle of the VM in the slot, 0 when there is none. A lookup
    /// reads it without a lock and confirms it under the slot's lock:
    /// handles are never reused, so a VM destroyed meanwhile is -ENOENT.
    handle: AtomicU64,
    /// The VM: its state, stage-2 and vCPUs.
    vm: SpinMutex<Option<Vm<P>>>,
}

/// The VM table's own state, behind the table lock: held only by VM_CREATE
/// (to pick a slot and a handle) and at the end of VM_DESTROY (to free the
/// slot).
struct Table {
    next_handle: u64,
    /// Slots holding a VM or still being torn down (bit n: slot n).
    used: u64,
}

/// A VM, locked.
pub(crate) struct VmGuard<'a, P: PhysMem> {
    /// Its slot in the table (VMID - 1).
    pub(crate) slot: usize,
    g: SpinMutexGuard<'a, Option<Vm<P>>>,
}

impl<P: PhysMem> Deref for VmGuard<'_, P> {
    type Target = Vm<P>;
    fn deref(&self) -> &Vm<P> {
        match self.g.as_ref() {
            Some(vm) => vm,
            // A guard is only made for a slot holding a VM.
            None => unreachable!(),
        }
    }
}

impl<P: PhysMem> DerefMut for VmGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut Vm<P> {
        match self.g.as_mut() {
            Some(vm) => vm,
            None => unreachable!(),
        }
    }
}

/// Part of the state behind one of the core's locks, for inspection: the
/// lock is held while this lives.
pub(crate) struct Locked<'a, T, U: ?Sized> {
    guard: SpinMutexGuard<'a, T>,
    get: fn(&T) -> &U,
}

impl<'a, T, U: ?Sized> Locked<'a, T, U> {
    pub(crate) fn new(guard: SpinMutexGuard<'a, T>, get: fn(&T) -> &U) -> Self {
        Self { guard, get }
    }
}

impl<T, U: ?Sized> Deref for Locked<'_, T, U> {
    type Target = U;
    fn deref(&self) -> &U {
        (self.get)(&self.guard)
    }
}

/// The hypervisor core.
pub struct Hypervisor<P: PhysMem, M: Maintenance> {
    pub(crate) platform: Platform,
    pub(crate) cpu: CpuFeatures,
    pub(crate) phys: P,
    /// Maintenance is stateless at EL2; each call works with its own copy.
    mnt: M,
    /// The host's side (stage-2, metadata, DMA view).
    pub(crate) host: SpinMutex<HostSide<P>>,
    /// The VM table: `MAX_VMS` slots, each with its own lock.
    slots: Box<[Slot<P>]>,
    table: SpinMutex<Table>,
    /// The DMA view's update count, readable without the host's lock.
    dma_updates: AtomicU64,
}

/// Why a page of a call is refused, in the per-page precedence of ABI.md
/// 3.1 step 6: the first of these that any page has is the call's error.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Refusal {
    /// -ENOENT: nothing mapped there.
    Unmapped,
    /// -EPERM: a page in a state the call does not accept.
    State,
    /// -EBUSY: pinned, or at the share limit.
    Busy,
    /// -EINVAL: a page mapped in guests with another memory type (D7).
    MemType,
    /// -EEXIST: the guest already maps something there.
    Exists,
}

impl Refusal {
    fn errno(self) -> Errno {
        match self {
            Refusal::Unmapped => Errno::ENOENT,
            Refusal::State => Errno::EPERM,
            Refusal::Busy => Errno::EBUSY,
            Refusal::MemType => Errno::EINVAL,
            Refusal::Exists => Errno::EEXIST,
        }
    }
}

/// The refusal of highest precedence seen so far over a call's pages.
#[derive(Default)]
struct Verdict(Option<Refusal>);

impl Verdict {
    fn note(&mut self, r: Refusal) {
        self.0 = Some(self.0.map_or(r, |seen| seen.min(r)));
    }
    fn result(self) -> Result<(), Errno> {
        match self.0 {
            Some(r) => Err(r.errno()),
            None => Ok(()),
        }
    }
}

/// The leaf of a page the host shares out, with the type every mapping of
/// it uses: forced, so a host stage-1 cannot weaken it. The host may
/// execute it only where the type is cacheable and the page is memory.
fn host_shared_leaf(class: MemClass, memtype: MemType) -> Leaf {
    let cacheable = matches!(memtype, MemType::NormalWb | MemType::Stage1);
    Leaf {
        perms: Perms {
            r: true,
            w: true,
            x: cacheable && class != MemClass::Mmio,
        },
        memtype: if memtype == MemType::Stage1 {
            MemType::NormalWb
        } else {
            memtype
        },
        state: PageState::SharedOwned,
    }
}

fn pa(pfn: u64) -> u64 {
    pfn << 12
}

/// Page-table pages a transition on tracked memory may need in the worst
/// case: one last-level table per 2 MiB, plus the levels above.
fn worst_case_tables(pages: u64) -> u64 {
    let l3 = pages.div_ceil(512);
    l3 + l3.div_ceil(512) + 8
}

impl<P: PhysMem, M: Maintenance> Hypervisor<P, M> {
    /// Set up the hypervisor. `hyp_pages` are free pages of the hypervisor's
    /// own memory for the host's stage-2: its root is the first run of
    /// consecutive pages that is long enough and aligned for the root
    /// geometry (one page, or 2-16 concatenated pages when the PA size
    /// forbids starting at level 0); all other pages go to its pool.
    pub fn new(
        platform: Platform,
        cpu: CpuFeatures,
        phys: P,
        mnt: M,
        hyp_pages: &mut dyn Iterator<Item = u64>,
    ) -> Result<Self, InitError> {
        let geometry = stage2_root_geometry(cpu.pa_bits, cpu.pa_bits);
        let root_pages = geometry.root_pages as u64;
        let needed = worst_case_tables(platform.tracked_pages()) + root_pages;
        // Pages passed over while looking for the root run (none when the
        // pages are consecutive from an aligned start, as in practice).
        let mut skipped = Vec::new();
        let mut root = 0;
        let mut run = 0;
        while run < root_pages {
            let Some(p) = hyp_pages.next() else {
                let given = skipped.len() as u64 + run;
                return Err(InitError::NotEnoughMemory { needed, given });
            };
            if run > 0 && p == root + run * PAGE {
                run += 1;
            } else {
                skipped.extend((0..run).map(|i| root + i * PAGE));
                if p.is_multiple_of(geometry.root_align()) {
                    (root, run) = (p, 1);
                } else {
                    (root, run) = (0, 0);
                    skipped.push(p);
                }
            }
        }
        let mut host = Stage2::new(phys.clone(), root, cpu.pa_bits, cpu.pa_bits, cpu.fwb, 0);
        for p in skipped.into_iter().chain(hyp_pages) {
            host.pool_add(p);
        }
        let given = host.pool_len() as u64 + root_pages;
        if given < needed {
            return Err(InitError::NotEnoughMemory { needed, given });
        }
        let untracked_budget = (given - needed) as usize;
        let meta = PageMeta::new(&platform);
        let slots = (0..MAX_VMS)
            .map(|_| Slot {
                handle: AtomicU64::new(0),
                vm: SpinMutex::new(None),
            })
            .collect();
        Ok(Self {
            platform,
            cpu,
            phys,
            mnt,
            host: SpinMutex::new(HostSide {
                s2: host,
                meta,
                untracked_budget,
                dma: None,
            }),
            slots,
            table: SpinMutex::new(Table {
                next_handle: 1,
                used: 0,
            }),
            dma_updates: AtomicU64::new(0),
        })
    }

    /// The platform description.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
    /// The CPU features every CPU has.
    pub fn cpu(&self) -> &CpuFeatures {
        &self.cpu
    }
    /// The host's stage-2, with the host's lock held while the answer lives
    /// (for inspection: take nothing else of the host's side meanwhile).
    pub fn host_stage2(&self) -> impl Deref<Target = Stage2<P>> + '_ {
        Locked {
            guard: self.host.lock(),
            get: |h: &HostSide<P>| &h.s2,
        }
    }
    /// Physical memory access.
    pub fn phys(&self) -> &P {
        &self.phys
    }
    /// The maintenance backend (tests inspect the recorded operations).
    pub fn maintenance(&self) -> &M {
        &self.mnt
    }
    /// Live VMs, each locked while its item lives (for inspection).
    pub fn vms(&self) -> impl Iterator<Item = (usize, impl Deref<Target = Vm<P>> + '_)> + '_ {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            let g = s.vm.lock();
            if g.is_some() {
                Some((slot, VmGuard { slot, g }))
            } else {
                None
            }
        })
    }
    /// Bytes of per-page metadata (the benchmark reports it per GiB).
    pub fn metadata_bytes(&self) -> usize {
        self.host.lock().meta.bytes()
    }
    /// Share count and pin of a tracked page (for invariant checks).
    pub fn page_meta(&self, pfn: u64) -> (u16, bool) {
        let i = self.platform.tracked_index(pfn);
        let h = self.host.lock();
        (h.meta.share_count(i), h.meta.pinned(i))
    }

    /// HYP_FEATURES bits.
    pub fn feature_bits(&self) -> u64 {
        self.cpu.hyp_feature_bits()
    }

    /// How many updates the DMA view has had (wrapping; 0 without one),
    /// read without the host's lock.
    pub fn dma_updates(&self) -> u64 {
        self.dma_updates.load(Ordering::Relaxed)
    }

    pub(crate) fn note_dma_updates(&self, n: u64) {
        self.dma_updates.store(n, Ordering::Relaxed);
    }
}

impl<P: PhysMem, M: Maintenance + Clone> Hypervisor<P, M> {
    /// This call's maintenance backend.
    pub(crate) fn mnt(&self) -> M {
        self.mnt.clone()
    }

    // ----------------------------------------------------------------------
    // Dispatch

    /// Handle one host HVC: `regs` are x0..x6; returns x0..x4. VCPU_RUN runs
    /// the guest through `exec`.
    pub fn host_call(&self, regs: &[u64; 7], exec: &mut dyn VcpuExecutor<P>) -> HostResult {
        let call = match HostCall::decode(regs, self.cpu.pa_bits) {
            Ok(c) => c,
            Err(host_interface::DecodeError::NotSupported) => return HostResult::not_supported(),
            Err(host_interface::DecodeError::Invalid) => return HostResult::err(Errno::EINVAL),
        };
        let r = match call {
            HostCall::HypVersion => Ok([HYP_VERSION, 0, 0]),
            HostCall::HypFeatures => Ok([self.feature_bits(), MAX_VMS as u64, MAX_VCPUS as u64]),
            HostCall::PageQuery { pfn } => Ok(self.page_query(pfn)),
            HostCall::ShareHyp { pfn, nr } => self.share_hyp(pfn, nr).map(|()| [0; 3]),
            HostCall::UnshareHyp { pfn, nr } => self.unshare_hyp(pfn, nr).map(|()| [0; 3]),
            HostCall::VmCreate { flags, pfn, nr } => {
                self.vm_create(flags, pfn, nr).map(|h| [h, 0, 0])
            }
            HostCall::VmTopup { handle, pfn, nr } => {
                self.vm_topup(handle, pfn, nr).map(|()| [0; 3])
            }
            HostCall::VcpuCreate { handle, run_pfn } => {
                self.vcpu_create(handle, run_pfn).map(|i| [i, 0, 0])
            }
            HostCall::VcpuRun { handle, vcpu } => {
                self.vcpu_run(handle, vcpu, exec).map(|r| [r, 0, 0])
            }
            HostCall::VmDestroy { handle } => self.vm_destroy(handle).map(|()| [0; 3]),
            HostCall::Reclaim { pfn, nr } => self.reclaim(pfn, nr).map(|()| [0; 3]),
            HostCall::GuestShare {
                handle,
                pfn,
                gfn,
                nr,
                prot,
            } => self
                .guest_share(handle, pfn, gfn, nr, prot)
                .map(|()| [0; 3]),
            HostCall::GuestUnshare { handle, gfn, nr } => {
                self.guest_unshare(handle, gfn, nr).map(|()| [0; 3])
            }
            HostCall::GuestDonate {
                handle,
                pfn,
                gfn,
                nr,
                prot,
            } => self
                .guest_donate(handle, pfn, gfn, nr, prot)
                .map(|()| [0; 3]),
            HostCall::GuestMapDevice {
                handle,
                pfn,
                gfn,
                nr,
                prot,
                memtype,
            } => self
                .guest_map_device(handle, pfn, gfn, nr, prot, memtype)
                .map(|()| [0; 3]),
            HostCall::GuestUnmapDevice { handle, gfn, nr } => {
                self.guest_unmap_device(handle, gfn, nr).map(|()| [0; 3])
            }
        };
        match r {
            Ok([a, b, c]) => HostResult::ok(a, b, c),
            Err(e) => HostResult::err(e),
        }
    }

    /// Handle a host call that is not VCPU_RUN (convenience for tests).
    pub fn host_call_simple(&self, regs: &[u64; 7]) -> HostResult {
        self.host_call(regs, &mut NoExecutor)
    }

    // ----------------------------------------------------------------------
    // Host pages

    /// The host's view of one page.
    pub(crate) fn host_state(&self, h: &HostSide<P>, pfn: u64) -> HostState {
        self.host_state_of(h, pfn, h.s2.lookup(pa(pfn)))
    }

    fn host_state_of(&self, h: &HostSide<P>, pfn: u64, e: Entry) -> HostState {
        match e {
            Entry::Invalid { annotation } => match HostAnnotation::decode(annotation) {
                HostAnnotation::None => HostState::Owned,
                HostAnnotation::Hyp => HostState::HypOwned,
                HostAnnotation::Reclaimable => HostState::Reclaimable,
                HostAnnotation::Guest(_) => HostState::GuestOwned,
            },
            Entry::Mapped { leaf, .. } => match leaf.state {
                PageState::Owned => HostState::Owned,
                PageState::SharedOwned => {
                    if h.meta.share_count(self.platform.tracked_index(pfn)) > 0 {
                        HostState::SharedGuests
                    } else {
                        HostState::SharedHyp
                    }
                }
                PageState::SharedBorrowed => HostState::Borrowed,
            },
        }
    }

    /// Visit every page of [pfn, pfn+nr) with its host state and, when the
    /// host maps it, the memory type it maps it with.
    fn for_host_pages(
        &self,
        h: &HostSide<P>,
        pfn: u64,
        nr: u64,
        f: &mut dyn FnMut(u64, HostState, Option<MemType>),
    ) {
        let memtype = |e: Entry| match e {
            Entry::Mapped { leaf, .. } => Some(leaf.memtype),
            Entry::Invalid { .. } => None,
        };
        // One page: one lookup, not a range walk (the same entry; outside
        // the address space the walk visits nothing, and so does this).
        if nr == 1 {
            if h.s2.covers_page(pfn) {
                let e = h.s2.lookup_for_update(pa(pfn));
                f(pfn, self.host_state_of(h, pfn, e), memtype(e));
            }
            return;
        }
        let _ = h.s2.walk(pa(pfn), nr, &mut |ipa, n, e| {
            for p in (ipa >> 12)..(ipa >> 12) + n {
                f(p, self.host_state_of(h, p, e), memtype(e));
            }
            true
        });
    }

    /// The stage-2 leaf the host gets for a page of `class` it owns alone.
    fn host_private_leaf(class: MemClass) -> Leaf {
        match class {
            MemClass::Ram => Leaf {
                perms: Perms {
                    r: true,
                    w: true,
                    x: true,
                },
                memtype: MemType::Stage1,
                state: PageState::Owned,
            },
            MemClass::Coherent => Leaf {
                perms: Perms {
                    r: true,
                    w: true,
                    x: true,
                },
                memtype: MemType::NormalWb,
                state: PageState::Owned,
            },
            MemClass::Mmio | MemClass::Hyp => Leaf {
                perms: Perms {
                    r: true,
                    w: true,
                    x: false,
                },
                memtype: MemType::Device,
                state: PageState::Owned,
            },
        }
    }

    fn class_of(&self, pfn: u64, nr: u64) -> Result<(MemClass, Option<usize>), Errno> {
        self.platform
            .range_class(pfn, nr)
            .map_err(|()| Errno::EINVAL)
    }

    /// The range is RAM, inside one region: that region's index.
    fn require_ram(&self, pfn: u64, nr: u64) -> Result<Option<usize>, Errno> {
        match self.class_of(pfn, nr)? {
            (MemClass::Ram, region) => Ok(region),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Write host stage-2 entries. The caller counted the tables beforehand,
    /// so a failure here is a bookkeeping bug: the state stays consistent
    /// (pagetables writes nothing on NoMem) and the call reports -ENOMEM.
    /// Every mapping the host holds lets its devices reach the page too
    /// (the DMA view follows, RULES.md S1).
    pub(crate) fn host_map(
        &self,
        h: &mut HostSide<P>,
        pfn: u64,
        nr: u64,
        leaf: Leaf,
        blocks: bool,
    ) -> Result<(), Errno> {
        h.s2.map(pa(pfn), pa(pfn), nr, leaf, blocks, &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)?;
        self.dma_follow(h, pfn, nr, true);
        Ok(())
    }

    /// Unannotated pages are the host's; any other annotation takes them
    /// from its devices as well, with the IOMMU's TLB invalidated before
    /// this returns.
    pub(crate) fn host_unmap(
        &self,
        h: &mut HostSide<P>,
        pfn: u64,
        nr: u64,
        a: HostAnnotation,
    ) -> Result<(), Errno> {
        h.s2.set_invalid(pa(pfn), nr, a.encode(), &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)?;
        self.dma_follow(h, pfn, nr, a == HostAnnotation::None);
        Ok(())
    }

    /// PAGE_QUERY: owner, host state and memory class of one page.
    fn page_query(&self, pfn: u64) -> [u64; 3] {
        let (class, _) = self.platform.classify(pfn);
        let class_code = match class {
            MemClass::Ram => MemClassCode::Ram,
            MemClass::Mmio => MemClassCode::Mmio,
            MemClass::Coherent => MemClassCode::Coherent,
            MemClass::Hyp => MemClassCode::Hyp,
        } as u64;
        use host_interface::HostState as Q;
        let (owner, state) = match class {
            MemClass::Hyp => (Owner::Hyp, Q::NoPage),
            _ => match self.host_state(&self.host.lock(), pfn) {
                HostState::Owned => (Owner::Host, Q::Owned),
                HostState::SharedHyp | HostState::SharedGuests => (Owner::Host, Q::SharedOwned),
                HostState::Borrowed => (Owner::Guest, Q::SharedBorrowed),
                HostState::HypOwned => (Owner::Hyp, Q::NoPage),
                HostState::GuestOwned => (Owner::Guest, Q::NoPage),
                HostState::Reclaimable => (Owner::None, Q::NoPage),
            },
        };
        [owner as u64, state as u64, class_code]
    }

    /// Check that every page of the range is in a state `op` accepts.
    fn check_host_states(&self, h: &HostSide<P>, op: Op, pfn: u64, nr: u64, v: &mut Verdict) {
        self.for_host_pages(h, pfn, nr, &mut |_, s, _| {
            if !host_may(op, s) {
                v.note(Refusal::State);
            }
        });
    }

    // ----------------------------------------------------------------------
    // Host faults

    /// The host touched `pa_addr` and its stage-2 had no mapping that allows
    /// the access. Map it if the host may touch it, else ask for an abort.
    /// Takes the host's lock only.
    pub fn host_fault(&self, pa_addr: u64, access: Access) -> Result<(), HostAbort> {
        let pfn = pa_addr >> 12;
        // Beyond the PA space (no bits beyond it when it spans all 64).
        if pa_addr
            .checked_shr(self.platform.pa_bits())
            .is_some_and(|above| above != 0)
        {
            return Err(HostAbort);
        }
        let (class, region) = self.platform.classify(pfn);
        // Withheld devices are bus masters the host may not program (S1).
        if class == MemClass::Hyp || self.platform.is_withheld(pfn) {
            return Err(HostAbort);
        }
        let mut h = self.host.lock();
        match h.s2.lookup(pa(pfn)) {
            Entry::Mapped { leaf, .. } => {
                let ok = match access {
                    Access::Read => leaf.perms.r,
                    Access::Write => leaf.perms.w,
                    Access::Exec => leaf.perms.x,
                };
                // Already mapped (another CPU won the race): retry, or refuse.
                if ok {
                    Ok(())
                } else {
                    Err(HostAbort)
                }
            }
            Entry::Invalid { annotation } if annotation != 0 => Err(HostAbort),
            Entry::Invalid { .. } => {
                let leaf = Self::host_private_leaf(class);
                if access == Access::Exec && !leaf.perms.x {
                    return Err(HostAbort);
                }
                // A whole 2 MiB of one region, all untouched: one block.
                let block = pfn & !511;
                let uniform = class != MemClass::Mmio
                    && self.platform.range_class(block, 512).ok() == Some((class, region))
                    && {
                        let mut all = true;
                        let _ = h.s2.walk(pa(block), 512, &mut |_, _, e| {
                            all &= e == Entry::Invalid { annotation: 0 };
                            all
                        });
                        all
                    };
                let (start, n) = if uniform { (block, 512) } else { (pfn, 1) };
                let needed = h.s2.tables_needed(pa(start), n, true);
                let tracked = self.platform.tracked_index(pfn).is_some();
                if !tracked {
                    if needed > h.untracked_budget {
                        return Err(HostAbort);
                    }
                    h.untracked_budget -= needed;
                }
                // The pages were OWNED and unannotated, which the DMA view
                // already maps: a fault changes no ownership, so the view
                // stays as it is (not `host_map`).
                h.s2.map(pa(start), pa(start), n, leaf, true, &mut self.mnt())
                    .map_err(|_| HostAbort)
            }
        }
    }

    // ----------------------------------------------------------------------
    // Sharing with the hypervisor

    fn share_hyp(&self, pfn: u64, nr: u64) -> Result<(), Errno> {
        self.require_ram(pfn, nr)?;
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.check_host_states(&h, Op::ShareHyp, pfn, nr, &mut v);
        v.result()?;
        let leaf = host_shared_leaf(MemClass::Ram, MemType::NormalWb);
        // OWNED to SHARED_OWNED: the host's devices reach the pages before
        // and after, so the DMA view stays as it is (not `host_map`). The
        // table pages are counted by `map` itself, which writes nothing
        // and fails with NoMem (-ENOMEM) when the pool is short.
        h.s2.map(pa(pfn), pa(pfn), nr, leaf, true, &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)
    }

    fn unshare_hyp(&self, pfn: u64, nr: u64) -> Result<(), Errno> {
        let region = self.require_ram(pfn, nr)?;
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.for_host_pages(&h, pfn, nr, &mut |p, s, _| {
            if !host_may(Op::UnshareHyp, s) {
                v.note(Refusal::State);
            } else if h.meta.pinned(self.platform.tracked_index_in(region, p)) {
                v.note(Refusal::Busy);
            }
        });
        v.result()?;
        // Back to OWNED (unannotated, faulted in again on the next touch):
        // the host's devices reach the pages before and after, so the DMA
        // view stays as it is (not `host_unmap`). `set_invalid` counts its
        // table pages itself (NoMem: nothing written, -ENOMEM).
        h.s2.set_invalid(pa(pfn), nr, HostAnnotation::None.encode(), &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)
    }

    // ----------------------------------------------------------------------
    // VM lifecycle

    /// Find VM `handle` and lock it: -ENOENT if there is none, or if it was
    /// destroyed between the lookup and the lock (handles are never reused,
    /// so the slot's VM, if any, is then another).
    pub(crate) fn lock_vm(&self, handle: u64) -> Result<VmGuard<'_, P>, Errno> {
        if handle == 0 {
            return Err(Errno::ENOENT);
        }
        let slot = self
            .slots
            .iter()
            // Only a hint of where to look: the check under the slot's lock
            // below is what counts, so no ordering is needed here.
            .position(|s| s.handle.load(Ordering::Relaxed) == handle)
            .ok_or(Errno::ENOENT)?;
        let g = self.slots[slot].vm.lock();
        if g.as_ref().is_some_and(|vm| vm.handle == handle) {
            Ok(VmGuard { slot, g })
        } else {
            Err(Errno::ENOENT)
        }
    }

    /// Hold VM `handle`'s lock (when given and it exists) and the host's,
    /// in the lock order, as a long call on that VM would: for tests that
    /// show what does not wait for them.
    #[doc(hidden)]
    pub fn hold_locks(&self, handle: Option<u64>) -> impl Sized + '_ {
        let vm = handle.and_then(|h| self.lock_vm(h).ok());
        (vm, self.host.lock())
    }

    /// Lock the VM in `slot`: that of a vCPU that is running, which keeps
    /// the VM in place (VM_DESTROY is -EBUSY meanwhile).
    pub(crate) fn lock_slot(&self, slot: usize) -> Option<VmGuard<'_, P>> {
        let g = self.slots.get(slot)?.vm.lock();
        if g.is_some() {
            Some(VmGuard { slot, g })
        } else {
            None
        }
    }

    fn vm_create(&self, flags: u64, pfn: u64, nr: u64) -> Result<u64, Errno> {
        let mte = flags & host_interface::vm_flags::MTE != 0;
        if mte && !self.cpu.mte {
            return Err(Errno::EINVAL);
        }
        self.require_ram(pfn, nr)?;
        // Lock order: the table, the free slot's VM, the host's side. The
        // slot is free in the table, so no other call installs a VM there
        // meanwhile.
        let mut table = self.table.lock();
        let free = (0..MAX_VMS).find(|&s| table.used & (1 << s) == 0);
        let mut vm_lock = free.map(|s| self.slots[s].vm.lock());
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.check_host_states(&h, Op::DonateHyp, pfn, nr, &mut v);
        v.result()?;
        let (Some(slot), Some(vm_lock)) = (free, vm_lock.as_mut()) else {
            return Err(Errno::ENOMEM);
        };
        if nr < VM_CREATE_MIN_PAGES {
            return Err(Errno::ENOMEM);
        }
        // The stage-2 root: `root_pages` donated pages aligned to their
        // total size (a 40-bit IPA space needs 2 concatenated level-1 tables
        // where PAMax < 44 forbids starting at level 0). VM_CREATE_MIN_PAGES
        // holds for a 1-page root; a 2-page root may need up to 3 donated
        // pages to contain an 8 KiB-aligned pair (more for larger roots). No
        // such run: ENOMEM, before anything changed.
        let geometry = stage2_root_geometry(host_interface::GUEST_IPA_BITS, self.cpu.pa_bits);
        let root_pages = geometry.root_pages as u64;
        let root_pfn = pfn.next_multiple_of(root_pages);
        if root_pfn + root_pages > pfn + nr {
            return Err(Errno::ENOMEM);
        }
        h.s2.room_for(pa(pfn), nr, true)
            .map_err(|_| Errno::ENOMEM)?;
        self.host_unmap(&mut h, pfn, nr, HostAnnotation::Hyp)?;
        drop(h);
        // VMID 0 is the host's.
        let vmid = (slot + 1) as u16;
        let mut s2 = Stage2::new(
            self.phys.clone(),
            pa(root_pfn),
            host_interface::GUEST_IPA_BITS,
            self.cpu.pa_bits,
            self.cpu.fwb,
            vmid,
        );
        for p in (pfn..root_pfn).chain(root_pfn + root_pages..pfn + nr) {
            s2.pool_add(pa(p));
        }
        let handle = table.next_handle;
        table.next_handle += 1;
        table.used |= 1 << slot;
        **vm_lock = Some(Vm {
            handle,
            protected: flags & host_interface::vm_flags::PROTECTED != 0,
            mte,
            s2,
            vcpus: Vec::new(),
            dead: false,
        });
        self.slots[slot].handle.store(handle, Ordering::Release);
        Ok(handle)
    }

    fn vm_topup(&self, handle: u64, pfn: u64, nr: u64) -> Result<(), Errno> {
        let mut vm = self.lock_vm(handle)?;
        self.require_ram(pfn, nr)?;
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.check_host_states(&h, Op::DonateHyp, pfn, nr, &mut v);
        v.result()?;
        h.s2.room_for(pa(pfn), nr, true)
            .map_err(|_| Errno::ENOMEM)?;
        self.host_unmap(&mut h, pfn, nr, HostAnnotation::Hyp)?;
        drop(h);
        for p in pfn..pfn + nr {
            vm.s2.pool_add(pa(p));
        }
        Ok(())
    }

    fn vcpu_create(&self, handle: u64, run_pfn: u64) -> Result<u64, Errno> {
        let mut vm = self.lock_vm(handle)?;
        self.require_ram(run_pfn, 1)?;
        let mut h = self.host.lock();
        if !host_may(Op::PinRunPage, self.host_state(&h, run_pfn)) {
            return Err(Errno::EPERM);
        }
        let idx = self.platform.tracked_index(run_pfn);
        if h.meta.pinned(idx) {
            return Err(Errno::EBUSY);
        }
        if vm.vcpus.len() >= MAX_VCPUS {
            return Err(Errno::ENOMEM);
        }
        // The vCPU's saved state lives in a page of the VM's own pool.
        let ctx_page = vm.s2.pool_take().ok_or(Errno::ENOMEM)?;
        let index = vm.vcpus.len() as u64;
        let powered = !vm.protected || index == 0;
        vm.vcpus.push(Vcpu::new(run_pfn, ctx_page, powered));
        h.meta.set_pinned(idx, true);
        Ok(index)
    }

    fn vm_destroy(&self, handle: u64) -> Result<(), Errno> {
        let mut g = self.lock_vm(handle)?;
        if g.vcpus.iter().any(|c| c.running) {
            return Err(Errno::EBUSY);
        }
        let slot = g.slot;
        let Some(vm) = g.g.take() else {
            return Err(Errno::ENOENT);
        };
        // From here on, lookups of the handle find nothing; the slot stays
        // used in the table until its pages are back.
        self.slots[slot].handle.store(0, Ordering::Release);
        let mut h = self.host.lock();
        // No vCPU of the VM runs (checked above, under the VM's lock), and
        // none can start: its TLB entries go before its pages do.
        self.mnt().tlbi_vmid((slot + 1) as u16);
        // The guest's mappings are released as the walk meets them, in runs
        // of consecutive pages, so a VM of any size is torn down with a
        // fixed amount of memory (RULES.md S5):
        // - guest memory (and pages it shared back) must be scrubbed before
        //   the host sees it again: reclaimable;
        // - device registers go back untouched;
        // - borrowed pages go back when their last borrower is gone.
        let mut reclaimable = HostRun::new(HostAnnotation::Reclaimable);
        let mut to_host = HostRun::new(HostAnnotation::None);
        let ipa_pages = 1u64 << (host_interface::GUEST_IPA_BITS - 12);
        let _ = vm.s2.walk(0, ipa_pages, &mut |_, n, e| {
            let Entry::Mapped { pa, leaf, .. } = e else {
                return true;
            };
            let pfn = pa >> 12;
            let (class, _) = self.platform.classify(pfn);
            for p in pfn..pfn + n {
                match leaf.state {
                    PageState::Owned | PageState::SharedOwned if class == MemClass::Mmio => {
                        to_host.push(self, &mut h, p);
                    }
                    PageState::Owned | PageState::SharedOwned => reclaimable.push(self, &mut h, p),
                    PageState::SharedBorrowed => {
                        if h.meta.share_dec(self.platform.tracked_index(p)) == 0 {
                            to_host.push(self, &mut h, p);
                        }
                    }
                }
            }
            true
        });
        for c in &vm.vcpus {
            h.meta
                .set_pinned(self.platform.tracked_index(c.run_pfn), false);
            reclaimable.push(self, &mut h, c.ctx_page >> 12);
        }
        vm.s2
            .destroy(&mut |p| reclaimable.push(self, &mut h, p >> 12));
        to_host.flush(self, &mut h);
        reclaimable.flush(self, &mut h);
        drop(h);
        drop(g);
        // Last, with no other lock held (the table comes first in the
        // order): the slot may take a new VM.
        self.table.lock().used &= !(1 << slot);
        Ok(())
    }

    /// Host stage-2 updates for a set of pages, one call per run of
    /// consecutive pfns (pages of one VM are usually contiguous).
    fn host_unmap_runs(&self, h: &mut HostSide<P>, pfns: &mut [u64], a: HostAnnotation) {
        pfns.sort_unstable();
        let mut i = 0;
        while i < pfns.len() {
            let start = pfns[i];
            let mut n = 1;
            while i + (n as usize) < pfns.len() && pfns[i + n as usize] == start + n {
                n += 1;
            }
            let _ = self.host_unmap(h, start, n, a);
            i += n as usize;
        }
    }

    fn reclaim(&self, pfn: u64, nr: u64) -> Result<(), Errno> {
        match self.class_of(pfn, nr)? {
            (MemClass::Ram | MemClass::Coherent, _) => {}
            _ => return Err(Errno::EINVAL),
        }
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.check_host_states(&h, Op::Reclaim, pfn, nr, &mut v);
        v.result()?;
        h.s2.room_for(pa(pfn), nr, true)
            .map_err(|_| Errno::ENOMEM)?;
        let mut mnt = self.mnt();
        for p in pfn..pfn + nr {
            phys::zero_page(&self.phys, pa(p));
            mnt.zero_tags(pa(p), PAGE);
            mnt.dcache_clean_inval_poc(pa(p), PAGE);
        }
        mnt.dsb();
        self.host_unmap(&mut h, pfn, nr, HostAnnotation::None)
    }

    // ----------------------------------------------------------------------
    // Memory into guests

    /// Check that no gfn of the range is mapped (-EEXIST).
    fn check_gfns_free(s2: &Stage2<P>, gfn: u64, nr: u64, v: &mut Verdict) {
        let _ = s2.walk(pa(gfn), nr, &mut |_, _, e| {
            if matches!(e, Entry::Mapped { .. }) {
                v.note(Refusal::Exists);
                false
            } else {
                true
            }
        });
    }

    /// Cache maintenance before memory goes live in a guest (D9, and the
    /// clean to PoC a guest running with its MMU off needs without FWB).
    fn prepare_for_guest(&self, pfn: u64, nr: u64, exec: bool) {
        let mut mnt = self.mnt();
        if !self.cpu.fwb || (exec && !self.cpu.idc) {
            mnt.dcache_clean_inval_poc(pa(pfn), nr * PAGE);
            mnt.dsb();
        }
        if exec && !self.cpu.dic {
            mnt.icache_inval_pou();
        }
    }

    fn guest_leaf(prot: Prot, memtype: MemType, state: PageState) -> Leaf {
        Leaf {
            perms: Perms {
                r: prot.r(),
                w: prot.w(),
                x: prot.x(),
            },
            memtype,
            state,
        }
    }

    /// The host's side of lending pages to guests: SHARED_OWNED with the
    /// type every mapping of them uses (D7), one more borrower each.
    fn lend_to_guests(
        &self,
        h: &mut HostSide<P>,
        pfn: u64,
        nr: u64,
        class: MemClass,
        mt: MemType,
    ) -> Result<(), Errno> {
        let leaf = host_shared_leaf(class, mt);
        self.host_map(h, pfn, nr, leaf, mt == MemType::NormalWb)?;
        for p in pfn..pfn + nr {
            h.meta.share_inc(self.platform.tracked_index(p));
        }
        Ok(())
    }

    /// Map [pfn, pfn+nr) at gfn in a VM's stage-2 (page-granular; the pool
    /// was checked beforehand).
    fn guest_map(
        &self,
        vm: &mut Vm<P>,
        gfn: u64,
        pfn: u64,
        nr: u64,
        leaf: Leaf,
    ) -> Result<(), Errno> {
        vm.s2
            .map(pa(gfn), pa(pfn), nr, leaf, false, &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)
    }

    fn guest_share(
        &self,
        handle: u64,
        pfn: u64,
        gfn: u64,
        nr: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        let mut vm = self.lock_vm(handle)?;
        self.require_ram(pfn, nr)?;
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        if vm.protected {
            v.note(Refusal::State);
        }
        self.for_host_pages(&h, pfn, nr, &mut |p, s, _| {
            if !host_may(Op::GuestShare, s) {
                v.note(Refusal::State);
            } else if h.meta.share_count(self.platform.tracked_index(p)) >= MAX_SHARE_COUNT {
                v.note(Refusal::Busy);
            }
        });
        Self::check_gfns_free(&vm.s2, gfn, nr, &mut v);
        v.result()?;
        vm.s2
            .room_for(pa(gfn), nr, false)
            .map_err(|_| Errno::ENOMEM)?;
        h.s2.room_for(pa(pfn), nr, true)
            .map_err(|_| Errno::ENOMEM)?;

        self.lend_to_guests(&mut h, pfn, nr, MemClass::Ram, MemType::NormalWb)?;
        self.prepare_for_guest(pfn, nr, prot.x());
        let gleaf = Self::guest_leaf(prot, MemType::NormalWb, PageState::SharedBorrowed);
        self.guest_map(&mut vm, gfn, pfn, nr, gleaf)
    }

    fn guest_donate(
        &self,
        handle: u64,
        pfn: u64,
        gfn: u64,
        nr: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        let mut vm = self.lock_vm(handle)?;
        self.require_ram(pfn, nr)?;
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.check_host_states(&h, Op::GuestDonate, pfn, nr, &mut v);
        Self::check_gfns_free(&vm.s2, gfn, nr, &mut v);
        v.result()?;
        vm.s2
            .room_for(pa(gfn), nr, false)
            .map_err(|_| Errno::ENOMEM)?;
        h.s2.room_for(pa(pfn), nr, true)
            .map_err(|_| Errno::ENOMEM)?;

        self.host_unmap(&mut h, pfn, nr, HostAnnotation::Guest(vm.slot))?;
        self.prepare_for_guest(pfn, nr, prot.x());
        let gleaf = Self::guest_leaf(prot, MemType::NormalWb, PageState::Owned);
        self.guest_map(&mut vm, gfn, pfn, nr, gleaf)
    }

    #[allow(clippy::too_many_arguments)]
    fn guest_map_device(
        &self,
        handle: u64,
        pfn: u64,
        gfn: u64,
        nr: u64,
        prot: Prot,
        memtype: AbiMemType,
    ) -> Result<(), Errno> {
        let mut vm = self.lock_vm(handle)?;
        let (protected, mte) = (vm.protected, vm.mte);
        // Step 4: class and type.
        let (class, region) = self.class_of(pfn, nr)?;
        let mt = match (class, memtype) {
            (MemClass::Ram | MemClass::Hyp, _) => return Err(Errno::EINVAL), // D1
            (MemClass::Mmio, _)
                if !region.is_some_and(|r| self.platform.regions()[r].assignable) =>
            {
                return Err(Errno::EINVAL)
            }
            (MemClass::Mmio, AbiMemType::Device) => MemType::Device,
            (MemClass::Mmio, AbiMemType::NormalNc)
                if region.is_some_and(|r| self.platform.regions()[r].uncached_ok) =>
            {
                MemType::NormalNc
            }
            (MemClass::Mmio, _) => return Err(Errno::EINVAL), // D2
            (MemClass::Coherent, AbiMemType::NormalWb) => MemType::NormalWb,
            (MemClass::Coherent, _) => return Err(Errno::EINVAL), // D5
        };
        if mte {
            return Err(Errno::EINVAL); // D8
        }
        // Step 5: D3, then D4.
        if mt == MemType::NormalWb && !self.cpu.cacheable_device() {
            return Err(Errno::EFAULT);
        }
        if prot.x() && mt != MemType::NormalWb {
            return Err(Errno::ENOEXEC);
        }
        // Step 6: per page.
        let op = if protected {
            Op::MapDeviceProtected
        } else {
            Op::MapDeviceNormal
        };
        let mut h = self.host.lock();
        let mut v = Verdict::default();
        self.for_host_pages(&h, pfn, nr, &mut |p, s, memtype| {
            if !host_may(op, s) {
                v.note(Refusal::State);
                return;
            }
            if h.meta.share_count(self.platform.tracked_index(p)) >= MAX_SHARE_COUNT {
                v.note(Refusal::Busy);
            }
            // D7: a page already mapped in guests keeps its one type.
            if s == HostState::SharedGuests && memtype != Some(mt) {
                v.note(Refusal::MemType);
            }
        });
        Self::check_gfns_free(&vm.s2, gfn, nr, &mut v);
        v.result()?;
        vm.s2
            .room_for(pa(gfn), nr, false)
            .map_err(|_| Errno::ENOMEM)?;
        // With blocks or not, the count without blocks bounds it.
        h.s2.room_for(pa(pfn), nr, false)
            .map_err(|_| Errno::ENOMEM)?;

        let state = if protected {
            self.host_unmap(&mut h, pfn, nr, HostAnnotation::Guest(vm.slot))?;
            PageState::Owned
        } else {
            self.lend_to_guests(&mut h, pfn, nr, class, mt)?;
            PageState::SharedBorrowed
        };
        if mt == MemType::NormalWb {
            self.prepare_for_guest(pfn, nr, prot.x());
        }
        let gleaf = Self::guest_leaf(prot, mt, state);
        self.guest_map(&mut vm, gfn, pfn, nr, gleaf)
    }

    /// Shared body of GUEST_UNSHARE and GUEST_UNMAP_DEVICE: each undoes only
    /// its own kind of mapping (`device` says which).
    fn guest_unborrow(&self, handle: u64, gfn: u64, nr: u64, device: bool) -> Result<(), Errno> {
        let mut vm = self.lock_vm(handle)?;
        let mut v = Verdict::default();
        let mut pfns: Vec<u64> = Vec::new();
        let protected = vm.protected;
        let _ = vm.s2.walk(pa(gfn), nr, &mut |_, n, e| {
            match e {
                Entry::Invalid { .. } => v.note(Refusal::Unmapped),
                Entry::Mapped { pa: p, leaf, .. } => {
                    let (class, _) = self.platform.classify(p >> 12);
                    let is_device = class != MemClass::Ram;
                    if protected && device
                        || leaf.state != PageState::SharedBorrowed
                        || is_device != device
                    {
                        v.note(Refusal::State);
                    }
                    pfns.extend((p >> 12)..(p >> 12) + n);
                }
            }
            true
        });
        v.result()?;
        let mut h = self.host.lock();
        // The pages whose last borrower this call removes go back to the
        // host: work them out before changing anything, so the table pages
        // for those host updates are counted up front.
        pfns.sort_unstable();
        let mut freed: Vec<u64> = Vec::new();
        for group in pfns.chunk_by(|a, b| a == b) {
            let count = h.meta.share_count(self.platform.tracked_index(group[0]));
            if usize::from(count) <= group.len() {
                freed.push(group[0]);
            }
        }
        let host_need: usize = freed
            .chunk_by(|a, b| a + 1 == *b)
            .map(|run| h.s2.tables_needed(pa(run[0]), run.len() as u64, true))
            .sum();
        h.s2.room(host_need).map_err(|_| Errno::ENOMEM)?;
        vm.s2
            .room_for(pa(gfn), nr, false)
            .map_err(|_| Errno::ENOMEM)?;
        vm.s2
            .set_invalid(pa(gfn), nr, 0, &mut self.mnt())
            .map_err(|_| Errno::ENOMEM)?;
        for &p in &pfns {
            h.meta.share_dec(self.platform.tracked_index(p));
        }
        // Back to the host alone, with its class's own type (D7).
        self.host_unmap_runs(&mut h, &mut freed, HostAnnotation::None);
        Ok(())
    }

    fn guest_unshare(&self, handle: u64, gfn: u64, nr: u64) -> Result<(), Errno> {
        self.guest_unborrow(handle, gfn, nr, false)
    }

    fn guest_unmap_device(&self, handle: u64, gfn: u64, nr: u64) -> Result<(), Errno> {
        self.guest_unborrow(handle, gfn, nr, true)
    }
}

/// Pages released to one host annotation, gathered into runs of
/// consecutive pfns: each run is one host stage-2 update, written when the
/// next page does not extend it. Fixed size, whatever the number of pages.
struct HostRun {
    annotation: HostAnnotation,
    start: u64,
    len: u64,
}

impl HostRun {
    fn new(annotation: HostAnnotation) -> Self {
        Self {
            annotation,
            start: 0,
            len: 0,
        }
    }

    fn push<P: PhysMem, M: Maintenance + Clone>(
        &mut self,
        hv: &Hypervisor<P, M>,
        h: &mut HostSide<P>,
        pfn: u64,
    ) {
        if self.len != 0 && pfn == self.start + self.len {
            self.len += 1;
            return;
        }
        self.flush(hv, h);
        self.start = pfn;
        self.len = 1;
    }

    /// Write the pending run. The host pool covers tracked memory at page
    /// granularity (reserved at boot), so these updates cannot run short.
    fn flush<P: PhysMem, M: Maintenance + Clone>(
        &mut self,
        hv: &Hypervisor<P, M>,
        h: &mut HostSide<P>,
    ) {
        if self.len != 0 {
            let _ = hv.host_unmap(h, self.start, self.len, self.annotation);
            self.len = 0;
        }
    }
}

/// HYP_FEATURES bit names, for banners.
pub fn feature_names(bits: u64) -> impl Iterator<Item = &'static str> {
    [
        (fbits::FWB, "FWB"),
        (fbits::DIC, "DIC"),
        (fbits::IDC, "IDC"),
        (fbits::MTE, "MTE"),
        (fbits::CACHEABLE_DEVICE, "CACHEABLE_DEVICE"),
    ]
    .into_iter()
    .filter(move |(b, _)| bits & b != 0)
    .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_executes_a_shared_page_only_if_cacheable_memory() {
        let types = [
            MemType::Stage1,
            MemType::NormalWb,
            MemType::NormalNc,
            MemType::Device,
        ];
        for class in [MemClass::Ram, MemClass::Coherent, MemClass::Mmio] {
            for mt in types {
                let leaf = host_shared_leaf(class, mt);
                let cacheable = matches!(mt, MemType::Stage1 | MemType::NormalWb);
                assert_eq!(
                    leaf.perms.x,
                    cacheable && class != MemClass::Mmio,
                    "{class:?} {mt:?}"
                );
                assert!(leaf.perms.r && leaf.perms.w);
                assert_eq!(leaf.state, PageState::SharedOwned);
                let forced = if mt == MemType::Stage1 {
                    MemType::NormalWb
                } else {
                    mt
                };
                assert_eq!(leaf.memtype, forced);
            }
        }
    }

    #[test]
    fn the_first_refusal_in_precedence_wins() {
        use Refusal::*;
        let all = [Unmapped, State, Busy, MemType, Exists];
        for (i, &a) in all.iter().enumerate() {
            for (j, &b) in all.iter().enumerate() {
                let mut v = Verdict::default();
                v.note(a);
                v.note(b);
                let first = all[i.min(j)];
                assert_eq!(v.result(), Err(first.errno()), "{a:?} then {b:?}");
            }
        }
        assert_eq!(Verdict::default().result(), Ok(()));
        let errnos: Vec<Errno> = all.iter().map(|r| r.errno()).collect();
        assert_eq!(
            errnos,
            [
                Errno::ENOENT,
                Errno::EPERM,
                Errno::EBUSY,
                Errno::EINVAL,
                Errno::EEXIST
            ]
        );
    }
}
