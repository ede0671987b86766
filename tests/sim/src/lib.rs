//! The hypervisor core on the development machine.
//!
//! [`SimMachine`] is a QEMU `virt` board with the core at "EL2": its platform
//! description comes from a generated device tree plus the project's boot
//! manifest (the same one the EL2 image uses), its CPU features from the named
//! QEMU model. Host memory accesses go through the host's stage-2 exactly as
//! on hardware (a fault asks the core, which maps or refuses), and the test
//! guest is modelled by [`guest::SimGuest`], which obeys the guest's stage-2.
//! It implements [`scenario::Machine`], so scenario files run here with the
//! interpreter the real test host uses.

pub mod fuzzing;
pub mod guest;
pub mod maint;
pub mod mem;

use std::collections::HashMap;

use host_interface::{ExitReason, HostCallId, HostResult, RunPage, GUEST_IPA_BITS, PAGE_SIZE};
use hyp::{Access, Hypervisor};
use pagetables::{Entry, PhysMem};
use platform::{qemu_virt, CpuFeatures, MemClass, Platform};
use scenario::{Abort, GuestOp, GuestOutcome, Machine, PageKind};

pub use guest::SimGuest;
pub use maint::{CountingMaintenance, IoTlb, SimIommu, SimMaintenance};
pub use mem::SimPhys;

/// The core as the simulator instantiates it.
pub type SimHyp = Hypervisor<SimPhys, SimMaintenance>;

/// Input size of the DMA view: QEMU's SMMU has a 44-bit OAS, and all of the
/// board's memory lies far below.
pub const DMA_IPA_BITS: u32 = 40;

/// IPA where `boot` places the test guest (SCENARIOS.md).
pub const GUEST_BASE_IPA: u64 = 0x4000_0000;
/// Pages the simulated test guest image occupies.
pub const GUEST_IMAGE_PAGES: u64 = 16;

/// Bump allocator over one region of the board.
struct Cursor {
    next: u64,
    end: u64,
}

impl Cursor {
    fn take(&mut self, pages: u64) -> Option<u64> {
        let first = self.next;
        let end = first.checked_add(pages)?;
        if pages == 0 || end > self.end {
            return None;
        }
        self.next = end;
        Some(first)
    }
}

/// A simulated board running the hypervisor core.
pub struct SimMachine {
    hv: SimHyp,
    phys: SimPhys,
    mmio: mem::MmioStore,
    guest: SimGuest,
    ram: Cursor,
    coherent: Cursor,
    mmio_dev: Cursor,
    mmio_uc: Cursor,
    hyp_pfn: u64,
    /// The SMMU in front of the board's devices, with its TLB.
    iommu: SimIommu,
    /// (VM handle, vCPU index) -> run page pfn, learnt from VCPU_CREATE.
    run_pages: HashMap<(u64, u64), u64>,
    /// VMs whose test-guest image is in place.
    /// The first frame of each booted VM's image, by VM handle.
    booted: HashMap<u64, u64>,
    /// Times the core was entered (host calls, host faults), so that the
    /// fuzz targets skip their invariant walk after a step that never
    /// reached the core and so cannot have changed its state.
    core_entries: u64,
}

fn region_cursor(p: &Platform, class: MemClass, uncached: Option<bool>, skip_pages: u64) -> Cursor {
    let r = p
        .regions()
        .iter()
        .find(|r| r.class == class && uncached.is_none_or(|u| r.assignable && r.uncached_ok == u));
    match r {
        Some(r) => Cursor {
            next: r.base_pfn + skip_pages.min(r.nr_pages),
            end: r.base_pfn + r.nr_pages,
        },
        None => Cursor { next: 0, end: 0 },
    }
}

impl SimMachine {
    /// A fresh board with the CPU features of QEMU model `model`.
    pub fn new(model: &str) -> Result<Self, String> {
        let cpu = platform::qemu_cpu(model, true).ok_or_else(|| {
            format!(
                "unknown CPU model {model:?} (known: {})",
                platform::qemu_cpu_models().join(", ")
            )
        })?;
        Self::with_features(cpu)
    }

    /// A fresh board with explicit CPU features.
    pub fn with_features(cpu: CpuFeatures) -> Result<Self, String> {
        Self::build(cpu, None, platform::QEMU_VIRT_MANIFEST)
    }

    /// A fresh board of model `model` whose host stage-2 pool is the worst
    /// case the core reserves for tracked memory plus `spare` pages (for
    /// faults on other MMIO), rather than the whole HYP region. Writing
    /// the pool's free list touches every pool page, which dominates the
    /// cost of a fresh board: the fuzz targets build one per input.
    pub fn with_spare_pool(model: &str, spare: u64) -> Result<Self, String> {
        let cpu = platform::qemu_cpu(model, true)
            .ok_or_else(|| format!("unknown CPU model {model:?}"))?;
        Self::build(cpu, Some(spare), platform::QEMU_VIRT_MANIFEST)
    }

    /// A fresh board of model `model` described by `manifest` instead of
    /// the project's QEMU `virt` manifest (same device tree), e.g. with
    /// more MMIO regions.
    pub fn with_manifest(model: &str, manifest: &str) -> Result<Self, String> {
        let cpu = platform::qemu_cpu(model, true)
            .ok_or_else(|| format!("unknown CPU model {model:?}"))?;
        Self::build(cpu, None, manifest)
    }

    fn build(cpu: CpuFeatures, spare: Option<u64>, manifest: &str) -> Result<Self, String> {
        let fdt = platform::qemu_virt_fdt(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE);
        let platform = Platform::new(&fdt, manifest, &[], cpu.pa_bits)
            .map_err(|e| format!("platform description: {e:?}"))?;
        // Everything the build depends on besides the (fixed) device tree:
        // equal keys build equal memory (`SimPhys::built`).
        let key = format!("{cpu:?} {spare:?} {manifest}");
        let phys = SimPhys::for_board(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE, &key);
        let hyp_region = platform
            .regions()
            .iter()
            .find(|r| r.class == MemClass::Hyp)
            .copied()
            .ok_or("no HYP region in the manifest")?;
        // The first pages stand for the EL2 image; the rest feed the host
        // stage-2's table pool.
        let image = 256;
        // The last pages of the region hold the DMA view (as at EL2); the
        // rest feed the host stage-2's table pool.
        let dma_pages = hyp::DmaView::<SimPhys>::pages_needed(&platform, DMA_IPA_BITS);
        let hyp_end = hyp_region.base_pfn + hyp_region.nr_pages;
        let dma_base = (hyp_end - dma_pages) & !15;
        let mut end = dma_base;
        if let Some(spare) = spare {
            // The core's reservation (hyp's worst_case_tables) plus the
            // root, which needs at most 16 concatenated pages.
            let l3 = platform.tracked_pages().div_ceil(512);
            let needed = l3 + l3.div_ceil(512) + 8 + 16;
            end = end.min(hyp_region.base_pfn + image + needed + spare);
        }
        let mut pool = (hyp_region.base_pfn + image..end).map(|p| p << 12);
        let ram = region_cursor(&platform, MemClass::Ram, None, 0);
        let coherent = region_cursor(&platform, MemClass::Coherent, None, 0);
        let mmio_dev = region_cursor(&platform, MemClass::Mmio, Some(false), 0);
        let mmio_uc = region_cursor(&platform, MemClass::Mmio, Some(true), 0);
        let hyp_pfn = hyp_region.base_pfn + hyp_region.nr_pages / 2;
        let hv = Hypervisor::new(
            platform,
            cpu,
            phys.clone(),
            SimMaintenance::default(),
            &mut pool,
        )
        .map_err(|e| format!("hypervisor init: {e:?}"))?;
        let mut hv = hv;
        let iommu = SimIommu::default();
        let view = hyp::DmaView::new(
            phys.clone(),
            hv.platform(),
            DMA_IPA_BITS,
            &mut (dma_base..hyp_end).map(|p| p << 12),
            Box::new(iommu.clone()),
        )
        .map_err(|e| format!("DMA view: {e:?}"))?;
        hv.attach_dma_view(view);
        // The roots' tables keep pointers from the build (aarch64-paging's
        // `RootTable`), so later writes to them may not mark them touched.
        // (One at a time: each holds the host's lock.)
        let mut roots = Vec::new();
        let mut root_of = |s2: &pagetables::Stage2<SimPhys>| {
            let first = s2.root_pa() >> 12;
            roots.extend(first..first + s2.geometry().root_pages as u64);
        };
        root_of(&hv.host_stage2());
        if let Some(v) = hv.dma_view() {
            root_of(v.stage2());
        }
        phys.built(&roots);
        Ok(Self {
            hv,
            phys,
            mmio: mem::MmioStore::default(),
            guest: SimGuest::default(),
            ram,
            coherent,
            mmio_dev,
            mmio_uc,
            hyp_pfn,
            iommu,
            run_pages: HashMap::new(),
            booted: HashMap::new(),
            core_entries: 0,
        })
    }

    /// How many times the core has been entered so far: host calls
    /// (VCPU_RUN included) and host faults. Between two equal readings the
    /// core's state cannot have changed.
    pub fn core_entries(&self) -> u64 {
        self.core_entries
    }

    /// The run page of vCPU `vcpu` of VM `vm`, as the host learnt it from
    /// a successful VCPU_CREATE.
    pub fn run_page(&self, vm: u64, vcpu: u64) -> Option<u64> {
        self.run_pages.get(&(vm, vcpu)).copied()
    }

    /// The host frames a guest boot of VM `vm` gave it (donated to a
    /// protected VM, shared with a normal one): first frame and count.
    pub fn guest_image(&self, vm: u64) -> Option<(u64, u64)> {
        self.booted.get(&vm).map(|&pfn| (pfn, GUEST_IMAGE_PAGES))
    }

    /// The simulated SMMU (its TLB and the commands it was sent).
    pub fn iommu(&self) -> &SimIommu {
        &self.iommu
    }

    /// A device behind the SMMU reads or writes `pa`: whether the access
    /// goes through (through the SMMU's TLB, then the DMA view).
    pub fn device_access(&self, pa: u64) -> bool {
        let view = self.hv.dma_view();
        self.iommu
            .access(pa, |a| view.as_ref().is_some_and(|v| v.allows(a)))
    }

    /// The core.
    pub fn hyp(&self) -> &SimHyp {
        &self.hv
    }

    /// The core, mutably (benchmarks and tests drive it directly).
    pub fn hyp_mut(&mut self) -> &mut SimHyp {
        &mut self.hv
    }

    /// Simulated RAM.
    pub fn phys(&self) -> &SimPhys {
        &self.phys
    }

    /// Issue a host call with up to six arguments; the core's answer
    /// (x0..x4 as `HostResult` has them, 0 where the call has no output).
    pub fn call(&mut self, id: HostCallId, args: &[u64]) -> [u64; 5] {
        let mut regs = [0u64; 7];
        regs[0] = u64::from(id.id());
        for (r, a) in regs[1..].iter_mut().zip(args) {
            *r = *a;
        }
        self.core_call(regs).regs
    }

    /// A host call with registers x0..x6: the core's answer.
    pub fn core_call(&mut self, regs: [u64; 7]) -> HostResult {
        self.core_entries += 1;
        let result = self.hv.host_call(&regs, &mut self.guest);
        let r = result.regs;
        // Learn run pages the way a host would: from its own calls.
        if regs[0] == u64::from(HostCallId::VcpuCreate.id()) && r[0] == 0 && r[1] == 0 {
            self.run_pages.insert((regs[1], r[2]), regs[2]);
        }
        result
    }

    /// Make sure the host's stage-2 lets it make `access` at `pa`, faulting
    /// it in through the core as the hardware would. `Err` is the abort the
    /// host would take.
    pub fn host_touch(&mut self, pa: u64, access: Access) -> Result<(), Abort> {
        for _ in 0..2 {
            // A lookup only reads: its pages need no zeroing (`mem`).
            let entry = self
                .phys
                .reading(|| self.hv.host_stage2().lookup(pa & !0xfff));
            if let Entry::Mapped { pa: out, leaf, .. } = entry {
                let ok = match access {
                    Access::Read => leaf.perms.r,
                    Access::Write => leaf.perms.w,
                    Access::Exec => leaf.perms.x,
                };
                if ok && out == pa & !0xfff {
                    return Ok(());
                }
            }
            self.core_entries += 1;
            self.hv.host_fault(pa, access).map_err(|_| Abort)?;
        }
        Err(Abort)
    }

    fn mem_read(&self, pa: u64) -> u64 {
        if self.phys.contains(pa) {
            hyp::phys::read_u64(&self.phys, pa)
        } else {
            self.mmio.read(pa)
        }
    }

    fn mem_write(&mut self, pa: u64, v: u64) {
        if self.phys.contains(pa) {
            hyp::phys::write_u64(&self.phys, pa, v);
        } else {
            self.mmio.write(pa, v);
        }
    }

    fn run_field(&self, run_pfn: u64, off: usize) -> u64 {
        hyp::phys::read_u64(&self.phys, (run_pfn << 12) + off as u64)
    }

    fn set_run_field(&self, run_pfn: u64, off: usize, v: u64) {
        hyp::phys::write_u64(&self.phys, (run_pfn << 12) + off as u64, v);
    }

    /// One VCPU_RUN, interpreted for the scenario interpreter.
    fn run_once(&mut self, vm: u64, vcpu: u64) -> GuestOutcome {
        let mut regs = [0u64; 7];
        regs[0] = u64::from(HostCallId::VcpuRun.id());
        regs[1] = vm;
        regs[2] = vcpu;
        self.core_entries += 1;
        let r = self.hv.host_call(&regs, &mut self.guest).regs;
        if r[0] != 0 || r[1] != 0 {
            return GuestOutcome::CallFailed(r);
        }
        let Some(&run) = self.run_pages.get(&(vm, vcpu)) else {
            return GuestOutcome::Error("no run page known for this vCPU".into());
        };
        let reason = r[2];
        match ExitReason::from_u64(reason) {
            Some(ExitReason::Hvc) => {
                let a0 = self.run_field(run, core::mem::offset_of!(RunPage, hvc_args));
                let a1 = self.run_field(run, core::mem::offset_of!(RunPage, hvc_args) + 8);
                match a0 {
                    guest::TG_READY => GuestOutcome::Done(0),
                    guest::TG_DONE => GuestOutcome::Done(a1),
                    _ => GuestOutcome::Exit { reason, ipa: None },
                }
            }
            Some(ExitReason::Mmio | ExitReason::MemFault) => {
                let ipa = self.run_field(run, core::mem::offset_of!(RunPage, fault_ipa));
                GuestOutcome::Exit {
                    reason,
                    ipa: Some(ipa),
                }
            }
            _ => GuestOutcome::Exit { reason, ipa: None },
        }
    }
}

impl Machine for SimMachine {
    fn begin_file(&mut self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    fn end_file(&mut self) {}

    /// x0..x4 after the call, as the caller's registers hold them: the
    /// result where the call writes (SMCCC, ABI.md), the caller's own values
    /// elsewhere.
    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        let result = self.core_call(regs);
        let mut x = [regs[0], regs[1], regs[2], regs[3], regs[4]];
        result.write_back(regs[0], &mut x);
        x
    }

    fn host_read(&mut self, pa: u64) -> Result<u64, Abort> {
        self.host_touch(pa, Access::Read)?;
        Ok(self.mem_read(pa))
    }

    fn host_write(&mut self, pa: u64, value: u64) -> Result<(), Abort> {
        self.host_touch(pa, Access::Write)?;
        self.mem_write(pa, value);
        Ok(())
    }

    fn device_read(&mut self, pa: u64) -> Result<u64, String> {
        // Through the SMMU: a blocked read hands the device zeros.
        if self.device_access(pa) && self.phys.contains(pa) {
            Ok(self.mem_read(pa & !7))
        } else {
            Ok(0)
        }
    }

    fn device_write(&mut self, pa: u64, value: u64) -> Result<(), String> {
        // A blocked write is dropped.
        if self.device_access(pa) && self.phys.contains(pa) {
            self.mem_write(pa & !7, value);
        }
        Ok(())
    }

    fn host_fill(&mut self, pa: u64, len: u64, byte: u8) -> Result<(), Abort> {
        let word = u64::from_ne_bytes([byte; 8]);
        let mut a = pa & !7;
        // At the top of the address space the end saturates: the first
        // word there aborts anyway, being beyond the PA space.
        let end = pa.saturating_add(len);
        // The host's stage-2 is looked up once per page: between two words
        // of a page nothing enters the core, so what allowed the first
        // allows the rest.
        let mut allowed = None;
        while a < end {
            if allowed != Some(a >> 12) {
                self.host_touch(a, Access::Write)?;
                allowed = Some(a >> 12);
            }
            self.mem_write(a, word);
            a += 8;
        }
        Ok(())
    }

    fn alloc(&mut self, kind: PageKind, pages: u64) -> Result<u64, String> {
        let c = match kind {
            PageKind::Ram => &mut self.ram,
            PageKind::Coherent => &mut self.coherent,
            PageKind::Mmio => &mut self.mmio_dev,
            PageKind::MmioUc => &mut self.mmio_uc,
        };
        c.take(pages)
            .ok_or_else(|| format!("no {pages} free {kind:?} pages left"))
    }

    fn hyp_pfn(&mut self) -> u64 {
        self.hyp_pfn
    }

    fn pa_limit_pfn(&mut self) -> u64 {
        1u64 << (self.hv.cpu().pa_bits - 12)
    }

    fn guest_boot(&mut self, vm: u64, vcpu: u64, protected: bool) -> GuestOutcome {
        let Some(&run) = self.run_pages.get(&(vm, vcpu)) else {
            return GuestOutcome::Error(format!(
                "vCPU {vcpu} of VM {vm} was not created by this scenario"
            ));
        };
        if !self.booted.contains_key(&vm) {
            let pfn = match self.alloc(PageKind::Ram, GUEST_IMAGE_PAGES) {
                Ok(p) => p,
                Err(e) => return GuestOutcome::Error(e),
            };
            let id = if protected {
                HostCallId::GuestDonate
            } else {
                HostCallId::GuestShare
            };
            let r = self.call(
                id,
                &[
                    vm,
                    pfn,
                    GUEST_BASE_IPA >> 12,
                    GUEST_IMAGE_PAGES,
                    host_interface::prot::R | host_interface::prot::W | host_interface::prot::X,
                ],
            );
            if r[0] != 0 || r[1] != 0 {
                return GuestOutcome::CallFailed(r);
            }
            self.booted.insert(vm, pfn);
        }
        self.set_run_field(run, core::mem::offset_of!(RunPage, entry), GUEST_BASE_IPA);
        self.set_run_field(run, core::mem::offset_of!(RunPage, x0), 0);
        self.run_once(vm, vcpu)
    }

    fn guest_op(&mut self, vm: u64, vcpu: u64, op: GuestOp) -> GuestOutcome {
        self.guest.post(vm, vcpu, op);
        self.run_once(vm, vcpu)
    }

    fn guest_resume(&mut self, vm: u64, vcpu: u64, mmio_read: u64) -> GuestOutcome {
        if let Some(&run) = self.run_pages.get(&(vm, vcpu)) {
            self.set_run_field(
                run,
                core::mem::offset_of!(RunPage, mmio_read_data),
                mmio_read,
            );
            for k in 0..4 {
                self.set_run_field(run, core::mem::offset_of!(RunPage, hvc_results) + 8 * k, 0);
            }
        }
        self.run_once(vm, vcpu)
    }
}

/// The host-physical pages a test may check invariants over: every tracked
/// region (RAM, COHERENT, assignable MMIO) as (first pfn, count).
pub fn tracked_ranges(p: &Platform) -> Vec<(u64, u64)> {
    p.regions()
        .iter()
        .filter(|r| r.class != MemClass::Hyp && (r.class != MemClass::Mmio || r.assignable))
        .map(|r| (r.base_pfn, r.nr_pages))
        .collect()
}

/// Size of the guest IPA space in pages.
pub const GUEST_IPA_PAGES: u64 = 1 << (GUEST_IPA_BITS - 12);

/// Bytes per page.
pub const PAGE: u64 = PAGE_SIZE;

/// Physical memory helper for callers outside the core.
pub fn read_phys(phys: &SimPhys, pa: u64) -> u64 {
    let _ = phys.phys_to_virt(pa);
    hyp::phys::read_u64(phys, pa)
}
