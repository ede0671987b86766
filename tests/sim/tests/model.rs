//! Model-based test: random sequences of host calls, host memory accesses and
//! guest calls, with random and adversarial arguments, run against the core
//! and against a small reference model written from RULES.md's tables (not
//! from the core's code). After every step the results must agree, every
//! page's PAGE_QUERY and every guest mapping must match the model, and
//! I1–I4 must hold, checked by walking the real stage-2 tables.

use std::collections::{BTreeMap, BTreeSet};

use host_interface::{
    Errno, ExitReason, GuestCallId, HostCallId, RunPage, SMCCC_INVALID_PARAMETER,
};
use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor};
use pagetables::{Entry, PageState, PhysMem};
use platform::{qemu_virt, CpuFeatures, MemClass};
use proptest::prelude::*;
use scenario::{Machine, PageKind};
use sim::SimMachine;

// ---------------------------------------------------------------------------
// The reference model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Ram,
    Coherent,
    Mmio { uc: bool },
    Hyp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MOwner {
    Host,
    Hyp,
    Guest(u64),
    Nobody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HState {
    Owned,
    SharedOwned,
    SharedBorrowed,
    NoPage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mt {
    Device,
    Nc,
    Wb,
}

#[derive(Clone, Debug)]
struct MPage {
    class: Class,
    region: u8,
    owner: MOwner,
    host: HState,
    hyp_shared: bool,
    count: u32,
    pinned: bool,
    shared_mt: Option<Mt>,
    word: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Share,
    Donate,
    DeviceOwned,
    DeviceShared,
}

#[derive(Clone, Copy, Debug)]
struct MMap {
    pfn: u64,
    kind: Kind,
    /// Guest OWNED -> SHARED_OWNED after MEM_SHARE.
    shared_back: bool,
}

#[derive(Clone, Debug)]
struct MVm {
    protected: bool,
    mte: bool,
    vcpus: u32,
    hyp_pages: Vec<u64>,
    run_pages: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Model {
    pages: BTreeMap<u64, MPage>,
    vms: BTreeMap<u64, MVm>,
    maps: BTreeMap<(u64, u64), MMap>,
    guards: BTreeSet<(u64, u64)>,
    cpu: CpuFeatures,
}

type R = Result<(), Errno>;

/// Per-page precedence of ABI.md 3.1 step 6.
fn worst(errs: impl IntoIterator<Item = Errno>) -> R {
    let rank = |e: &Errno| match e {
        Errno::ENOENT => 0,
        Errno::EPERM => 1,
        Errno::EBUSY => 2,
        Errno::EINVAL => 3,
        Errno::EEXIST => 4,
        _ => 5,
    };
    match errs.into_iter().min_by_key(rank) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Model {
    fn page(&self, pfn: u64) -> &MPage {
        &self.pages[&pfn]
    }

    /// Class of a range, or EINVAL if it leaves one class/region.
    fn class(&self, pfn: u64, nr: u64) -> Result<Class, Errno> {
        let first = self.page(pfn);
        for p in pfn..pfn + nr {
            let pg = self.page(p);
            if pg.region != first.region {
                return Err(Errno::EINVAL);
            }
        }
        Ok(first.class)
    }

    fn in_universe(&self, pfn: u64, nr: u64) -> bool {
        (pfn..pfn + nr).all(|p| self.pages.contains_key(&p))
    }

    fn host_owned(&self, p: u64) -> bool {
        let pg = self.page(p);
        pg.owner == MOwner::Host && pg.host == HState::Owned
    }

    fn shared_with_guests(&self, p: u64) -> bool {
        let pg = self.page(p);
        pg.owner == MOwner::Host && pg.host == HState::SharedOwned && !pg.hyp_shared && pg.count > 0
    }

    fn vm(&self, h: u64) -> Result<&MVm, Errno> {
        self.vms.get(&h).ok_or(Errno::ENOENT)
    }

    fn share_hyp(&mut self, pfn: u64, nr: u64) -> R {
        if self.class(pfn, nr)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        worst(
            (pfn..pfn + nr)
                .filter(|&p| !self.host_owned(p))
                .map(|_| Errno::EPERM),
        )?;
        for p in pfn..pfn + nr {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.host = HState::SharedOwned;
            pg.hyp_shared = true;
        }
        Ok(())
    }

    fn unshare_hyp(&mut self, pfn: u64, nr: u64) -> R {
        if self.class(pfn, nr)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        worst((pfn..pfn + nr).filter_map(|p| {
            let pg = self.page(p);
            if !(pg.owner == MOwner::Host && pg.host == HState::SharedOwned && pg.hyp_shared) {
                Some(Errno::EPERM)
            } else if pg.pinned {
                Some(Errno::EBUSY)
            } else {
                None
            }
        }))?;
        for p in pfn..pfn + nr {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.host = HState::Owned;
            pg.hyp_shared = false;
        }
        Ok(())
    }

    fn donate_to_hyp_checks(&self, pfn: u64, nr: u64) -> R {
        if self.class(pfn, nr)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        worst(
            (pfn..pfn + nr)
                .filter(|&p| !self.host_owned(p))
                .map(|_| Errno::EPERM),
        )
    }

    fn take_for_hyp(&mut self, h: u64, pfn: u64, nr: u64) {
        for p in pfn..pfn + nr {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.owner = MOwner::Hyp;
            pg.host = HState::NoPage;
        }
        self.vms
            .get_mut(&h)
            .unwrap()
            .hyp_pages
            .extend(pfn..pfn + nr);
    }

    /// VM_CREATE checks (the handle comes from the core).
    fn vm_create_check(&self, flags: u64, pfn: u64, nr: u64) -> R {
        if flags & !3 != 0 || (flags & 2 != 0 && !self.cpu.mte) {
            return Err(Errno::EINVAL);
        }
        self.donate_to_hyp_checks(pfn, nr)?;
        if nr < hyp::VM_CREATE_MIN_PAGES || self.vms.len() >= hyp::MAX_VMS {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    fn vm_create_commit(&mut self, h: u64, flags: u64, pfn: u64, nr: u64) {
        self.vms.insert(
            h,
            MVm {
                protected: flags & 1 != 0,
                mte: flags & 2 != 0,
                vcpus: 0,
                hyp_pages: vec![],
                run_pages: vec![],
            },
        );
        self.take_for_hyp(h, pfn, nr);
    }

    fn vm_topup(&mut self, h: u64, pfn: u64, nr: u64) -> R {
        self.vm(h)?;
        self.donate_to_hyp_checks(pfn, nr)?;
        self.take_for_hyp(h, pfn, nr);
        Ok(())
    }

    fn vcpu_create(&mut self, h: u64, pfn: u64) -> R {
        let vm = self.vm(h)?;
        if self.class(pfn, 1)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        let pg = self.page(pfn);
        if !(pg.owner == MOwner::Host && pg.host == HState::SharedOwned && pg.hyp_shared) {
            return Err(Errno::EPERM);
        }
        if pg.pinned {
            return Err(Errno::EBUSY);
        }
        if vm.vcpus as usize >= hyp::MAX_VCPUS {
            return Err(Errno::ENOMEM);
        }
        let vm = self.vms.get_mut(&h).unwrap();
        vm.vcpus += 1;
        vm.run_pages.push(pfn);
        self.pages.get_mut(&pfn).unwrap().pinned = true;
        Ok(())
    }

    fn unborrow(&mut self, pfn: u64) {
        if let Some(pg) = self.pages.get_mut(&pfn) {
            pg.count -= 1;
            if pg.count == 0 {
                pg.host = HState::Owned;
                pg.shared_mt = None;
            }
        }
    }

    fn vm_destroy(&mut self, h: u64) -> R {
        let vm = self.vms.remove(&h).ok_or(Errno::ENOENT)?;
        let maps: Vec<((u64, u64), MMap)> = self
            .maps
            .iter()
            .filter(|((vh, _), _)| *vh == h)
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, m) in maps {
            self.maps.remove(&k);
            match m.kind {
                Kind::Share | Kind::DeviceShared => self.unborrow(m.pfn),
                Kind::Donate | Kind::DeviceOwned => {
                    if let Some(pg) = self.pages.get_mut(&m.pfn) {
                        if matches!(pg.class, Class::Mmio { .. }) {
                            pg.owner = MOwner::Host;
                            pg.host = HState::Owned;
                        } else {
                            pg.owner = MOwner::Nobody;
                            pg.host = HState::NoPage;
                        }
                    }
                }
            }
        }
        for p in vm.hyp_pages {
            if let Some(pg) = self.pages.get_mut(&p) {
                pg.owner = MOwner::Nobody;
            }
        }
        for p in vm.run_pages {
            if let Some(pg) = self.pages.get_mut(&p) {
                pg.pinned = false;
            }
        }
        self.guards.retain(|(vh, _)| *vh != h);
        Ok(())
    }

    fn reclaim(&mut self, pfn: u64, nr: u64) -> R {
        match self.class(pfn, nr)? {
            Class::Ram | Class::Coherent => {}
            _ => return Err(Errno::EINVAL),
        }
        worst(
            (pfn..pfn + nr)
                .filter(|&p| self.page(p).owner != MOwner::Nobody)
                .map(|_| Errno::EPERM),
        )?;
        for p in pfn..pfn + nr {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.owner = MOwner::Host;
            pg.host = HState::Owned;
            pg.word = 0;
        }
        Ok(())
    }

    fn gfn_errs(&self, h: u64, gfn: u64, nr: u64) -> Vec<Errno> {
        (gfn..gfn + nr)
            .filter(|&g| self.maps.contains_key(&(h, g)))
            .map(|_| Errno::EEXIST)
            .collect()
    }

    fn guest_share(&mut self, h: u64, pfn: u64, gfn: u64, nr: u64) -> R {
        let vm = self.vm(h)?.clone();
        if self.class(pfn, nr)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        let mut errs = self.gfn_errs(h, gfn, nr);
        if vm.protected {
            errs.push(Errno::EPERM);
        }
        for p in pfn..pfn + nr {
            if !(self.host_owned(p) || self.shared_with_guests(p)) {
                errs.push(Errno::EPERM);
            }
        }
        worst(errs)?;
        for (i, p) in (pfn..pfn + nr).enumerate() {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.host = HState::SharedOwned;
            pg.count += 1;
            pg.shared_mt = Some(Mt::Wb);
            self.maps.insert(
                (h, gfn + i as u64),
                MMap {
                    pfn: p,
                    kind: Kind::Share,
                    shared_back: false,
                },
            );
            self.guards.remove(&(h, gfn + i as u64));
        }
        Ok(())
    }

    fn guest_donate(&mut self, h: u64, pfn: u64, gfn: u64, nr: u64) -> R {
        self.vm(h)?;
        if self.class(pfn, nr)? != Class::Ram {
            return Err(Errno::EINVAL);
        }
        let mut errs = self.gfn_errs(h, gfn, nr);
        for p in pfn..pfn + nr {
            if !self.host_owned(p) {
                errs.push(Errno::EPERM);
            }
        }
        worst(errs)?;
        for (i, p) in (pfn..pfn + nr).enumerate() {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.owner = MOwner::Guest(h);
            pg.host = HState::NoPage;
            self.maps.insert(
                (h, gfn + i as u64),
                MMap {
                    pfn: p,
                    kind: Kind::Donate,
                    shared_back: false,
                },
            );
            self.guards.remove(&(h, gfn + i as u64));
        }
        Ok(())
    }

    fn guest_map_device(&mut self, h: u64, pfn: u64, gfn: u64, nr: u64, x: bool, mt: Mt) -> R {
        let vm = self.vm(h)?.clone();
        let class = self.class(pfn, nr)?;
        match (class, mt) {
            (Class::Ram | Class::Hyp, _) => return Err(Errno::EINVAL),
            (Class::Mmio { .. }, Mt::Wb) => return Err(Errno::EINVAL),
            (Class::Mmio { uc: false }, Mt::Nc) => return Err(Errno::EINVAL),
            (Class::Coherent, Mt::Device | Mt::Nc) => return Err(Errno::EINVAL),
            _ => {}
        }
        if vm.mte {
            return Err(Errno::EINVAL);
        }
        if mt == Mt::Wb && !(self.cpu.fwb && self.cpu.dic) {
            return Err(Errno::EFAULT);
        }
        if x && mt != Mt::Wb {
            return Err(Errno::ENOEXEC);
        }
        let mut errs = self.gfn_errs(h, gfn, nr);
        for p in pfn..pfn + nr {
            let ok = if vm.protected {
                self.host_owned(p)
            } else {
                self.host_owned(p) || self.shared_with_guests(p)
            };
            if !ok {
                errs.push(Errno::EPERM);
            } else if self.shared_with_guests(p) && self.page(p).shared_mt != Some(mt) {
                errs.push(Errno::EINVAL);
            }
        }
        worst(errs)?;
        for (i, p) in (pfn..pfn + nr).enumerate() {
            let pg = self.pages.get_mut(&p).unwrap();
            let kind = if vm.protected {
                pg.owner = MOwner::Guest(h);
                pg.host = HState::NoPage;
                Kind::DeviceOwned
            } else {
                pg.host = HState::SharedOwned;
                pg.count += 1;
                pg.shared_mt = Some(mt);
                Kind::DeviceShared
            };
            self.maps.insert(
                (h, gfn + i as u64),
                MMap {
                    pfn: p,
                    kind,
                    shared_back: false,
                },
            );
            self.guards.remove(&(h, gfn + i as u64));
        }
        Ok(())
    }

    fn guest_unmap(&mut self, h: u64, gfn: u64, nr: u64, device: bool) -> R {
        let vm = self.vm(h)?.clone();
        let mut errs = vec![];
        for g in gfn..gfn + nr {
            match self.maps.get(&(h, g)) {
                None => errs.push(Errno::ENOENT),
                Some(m) => {
                    let ok = if device {
                        !vm.protected && m.kind == Kind::DeviceShared
                    } else {
                        m.kind == Kind::Share
                    };
                    if !ok {
                        errs.push(Errno::EPERM);
                    }
                }
            }
        }
        worst(errs)?;
        for g in gfn..gfn + nr {
            let m = self.maps.remove(&(h, g)).unwrap();
            self.unborrow(m.pfn);
        }
        Ok(())
    }

    /// Guest MEM_SHARE / MEM_UNSHARE / MMIO_GUARD: x0 result.
    fn guest_call(&mut self, h: u64, call: GuestCallId, gfn: u64) -> u64 {
        let bad = SMCCC_INVALID_PARAMETER;
        match call {
            GuestCallId::MemShare => match self.maps.get_mut(&(h, gfn)) {
                Some(m) if m.kind == Kind::Donate && !m.shared_back => {
                    m.shared_back = true;
                    if let Some(pg) = self.pages.get_mut(&m.pfn) {
                        pg.host = HState::SharedBorrowed;
                    }
                    0
                }
                _ => bad,
            },
            GuestCallId::MemUnshare => match self.maps.get_mut(&(h, gfn)) {
                Some(m) if m.shared_back => {
                    m.shared_back = false;
                    if let Some(pg) = self.pages.get_mut(&m.pfn) {
                        pg.host = HState::NoPage;
                    }
                    0
                }
                _ => bad,
            },
            _ => {
                if self.maps.contains_key(&(h, gfn)) {
                    bad
                } else {
                    self.guards.insert((h, gfn));
                    0
                }
            }
        }
    }

    /// Whether the host may read/write the page.
    fn host_may_touch(&self, pfn: u64) -> bool {
        let pg = self.page(pfn);
        pg.class != Class::Hyp && pg.host != HState::NoPage
    }

    fn query(&self, pfn: u64) -> [u64; 3] {
        let pg = self.page(pfn);
        let class = match pg.class {
            Class::Ram => 0,
            Class::Mmio { .. } => 1,
            Class::Coherent => 2,
            Class::Hyp => 3,
        };
        if pg.class == Class::Hyp {
            return [1, 3, 3];
        }
        let owner = match pg.owner {
            MOwner::Host => 0,
            MOwner::Hyp => 1,
            MOwner::Guest(_) => 2,
            MOwner::Nobody => 3,
        };
        let state = match pg.host {
            HState::Owned => 0,
            HState::SharedOwned => 1,
            HState::SharedBorrowed => 2,
            HState::NoPage => 3,
        };
        [owner, state, class]
    }
}

// ---------------------------------------------------------------------------
// Driving the core

/// Runs one guest HVC on a vCPU and captures x0, then leaves as INTERRUPTED.
struct OneCall {
    regs: [u64; 7],
    issued: bool,
    result: Option<u64>,
}

impl<P: PhysMem> VcpuExecutor<P> for OneCall {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, P>, ctx: &mut VcpuContext) -> Trap {
        if !self.issued {
            self.issued = true;
            ctx.x[..7].copy_from_slice(&self.regs);
            Trap::Hvc
        } else {
            self.result = Some(ctx.x[0]);
            Trap::Irq
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    ShareHyp(usize, u64),
    UnshareHyp(usize, u64),
    VmCreate(u64, usize, u64),
    VmTopup(usize, usize, u64),
    VcpuCreate(usize, usize),
    VmDestroy(usize),
    Reclaim(usize, u64),
    GuestShare(usize, usize, u64, u64, u64),
    GuestUnshare(usize, u64, u64),
    GuestDonate(usize, usize, u64, u64, u64),
    GuestMapDevice(usize, usize, u64, u64, u64, u64),
    GuestUnmapDevice(usize, u64, u64),
    HostWrite(usize, u64),
    HostRead(usize),
    GuestCall(usize, u8, u64),
    /// Raw registers: reserved bits, unknown IDs, huge values.
    Garbage([u64; 7]),
}

const GFN0: u64 = 0x80000;

fn op_strategy(n_pages: usize) -> impl Strategy<Value = Op> {
    // Universe indices: 0-1 HYP, 2-21 RAM, 22-25 COHERENT, 26-27 MMIO,
    // 28-29 MMIO_UC. Device pages get extra weight so that several
    // mappings of one device page (D7) come up often.
    let p = prop_oneof![3 => 2usize..22, 2 => 22usize..n_pages, 1 => 0usize..n_pages];
    let nr = prop_oneof![8 => 1u64..4, 1 => Just(0u64), 1 => Just(513u64)];
    let h = 0usize..5;
    let gfn = 0u64..6;
    let prot = prop_oneof![Just(1u64), Just(3), Just(7), Just(5), Just(0), Just(8)];
    let mt = prop_oneof![Just(0u64), Just(0x100), Just(0x200), Just(0x300)];
    prop_oneof![
        (p.clone(), nr.clone()).prop_map(|(a, b)| Op::ShareHyp(a, b)),
        (p.clone(), nr.clone()).prop_map(|(a, b)| Op::UnshareHyp(a, b)),
        (
            prop_oneof![Just(0u64), Just(1), Just(2), Just(3), Just(4)],
            p.clone(),
            1u64..4
        )
            .prop_map(|(f, a, b)| Op::VmCreate(f, a, b)),
        (h.clone(), p.clone(), nr.clone()).prop_map(|(v, a, b)| Op::VmTopup(v, a, b)),
        (h.clone(), p.clone()).prop_map(|(v, a)| Op::VcpuCreate(v, a)),
        h.clone().prop_map(Op::VmDestroy),
        (p.clone(), nr.clone()).prop_map(|(a, b)| Op::Reclaim(a, b)),
        (h.clone(), p.clone(), gfn.clone(), nr.clone(), prot.clone())
            .prop_map(|(v, a, g, n, pr)| Op::GuestShare(v, a, g, n, pr)),
        (h.clone(), gfn.clone(), nr.clone()).prop_map(|(v, g, n)| Op::GuestUnshare(v, g, n)),
        (h.clone(), p.clone(), gfn.clone(), nr.clone(), prot.clone())
            .prop_map(|(v, a, g, n, pr)| Op::GuestDonate(v, a, g, n, pr)),
        (h.clone(), p.clone(), gfn.clone(), nr.clone(), prot, mt)
            .prop_map(|(v, a, g, n, pr, m)| Op::GuestMapDevice(v, a, g, n, pr, m)),
        (h.clone(), gfn.clone(), nr).prop_map(|(v, g, n)| Op::GuestUnmapDevice(v, g, n)),
        (p.clone(), any::<u64>()).prop_map(|(a, v)| Op::HostWrite(a, v)),
        p.prop_map(Op::HostRead),
        (h, 0u8..3, gfn).prop_map(|(v, c, g)| Op::GuestCall(v, c, g)),
        (
            prop_oneof![
                Just(0xC600_0100u64),
                Just(0xC600_0110),
                Just(0xC600_0130),
                Just(0xC600_0133),
                any::<u64>()
            ],
            any::<[u64; 6]>()
        )
            .prop_map(|(id, a)| {
                let mut r = [0u64; 7];
                r[0] = id;
                r[1..].copy_from_slice(&a);
                Op::Garbage(r)
            }),
    ]
}

struct Harness {
    m: SimMachine,
    model: Model,
    universe: Vec<u64>,
    /// Handles the ops pick from (index), including one that never exists.
    handles: Vec<u64>,
    harness_run: BTreeMap<u64, u64>,
}

fn encode_errno(r: R) -> [u64; 2] {
    match r {
        Ok(()) => [0, 0],
        Err(e) => [0, e.to_x1()],
    }
}

impl Harness {
    fn new(cpu: CpuFeatures) -> Self {
        let mut m = SimMachine::with_features(cpu).expect("board");
        // Universe: the last HYP pages and first RAM pages (adjacent), the
        // first COHERENT pages, and the MMIO pages around the boundary of
        // the DEVICE-only and uncached-allowed regions.
        let p = m.hyp().platform();
        let find = |c: MemClass, uc: Option<bool>| {
            *p.regions()
                .iter()
                .find(|r| r.class == c && uc.is_none_or(|u| r.assignable && r.uncached_ok == u))
                .expect("region")
        };
        let hyp = find(MemClass::Hyp, None);
        let ram = find(MemClass::Ram, None);
        let coh = find(MemClass::Coherent, None);
        let mm = find(MemClass::Mmio, Some(false));
        let uc = find(MemClass::Mmio, Some(true));
        assert_eq!(
            hyp.base_pfn + hyp.nr_pages,
            ram.base_pfn,
            "HYP and RAM adjacent in the QEMU map"
        );
        assert_eq!(
            mm.base_pfn + mm.nr_pages,
            uc.base_pfn,
            "MMIO regions adjacent in the QEMU map"
        );
        let mut pages = BTreeMap::new();
        let mut universe = vec![];
        let mut add = |pfn: u64, class: Class, region: u8| {
            universe.push(pfn);
            let owner = if class == Class::Hyp {
                MOwner::Hyp
            } else {
                MOwner::Host
            };
            let host = if class == Class::Hyp {
                HState::NoPage
            } else {
                HState::Owned
            };
            pages.insert(
                pfn,
                MPage {
                    class,
                    region,
                    owner,
                    host,
                    hyp_shared: false,
                    count: 0,
                    pinned: false,
                    shared_mt: None,
                    word: 0,
                },
            );
        };
        for k in 0..2 {
            add(hyp.base_pfn + hyp.nr_pages - 2 + k, Class::Hyp, 0);
        }
        for k in 0..20 {
            add(ram.base_pfn + k, Class::Ram, 1);
        }
        for k in 0..4 {
            add(coh.base_pfn + k, Class::Coherent, 2);
        }
        for k in 0..2 {
            add(
                mm.base_pfn + mm.nr_pages - 2 + k,
                Class::Mmio { uc: false },
                3,
            );
        }
        for k in 0..2 {
            add(uc.base_pfn + k, Class::Mmio { uc: true }, 4);
        }
        // Scenario-style allocations must not hand out universe pages.
        let _ = m.alloc(PageKind::Ram, 64);
        let mut model = Model {
            pages,
            vms: BTreeMap::new(),
            maps: BTreeMap::new(),
            guards: BTreeSet::new(),
            cpu,
        };
        let mut harness_run = BTreeMap::new();
        let mut handles = vec![];
        // Two VMs with a runnable vCPU, built from pages outside the universe.
        for flags in [1u64, 0] {
            let pool = m.alloc(PageKind::Ram, 80).unwrap();
            let r = m.call(HostCallId::VmCreate, &[flags, pool, 80]);
            assert_eq!(&r[..2], &[0, 0]);
            let h = r[2];
            let img = m.alloc(PageKind::Ram, 1).unwrap();
            let id = if flags == 1 {
                HostCallId::GuestDonate
            } else {
                HostCallId::GuestShare
            };
            assert_eq!(&m.call(id, &[h, img, 0x40000, 1, 7])[..2], &[0, 0]);
            let run = m.alloc(PageKind::Ram, 1).unwrap();
            assert_eq!(&m.call(HostCallId::ShareHyp, &[run, 1])[..2], &[0, 0]);
            assert_eq!(&m.call(HostCallId::VcpuCreate, &[h, run])[..2], &[0, 0]);
            hyp::phys::write_u64(
                m.phys(),
                (run << 12) + std::mem::offset_of!(RunPage, entry) as u64,
                0x4000_0000,
            );
            model.vms.insert(
                h,
                MVm {
                    protected: flags == 1,
                    mte: false,
                    vcpus: 1,
                    hyp_pages: vec![],
                    run_pages: vec![],
                },
            );
            harness_run.insert(h, run);
            handles.push(h);
        }
        handles.push(999);
        Self {
            m,
            model,
            universe,
            handles,
            harness_run,
        }
    }

    fn handle(&self, i: usize) -> u64 {
        self.handles.get(i).copied().unwrap_or(1000 + i as u64)
    }

    fn call(&mut self, id: HostCallId, args: &[u64]) -> [u64; 5] {
        self.m.call(id, args)
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match self.step_inner(op) {
            // The pool ran short: the call was refused and, as compare()
            // then checks, changed nothing.
            Err(e) if e == "ENOMEM" => Ok(()),
            r => r,
        }
    }

    fn step_inner(&mut self, op: &Op) -> Result<(), String> {
        let u = |i: usize| self.universe[i];
        let check = |got: [u64; 5], want: R, what: &str| -> Result<(), String> {
            let w = encode_errno(want);
            // A pool shortfall is allowed to refuse what the model permits,
            // as long as nothing changes (checked after the step).
            if got[0] == w[0] && got[1] == w[1] {
                Ok(())
            } else if want.is_ok() && got[0] == 0 && got[1] == Errno::ENOMEM.to_x1() {
                Err(String::from("ENOMEM"))
            } else {
                Err(format!(
                    "{what}: core x0={:#x} x1={:?}, model {want:?}",
                    got[0],
                    Errno::from_x1(got[1])
                ))
            }
        };
        match *op {
            Op::ShareHyp(p, nr) | Op::UnshareHyp(p, nr) | Op::Reclaim(p, nr) => {
                let pfn = u(p);
                let id = match op {
                    Op::ShareHyp(..) => HostCallId::ShareHyp,
                    Op::UnshareHyp(..) => HostCallId::UnshareHyp,
                    _ => HostCallId::Reclaim,
                };
                if nr == 0 || nr > 512 {
                    return check(self.call(id, &[pfn, nr]), Err(Errno::EINVAL), "bad nr");
                }
                if !self.model.in_universe(pfn, nr) {
                    return Ok(());
                }
                let got = self.call(id, &[pfn, nr]);
                let mut after = self.model.clone();
                let want = match id {
                    HostCallId::ShareHyp => after.share_hyp(pfn, nr),
                    HostCallId::UnshareHyp => after.unshare_hyp(pfn, nr),
                    _ => after.reclaim(pfn, nr),
                };
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                    if id == HostCallId::Reclaim {
                        for q in pfn..pfn + nr {
                            let v = sim::read_phys(self.m.phys(), q << 12);
                            if v != 0 {
                                return Err(format!(
                                    "I5: reclaimed page {q:#x} not scrubbed: {v:#x}"
                                ));
                            }
                        }
                    }
                }
            }
            Op::VmCreate(flags, p, nr) => {
                let pfn = u(p);
                if !self.model.in_universe(pfn, nr) {
                    return Ok(());
                }
                let got = self.call(HostCallId::VmCreate, &[flags, pfn, nr]);
                let want = self.model.vm_create_check(flags, pfn, nr);
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model.vm_create_commit(got[2], flags, pfn, nr);
                    self.handles.insert(0, got[2]);
                }
            }
            Op::VmTopup(h, p, nr) => {
                let (h, pfn) = (self.handle(h), u(p));
                if nr == 0 || nr > 512 {
                    return check(
                        self.call(HostCallId::VmTopup, &[h, pfn, nr]),
                        Err(Errno::EINVAL),
                        "bad nr",
                    );
                }
                if !self.model.in_universe(pfn, nr) {
                    return Ok(());
                }
                let got = self.call(HostCallId::VmTopup, &[h, pfn, nr]);
                let mut after = self.model.clone();
                let want = after.vm_topup(h, pfn, nr);
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                }
            }
            Op::VcpuCreate(h, p) => {
                let (h, pfn) = (self.handle(h), u(p));
                let got = self.call(HostCallId::VcpuCreate, &[h, pfn]);
                let mut after = self.model.clone();
                let want = after.vcpu_create(h, pfn);
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                }
            }
            Op::VmDestroy(h) => {
                let h = self.handle(h);
                let got = self.call(HostCallId::VmDestroy, &[h]);
                let want = self.model.vm_destroy(h);
                check(got, want, &format!("{op:?}"))?;
            }
            Op::GuestShare(h, p, g, nr, prot) | Op::GuestDonate(h, p, g, nr, prot) => {
                let (h, pfn, gfn) = (self.handle(h), u(p), GFN0 + g);
                let id = if matches!(op, Op::GuestShare(..)) {
                    HostCallId::GuestShare
                } else {
                    HostCallId::GuestDonate
                };
                if nr == 0 || nr > 512 || prot & 1 == 0 || prot & !7 != 0 {
                    return check(
                        self.call(id, &[h, pfn, gfn, nr, prot]),
                        Err(Errno::EINVAL),
                        "format",
                    );
                }
                if !self.model.in_universe(pfn, nr) {
                    return Ok(());
                }
                let got = self.call(id, &[h, pfn, gfn, nr, prot]);
                let mut after = self.model.clone();
                let want = if id == HostCallId::GuestShare {
                    after.guest_share(h, pfn, gfn, nr)
                } else {
                    after.guest_donate(h, pfn, gfn, nr)
                };
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                }
            }
            Op::GuestMapDevice(h, p, g, nr, prot, mt) => {
                let (h, pfn, gfn) = (self.handle(h), u(p), GFN0 + g);
                let regs = [h, pfn, gfn, nr, prot | mt];
                if nr == 0 || nr > 512 || prot & 1 == 0 || prot & !7 != 0 || mt == 0x300 {
                    return check(
                        self.call(HostCallId::GuestMapDevice, &regs),
                        Err(Errno::EINVAL),
                        "format",
                    );
                }
                if !self.model.in_universe(pfn, nr) {
                    return Ok(());
                }
                let got = self.call(HostCallId::GuestMapDevice, &regs);
                let mt = match mt {
                    0 => Mt::Device,
                    0x100 => Mt::Nc,
                    _ => Mt::Wb,
                };
                let mut after = self.model.clone();
                let want = after.guest_map_device(h, pfn, gfn, nr, prot & 4 != 0, mt);
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                }
            }
            Op::GuestUnshare(h, g, nr) | Op::GuestUnmapDevice(h, g, nr) => {
                let (h, gfn) = (self.handle(h), GFN0 + g);
                let device = matches!(op, Op::GuestUnmapDevice(..));
                let id = if device {
                    HostCallId::GuestUnmapDevice
                } else {
                    HostCallId::GuestUnshare
                };
                let got = self.call(id, &[h, gfn, nr]);
                if nr == 0 || nr > 512 {
                    return check(got, Err(Errno::EINVAL), "format");
                }
                let mut after = self.model.clone();
                let want = after.guest_unmap(h, gfn, nr, device);
                check(got, want, &format!("{op:?}"))?;
                if want.is_ok() {
                    self.model = after;
                }
            }
            Op::HostWrite(p, v) => {
                let pfn = u(p);
                let got = self.m.host_write(pfn << 12, v);
                let may = self.model.host_may_touch(pfn);
                if got.is_ok() != may {
                    return Err(format!(
                        "host write {pfn:#x}: core {got:?}, model allows={may}"
                    ));
                }
                if may {
                    self.model.pages.get_mut(&pfn).unwrap().word = v;
                }
            }
            Op::HostRead(p) => {
                let pfn = u(p);
                let got = self.m.host_read(pfn << 12);
                let pg = self.model.page(pfn);
                let may = self.model.host_may_touch(pfn);
                match got {
                    Ok(v) if may => {
                        if v != pg.word && pg.host != HState::SharedBorrowed {
                            return Err(format!(
                                "host read {pfn:#x}: {v:#x}, model {:#x}",
                                pg.word
                            ));
                        }
                    }
                    Err(_) if !may => {}
                    _ => {
                        return Err(format!(
                            "host read {pfn:#x}: core {got:?}, model allows={may}"
                        ))
                    }
                }
            }
            Op::GuestCall(h, c, g) => {
                let h = self.handle(h);
                let call = [
                    GuestCallId::MemShare,
                    GuestCallId::MemUnshare,
                    GuestCallId::MmioGuard,
                ][c as usize];
                let Some(_) = self.harness_run.get(&h) else {
                    return Ok(());
                };
                let mut regs = [0u64; 7];
                regs[0] = u64::from(call.id());
                regs[1] = (GFN0 + g) << 12;
                let mut exec = OneCall {
                    regs,
                    issued: false,
                    result: None,
                };
                let run = [u64::from(HostCallId::VcpuRun.id()), h, 0, 0, 0, 0, 0];
                let got = self.m.hyp_mut().host_call(&run, &mut exec).regs;
                if !self.model.vms.contains_key(&h) {
                    return check(got, Err(Errno::ENOENT), "run of a destroyed VM");
                }
                if got[1] != 0 || got[2] != ExitReason::Interrupted as u64 {
                    return Err(format!("VCPU_RUN: {got:x?}"));
                }
                let want = self.model.guest_call(h, call, GFN0 + g);
                if exec.result != Some(want) {
                    return Err(format!(
                        "{call:?} {g}: core {:?}, model {want:#x}",
                        exec.result
                    ));
                }
            }
            Op::Garbage(regs) => {
                // Only checks "no panic" and, below, "nothing changed" for
                // rejected calls; accepted ones are not modelled, so the
                // harness skips IDs that decode.
                if host_interface::HostCall::decode(&regs, self.m.hyp().cpu().pa_bits).is_ok() {
                    return Ok(());
                }
                let got = Machine::host_call(&mut self.m, regs);
                let rejected = got[0] == u64::MAX || got[1] == Errno::EINVAL.to_x1();
                if !rejected {
                    return Err(format!("malformed call {regs:x?} accepted: {got:x?}"));
                }
            }
        }
        Ok(())
    }

    /// Compare every universe page and guest mapping with the model, then
    /// check I1–I4 on the real tables.
    fn compare(&mut self) -> Result<(), String> {
        for &pfn in &self.universe.clone() {
            let got = self.call(HostCallId::PageQuery, &[pfn]);
            let want = self.model.query(pfn);
            if got[2..5] != want {
                return Err(format!(
                    "PAGE_QUERY {pfn:#x}: core {:?}, model {want:?} ({:?})",
                    &got[2..5],
                    self.model.page(pfn)
                ));
            }
            let (count, pinned) = self.m.hyp().page_meta(pfn);
            let pg = self.model.page(pfn);
            if u32::from(count) != pg.count || pinned != pg.pinned {
                return Err(format!(
                    "meta {pfn:#x}: core ({count}, {pinned}), model ({}, {})",
                    pg.count, pg.pinned
                ));
            }
        }
        let hv = self.m.hyp();
        let slots: BTreeMap<u64, usize> = hv.vms().map(|(s, vm)| (vm.handle(), s)).collect();
        for &h in self.model.vms.keys() {
            let Some(&slot) = slots.get(&h) else {
                return Err(format!("VM {h} missing in the core"));
            };
            let vm = hv.vms().find(|(s, _)| *s == slot).unwrap().1;
            for g in GFN0..GFN0 + 8 {
                let e = vm.stage2().lookup(g << 12);
                let m = self.model.maps.get(&(h, g));
                match (e, m) {
                    (Entry::Invalid { annotation }, None) => {
                        let guard = annotation == hyp::GUEST_MMIO_GUARD;
                        if guard != self.model.guards.contains(&(h, g)) {
                            return Err(format!(
                                "VM {h} gfn {g:#x}: guard {guard}, model disagrees"
                            ));
                        }
                    }
                    (Entry::Mapped { pa, leaf, .. }, Some(m)) => {
                        let want_state = match (m.kind, m.shared_back) {
                            (Kind::Share | Kind::DeviceShared, _) => PageState::SharedBorrowed,
                            (_, true) => PageState::SharedOwned,
                            _ => PageState::Owned,
                        };
                        if pa >> 12 != m.pfn || leaf.state != want_state {
                            return Err(format!(
                                "VM {h} gfn {g:#x}: core {pa:#x} {:?}, model {m:?}",
                                leaf.state
                            ));
                        }
                    }
                    (e, m) => return Err(format!("VM {h} gfn {g:#x}: core {e:?}, model {m:?}")),
                }
            }
        }
        if slots.len() != self.model.vms.len() {
            return Err(format!(
                "core has {} VMs, model {}",
                slots.len(),
                self.model.vms.len()
            ));
        }
        let ranges = sim::tracked_ranges(hv.platform());
        hyp::invariants::check(hv, &ranges)
    }
}

fn run_sequence(cpu: CpuFeatures, ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new(cpu);
    h.compare().map_err(|e| format!("initial: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        h.step(op).map_err(|e| format!("step {i} {op:?}: {e}"))?;
        h.compare()
            .map_err(|e| format!("after step {i} {op:?}: {e}"))?;
    }
    Ok(())
}

fn models() -> Vec<CpuFeatures> {
    ["cortex-a57", "cortex-a710", "neoverse-v1", "max"]
        .iter()
        .map(|m| platform::qemu_cpu(m, true).expect("model"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn core_agrees_with_model(model in 0usize..4, ops in prop::collection::vec(op_strategy(30), 1..48)) {
        let cpu = models()[model];
        if let Err(e) = run_sequence(cpu, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A fixed sequence through every transition, so a regression shows up even
/// if the random search misses it.
#[test]
fn walk_through_every_transition() {
    use Op::*;
    // Universe indices: 0-1 HYP, 2-21 RAM, 22-25 COHERENT, 26-27 MMIO, 28-29 MMIO_UC.
    let ops = vec![
        ShareHyp(2, 2),
        VcpuCreate(0, 2),
        UnshareHyp(2, 2),
        UnshareHyp(3, 1),
        VmCreate(1, 4, 3),
        VmTopup(0, 7, 1),
        GuestDonate(1, 8, 0, 2, 7),
        GuestShare(2, 10, 1, 2, 3),
        GuestShare(2, 10, 3, 1, 1),
        GuestUnshare(2, 1, 1),
        GuestMapDevice(2, 28, 4, 1, 3, 0x100),
        GuestMapDevice(1, 28, 4, 1, 3, 0x100),
        GuestMapDevice(1, 29, 4, 1, 3, 0x100),
        // D7: the same page again, at another gfn, with another type / the same type.
        GuestMapDevice(2, 28, 2, 1, 3, 0),
        GuestMapDevice(2, 28, 2, 1, 3, 0x100),
        GuestUnmapDevice(2, 2, 1),
        GuestMapDevice(1, 26, 5, 1, 3, 0),
        GuestUnmapDevice(1, 5, 1),
        GuestMapDevice(2, 22, 5, 1, 7, 0x200),
        GuestCall(1, 2, 3),
        GuestCall(1, 0, 0),
        HostRead(8),
        HostWrite(8, 5),
        GuestCall(1, 1, 0),
        HostRead(8),
        VmDestroy(1),
        HostRead(8),
        Reclaim(8, 2),
        HostRead(8),
        VmDestroy(0),
        Reclaim(4, 4),
    ];
    for cpu in models() {
        run_sequence(cpu, &ops).unwrap_or_else(|e| panic!("{cpu:?}: {e}"));
    }
    let _ = qemu_virt::RAM_BASE;
}
