//! Per-call conformance tests, written from ABI.md sections 1-3, RULES.md
//! and the README's "Decisions where the specification is silent".
//!
//! One test per host call of ABI.md 1: its success case (outputs and the
//! PAGE_QUERY states and guest mappings it leaves) and every errno ABI.md 3
//! lets it return. After every refused call the test checks that nothing
//! changed: PAGE_QUERY, share count and pin, host stage-2 entry and contents
//! of every page the test touched, every VM's stage-2 mappings and pool, and
//! the host's pool. Then one test for the guest calls of ABI.md 2, one for
//! NOT_SUPPORTED and one for the error precedence of ABI.md 3.1. Every test
//! runs on cortex-a57 (no FWB/DIC/IDC/MTE), cortex-a710 (FWB, IDC, MTE),
//! neoverse-v1 (FWB, DIC, IDC) and max (all).

use std::collections::VecDeque;
use std::mem::offset_of;

use host_interface::{
    inject_irq, psci, Errno, ExitReason, HostCallId as Id, RunPage, KVM_UID,
    SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED,
};
use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor, MAX_SHARE_COUNT};
use pagetables::{Entry, Leaf, MemType, PageState, Perms};
use platform::qemu_virt;
use scenario::{Machine, PageKind};
use sim::{SimMachine, SimPhys, GUEST_IPA_PAGES};
use Errno::*;

// ---------------------------------------------------------------------------
// Numbers of the ABI and of the board

const MODELS: [&str; 4] = ["cortex-a57", "cortex-a710", "neoverse-v1", "max"];

/// HYP_FEATURES bit 4 (FWB and DIC on every CPU) on this QEMU model.
fn cacheable_device(model: &str) -> bool {
    matches!(model, "neoverse-v1" | "max")
}

/// HYP_FEATURES bit 3 on this QEMU model (the simulator runs with mte=on).
fn has_mte(model: &str) -> bool {
    matches!(model, "cortex-a710" | "max")
}

/// x0..x4 of an unknown function ID.
const NS: [u64; 5] = [u64::MAX, 0, 0, 0, 0];
/// x0..x4 of a success with no outputs.
const OK: [u64; 5] = [0; 5];

// PAGE_QUERY answers (x2 owner, x3 host state, x4 class).
const HOST_RAM: [u64; 3] = [0, 0, 0];
const HOST_SHARED_RAM: [u64; 3] = [0, 1, 0];
const HYP_RAM: [u64; 3] = [1, 3, 0];
const GUEST_RAM: [u64; 3] = [2, 3, 0];
const BORROWED_RAM: [u64; 3] = [2, 2, 0];
const RECLAIMABLE_RAM: [u64; 3] = [3, 3, 0];
const HOST_MMIO: [u64; 3] = [0, 0, 1];
const HOST_SHARED_MMIO: [u64; 3] = [0, 1, 1];
const GUEST_MMIO: [u64; 3] = [2, 3, 1];
const HOST_COH: [u64; 3] = [0, 0, 2];
const HOST_SHARED_COH: [u64; 3] = [0, 1, 2];
const GUEST_COH: [u64; 3] = [2, 3, 2];
const RECLAIMABLE_COH: [u64; 3] = [3, 3, 2];
const HYP_PAGE: [u64; 3] = [1, 3, 3];

// prot and memtype bits.
const R: u64 = 1;
const RW: u64 = 3;
const RX: u64 = 5;
const RWX: u64 = 7;
const DEV: u64 = 0;
const NC: u64 = 0x100;
const WB: u64 = 0x200;

// VM_CREATE flags.
const NORMAL: u64 = 0;
const PROTECTED: u64 = 1;
const MTE: u64 = 2;

/// Region edges of the QEMU virt board (boot manifest), as pfns.
const HYP_FIRST: u64 = qemu_virt::HYP_BASE >> 12;
const RAM_FIRST: u64 = (qemu_virt::HYP_BASE + qemu_virt::HYP_SIZE) >> 12;
const COH_FIRST: u64 = qemu_virt::COHERENT_BASE >> 12;
const COH_END: u64 = (qemu_virt::COHERENT_BASE + qemu_virt::COHERENT_SIZE) >> 12;
const MMIO_END: u64 = (qemu_virt::MMIO_BASE + qemu_virt::MMIO_SIZE) >> 12;
const UC_END: u64 = (qemu_virt::MMIO_UC_BASE + qemu_virt::MMIO_UC_SIZE) >> 12;
const UART: u64 = qemu_virt::UART_BASE >> 12;
const GICD: u64 = qemu_virt::GICD_BASE >> 12;

/// Guest call IDs (ABI.md 2).
const SMCCC_VERSION: u64 = 0x8000_0000;
const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;
const VENDOR_HYP_CALL_UID: u64 = 0x8600_FF01;
const VENDOR_HYP_KVM_FEATURES: u64 = 0x8600_0000;
const HYP_MEMINFO: u64 = 0xC600_0002;
const MEM_SHARE: u64 = 0xC600_0003;
const MEM_UNSHARE: u64 = 0xC600_0004;
const MMIO_GUARD: u64 = 0xC600_0007;
const PSCI_VERSION: u64 = 0x8400_0000;
const PSCI_MIGRATE_INFO_TYPE: u64 = 0x8400_0006;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
const PSCI_FEATURES: u64 = 0x8400_000A;
const INVALID_PARAMETER: u64 = SMCCC_INVALID_PARAMETER;

/// Run-page field offsets (host-interface layout).
const RP_ENTRY: usize = offset_of!(RunPage, entry);
const RP_X0: usize = offset_of!(RunPage, x0);
const RP_EXIT: usize = offset_of!(RunPage, exit_reason);
const RP_FAULT_IPA: usize = offset_of!(RunPage, fault_ipa);
const RP_FAULT_FLAGS: usize = offset_of!(RunPage, fault_flags);
const RP_MMIO_READ: usize = offset_of!(RunPage, mmio_read_data);
const RP_HVC_ARGS: usize = offset_of!(RunPage, hvc_args);
const RP_HVC_RESULTS: usize = offset_of!(RunPage, hvc_results);
const RP_SYSTEM_EVENT: usize = offset_of!(RunPage, system_event);
const RP_INJECT: usize = offset_of!(RunPage, inject_irq);
const RP_TIMER_DEADLINE: usize = offset_of!(RunPage, timer_deadline);
const RP_KICK: usize = offset_of!(RunPage, kick_vcpus);

fn perms(r: bool, w: bool, x: bool) -> Perms {
    Perms { r, w, x }
}

fn exit(e: ExitReason) -> [u64; 5] {
    [0, 0, e as u64, 0, 0]
}

// ---------------------------------------------------------------------------
// A scripted guest: each entry takes the next action; every entry's context
// is logged, so a guest call's results are in the entry after it.

enum Act {
    Call([u64; 7]),
    Trap(Trap),
    /// The guest armed its virtual timer for this deadline, then WFI.
    TimerWfi(u64),
}

struct Script {
    acts: VecDeque<Act>,
    log: Vec<VcpuContext>,
}

impl VcpuExecutor<SimPhys> for Script {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, SimPhys>, ctx: &mut VcpuContext) -> Trap {
        self.log.push(*ctx);
        match self.acts.pop_front() {
            Some(Act::Call(regs)) => {
                ctx.x[..7].copy_from_slice(&regs);
                Trap::Hvc
            }
            Some(Act::Trap(t)) => t,
            Some(Act::TimerWfi(deadline)) => {
                ctx.timer_deadline = deadline;
                Trap::Wfi
            }
            None => Trap::Irq,
        }
    }
}

fn greg(id: u64, args: &[u64]) -> [u64; 7] {
    let mut r = [0u64; 7];
    r[0] = id;
    r[1..=args.len()].copy_from_slice(args);
    r
}

fn data_abort(ipa: u64, write: bool) -> Trap {
    Trap::DataAbort {
        ipa,
        write,
        size: 8,
        reg: 1,
        esr: (0x24 << 26) | (1 << 24) | (3 << 22) | (1 << 16) | (u64::from(write) << 6),
    }
}

// ---------------------------------------------------------------------------
// "Nothing changed": everything a refused call must leave as it was.

type PageSnap = (u64, [u64; 5], (u16, bool), Entry, Option<u64>);
type VmSnap = (u64, usize, bool, usize, usize, Vec<(u64, u64, Entry)>);

#[derive(PartialEq)]
struct Snap {
    pages: Vec<PageSnap>,
    host_pool: usize,
    vms: Vec<VmSnap>,
}

fn diff(a: &Snap, b: &Snap) -> String {
    let mut out = Vec::new();
    for (x, y) in a.pages.iter().zip(&b.pages) {
        if x != y {
            out.push(format!("page {:#x}: {x:x?} -> {y:x?}", x.0));
        }
    }
    if a.host_pool != b.host_pool {
        out.push(format!("host pool {} -> {}", a.host_pool, b.host_pool));
    }
    if a.vms.len() != b.vms.len() {
        out.push(format!("{} VMs -> {}", a.vms.len(), b.vms.len()));
    }
    for (x, y) in a.vms.iter().zip(&b.vms) {
        if x.0 != y.0 || x.1 != y.1 || x.2 != y.2 || x.3 != y.3 || x.4 != y.4 {
            out.push(format!(
                "VM {} (slot, protected, pool, tables) {:?} -> VM {} {:?}",
                x.0,
                (x.1, x.2, x.3, x.4),
                y.0,
                (y.1, y.2, y.3, y.4)
            ));
        }
        if x.5 != y.5 {
            let d: Vec<_> =
                x.5.iter()
                    .zip(&y.5)
                    .filter(|(p, q)| p != q)
                    .take(4)
                    .collect();
            out.push(format!(
                "VM {} mappings ({} -> {} runs): {d:x?}",
                x.0,
                x.5.len(),
                y.5.len()
            ));
        }
    }
    out.join("\n")
}

// ---------------------------------------------------------------------------
// The harness

struct T {
    m: SimMachine,
    model: &'static str,
    /// Pages whose state every refused call must leave alone.
    watch: Vec<u64>,
    /// First pfn beyond the physical address space.
    lim: u64,
}

impl T {
    fn new(model: &'static str) -> Self {
        Self::new_on(model, SimMachine::new(model).expect("CPU model"))
    }

    /// On a board built some other way.
    fn new_on(model: &'static str, mut m: SimMachine) -> Self {
        let lim = m.pa_limit_pfn();
        let hyp = m.hyp_pfn();
        let watch = vec![
            hyp,
            HYP_FIRST,
            RAM_FIRST - 1,
            RAM_FIRST,
            COH_FIRST - 1,
            COH_FIRST,
            COH_END - 1,
            COH_END,
            MMIO_END - 1,
            MMIO_END,
            UC_END - 1,
            UC_END,
            UART,
        ];
        T {
            m,
            model,
            watch,
            lim,
        }
    }

    fn alloc(&mut self, kind: PageKind, n: u64) -> u64 {
        let p = self.m.alloc(kind, n).expect("board memory");
        self.watch.extend(p..p + n);
        p
    }
    fn ram(&mut self, n: u64) -> u64 {
        self.alloc(PageKind::Ram, n)
    }
    fn mmio(&mut self, n: u64) -> u64 {
        self.alloc(PageKind::Mmio, n)
    }
    fn mmio_uc(&mut self, n: u64) -> u64 {
        self.alloc(PageKind::MmioUc, n)
    }
    fn coherent(&mut self, n: u64) -> u64 {
        self.alloc(PageKind::Coherent, n)
    }
    fn hyp_pfn(&mut self) -> u64 {
        self.m.hyp_pfn()
    }

    fn call(&mut self, id: Id, args: &[u64]) -> [u64; 5] {
        self.m.call(id, args)
    }

    /// A call that must succeed; returns x2..x4.
    #[track_caller]
    fn ok(&mut self, id: Id, args: &[u64]) -> [u64; 3] {
        let r = self.call(id, args);
        assert!(
            r[0] == 0 && r[1] == 0,
            "[{}] {id:?} {args:#x?}: expected success, got {r:#x?} ({:?})",
            self.model,
            Errno::from_x1(r[1])
        );
        [r[2], r[3], r[4]]
    }

    /// A call that must succeed with no outputs (x2..x4 = 0).
    #[track_caller]
    fn ok0(&mut self, id: Id, args: &[u64]) {
        let r = self.call(id, args);
        assert_eq!(
            r,
            OK,
            "[{}] {id:?} {args:#x?}: expected plain success ({:?})",
            self.model,
            Errno::from_x1(r[1])
        );
    }

    /// A call that must fail with `e` and change nothing.
    #[track_caller]
    fn err(&mut self, id: Id, args: &[u64], e: Errno) {
        let before = self.snap();
        let r = self.call(id, args);
        assert_eq!(
            r,
            [0, e.to_x1(), 0, 0, 0],
            "[{}] {id:?} {args:#x?}: expected {e:?}, got {:?}",
            self.model,
            if r[0] == 0 {
                format!("{:?}", Errno::from_x1(r[1]))
            } else {
                format!("{r:#x?}")
            }
        );
        self.unchanged(&before, &format!("{id:?} {args:#x?} -> {e:?}"));
    }

    /// Raw registers that must give `want` and change nothing.
    #[track_caller]
    fn raw(&mut self, regs: [u64; 7], want: [u64; 5]) {
        let before = self.snap();
        let r = self.m.core_call(regs).regs;
        assert_eq!(r, want, "[{}] registers {regs:#x?}", self.model);
        // What the caller's registers hold afterwards (SMCCC): the answer
        // where the call writes, its own values elsewhere.
        let x = Machine::host_call(&mut self.m, regs);
        let kept = host_interface::HostResult { regs: want }.written(regs[0]);
        assert_eq!(x[..kept], want[..kept], "[{}] {regs:#x?}", self.model);
        assert_eq!(x[kept..], regs[kept..5], "[{}] {regs:#x?} kept", self.model);
        self.unchanged(&before, &format!("{regs:#x?}"));
    }

    #[track_caller]
    fn unchanged(&mut self, before: &Snap, what: &str) {
        let after = self.snap();
        if *before != after {
            panic!(
                "[{}] refused {what} changed state:\n{}",
                self.model,
                diff(before, &after)
            );
        }
    }

    fn snap(&mut self) -> Snap {
        let mut pages = Vec::new();
        for pfn in self.watch.clone() {
            let q = self.call(Id::PageQuery, &[pfn]);
            let hv = self.m.hyp();
            let meta = hv.page_meta(pfn);
            let host = hv.host_stage2().lookup(pfn << 12);
            // Contents of pages the host or a guest can see (the hypervisor's
            // own pages hold its tables and vCPU state).
            let content = if q[2] != 1 { self.content(pfn) } else { None };
            pages.push((pfn, q, meta, host, content));
        }
        let hv = self.m.hyp();
        let mut vms = Vec::new();
        for (slot, vm) in hv.vms() {
            let mut maps = Vec::new();
            let _ = vm.stage2().walk(0, GUEST_IPA_PAGES, &mut |ipa, n, e| {
                if e != (Entry::Invalid { annotation: 0 }) {
                    maps.push((ipa, n, e));
                }
                true
            });
            vms.push((
                vm.handle(),
                slot,
                vm.protected(),
                vm.stage2().pool_len(),
                vm.stage2().table_pages(),
                maps,
            ));
        }
        Snap {
            pages,
            host_pool: hv.host_stage2().pool_len(),
            vms,
        }
    }

    fn content(&self, pfn: u64) -> Option<u64> {
        let phys = self.m.phys();
        if !phys.contains(pfn << 12) {
            return None;
        }
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for i in 0..512 {
            let w = hyp::phys::read_u64(phys, (pfn << 12) + i * 8);
            h = (h ^ w).wrapping_mul(0x100_0000_01b3);
        }
        Some(h)
    }

    fn is_zero(&self, pfn: u64) -> bool {
        (0..512).all(|i| hyp::phys::read_u64(self.m.phys(), (pfn << 12) + i * 8) == 0)
    }

    /// First word of a page, read by the hypervisor's view of memory.
    fn word(&self, pfn: u64) -> u64 {
        sim::read_phys(self.m.phys(), pfn << 12)
    }

    /// PAGE_QUERY x2..x4.
    #[track_caller]
    fn q(&mut self, pfn: u64) -> [u64; 3] {
        self.ok(Id::PageQuery, &[pfn])
    }

    #[track_caller]
    fn expect_q(&mut self, pfn: u64, nr: u64, want: [u64; 3]) {
        for p in pfn..pfn + nr {
            let got = self.q(p);
            assert_eq!(got, want, "[{}] PAGE_QUERY {p:#x}", self.model);
        }
    }

    fn count(&self, pfn: u64) -> u16 {
        self.m.hyp().page_meta(pfn).0
    }
    fn pinned(&self, pfn: u64) -> bool {
        self.m.hyp().page_meta(pfn).1
    }

    /// Host access through its stage-2 (None: the host got an abort).
    fn hread(&mut self, pa: u64) -> Option<u64> {
        Machine::host_read(&mut self.m, pa).ok()
    }
    #[track_caller]
    fn hwrite(&mut self, pa: u64, v: u64) {
        assert!(
            Machine::host_write(&mut self.m, pa, v).is_ok(),
            "[{}] host write {pa:#x} aborted",
            self.model
        );
    }

    fn host_entry(&self, pfn: u64) -> Entry {
        self.m.hyp().host_stage2().lookup(pfn << 12)
    }

    fn vm_exists(&self, h: u64) -> bool {
        self.m.hyp().vms().any(|(_, vm)| vm.handle() == h)
    }
    fn gentry(&self, h: u64, gfn: u64) -> Entry {
        let hv = self.m.hyp();
        let (_, vm) = hv.vms().find(|(_, vm)| vm.handle() == h).expect("VM");
        vm.stage2().lookup(gfn << 12)
    }
    /// The guest mapping at `gfn`: (pfn, leaf).
    #[track_caller]
    fn mapped(&self, h: u64, gfn: u64) -> (u64, Leaf) {
        match self.gentry(h, gfn) {
            Entry::Mapped { pa, leaf, .. } => (pa >> 12, leaf),
            e => panic!("[{}] VM {h} gfn {gfn:#x}: {e:?}", self.model),
        }
    }
    #[track_caller]
    fn unmapped(&self, h: u64, gfn: u64) {
        let e = self.gentry(h, gfn);
        assert!(
            matches!(e, Entry::Invalid { .. }),
            "[{}] VM {h} gfn {gfn:#x} still mapped: {e:?}",
            self.model
        );
    }
    fn pool(&self, h: u64) -> usize {
        let hv = self.m.hyp();
        let (_, vm) = hv.vms().find(|(_, vm)| vm.handle() == h).expect("VM");
        vm.stage2().pool_len()
    }

    /// VM_CREATE from `nr` fresh RAM pages.
    #[track_caller]
    fn vm(&mut self, flags: u64, nr: u64) -> u64 {
        let p = self.ram(nr);
        let [h, x3, x4] = self.ok(Id::VmCreate, &[flags, p, nr]);
        assert!(h >= 1 && x3 == 0 && x4 == 0, "VM_CREATE outputs");
        h
    }

    /// A fresh RAM page shared with the hypervisor.
    #[track_caller]
    fn hyp_shared(&mut self) -> u64 {
        let r = self.ram(1);
        self.ok0(Id::ShareHyp, &[r, 1]);
        r
    }

    /// The smallest VM that VM_CREATE accepts, given vCPUs until its pool
    /// is empty (at least one): (handle, number of vCPUs).
    #[track_caller]
    fn tight_vm(&mut self, flags: u64) -> (u64, u64) {
        let mut nr = 1;
        let h = loop {
            let p = self.ram(nr);
            let r = self.call(Id::VmCreate, &[flags, p, nr]);
            if r[..2] == [0, 0] {
                break r[2];
            }
            assert_eq!(r, [0, ENOMEM.to_x1(), 0, 0, 0], "VM_CREATE of {nr} pages");
            nr += 1;
            assert!(nr <= 8, "VM_CREATE refuses 8 pages");
        };
        if self.pool(h) == 0 {
            let top = self.ram(1);
            self.ok0(Id::VmTopup, &[h, top, 1]);
        }
        let mut vcpus = 0;
        while self.pool(h) > 0 {
            self.vcpu(h);
            vcpus += 1;
        }
        (h, vcpus)
    }

    /// Create vCPUs until the VM's pool is empty.
    #[track_caller]
    fn drain(&mut self, h: u64) {
        while self.pool(h) > 0 {
            self.vcpu(h);
        }
    }

    /// VCPU_CREATE with a fresh run page: (index, run pfn).
    #[track_caller]
    fn vcpu(&mut self, h: u64) -> (u64, u64) {
        let r = self.hyp_shared();
        let [i, x3, x4] = self.ok(Id::VcpuCreate, &[h, r]);
        assert!(x3 == 0 && x4 == 0);
        (i, r)
    }

    #[track_caller]
    fn set_run(&mut self, run: u64, off: usize, v: u64) {
        self.hwrite((run << 12) + off as u64, v);
    }
    #[track_caller]
    fn run_field(&mut self, run: u64, off: usize) -> u64 {
        self.hread((run << 12) + off as u64)
            .expect("run page readable")
    }

    /// VCPU_RUN through a scripted guest: the result and the guest's
    /// context at each entry.
    fn run(&mut self, h: u64, vcpu: u64, acts: Vec<Act>) -> ([u64; 5], Vec<VcpuContext>) {
        let mut s = Script {
            acts: acts.into(),
            log: Vec::new(),
        };
        let regs = [u64::from(Id::VcpuRun.id()), h, vcpu, 0, 0, 0, 0];
        let r = self.m.hyp_mut().host_call(&regs, &mut s).regs;
        (r, s.log)
    }

    /// One guest call on vCPU 0 of `h`, answered at EL2: x0..x3.
    #[track_caller]
    fn gcall(&mut self, h: u64, regs: [u64; 7]) -> [u64; 4] {
        let (r, log) = self.run(h, 0, vec![Act::Call(regs)]);
        assert_eq!(
            r,
            exit(ExitReason::Interrupted),
            "[{}] guest call {regs:#x?} left EL2",
            self.model
        );
        // A successful CPU_ON ends the run with its target in
        // `kick_vcpus`: the guest sees the answer at its next entry.
        let x = if log.len() == 1 && matches!(regs[0], 0xC400_0003 | 0x8400_0003) {
            self.run(h, 0, vec![]).1[0].x
        } else {
            assert_eq!(log.len(), 2, "[{}] guest call {regs:#x?}", self.model);
            log[1].x
        };
        [x[0], x[1], x[2], x[3]]
    }

    /// A guest call that must answer INVALID_PARAMETER and change nothing.
    #[track_caller]
    fn gcall_invalid(&mut self, h: u64, regs: [u64; 7]) {
        let before = self.snap();
        let x = self.gcall(h, regs);
        assert_eq!(
            x[0], INVALID_PARAMETER,
            "[{}] guest call {regs:#x?}",
            self.model
        );
        self.unchanged(&before, &format!("guest call {regs:#x?}"));
    }

    /// Map `pfn` `n` times into VM `h` at gfns `base..` with `id`.
    fn fill(&mut self, id: Id, h: u64, pfn: u64, base: u64, n: u64, x5: u64) {
        for k in 0..n {
            let r = self.call(id, &[h, pfn, base + k, 1, x5]);
            assert_eq!(r, OK, "[{}] fill {id:?} #{k}", self.model);
        }
    }

    /// The memory type of the host's own stage-2 entry for `pfn`; a
    /// non-cacheable one must be a page, never a block (D6).
    #[track_caller]
    fn host_type(&self, pfn: u64, want: MemType) {
        match self.host_entry(pfn) {
            Entry::Mapped { leaf, level, .. } => {
                assert_eq!(leaf.memtype, want, "[{}] host type of {pfn:#x}", self.model);
                if !want.is_cacheable() {
                    assert_eq!(level, 3, "[{}] D6: {pfn:#x} in a block", self.model);
                }
            }
            e => panic!("[{}] host entry of {pfn:#x}: {e:?}", self.model),
        }
    }

    /// gfn ranges outside the 40-bit IPA space (format, -EINVAL).
    #[track_caller]
    fn gfn_errors(&mut self, id: Id, args: &[u64], gfn_at: usize, nr_at: usize) {
        for (g, nr) in [
            (GUEST_IPA_PAGES, 1),
            (GUEST_IPA_PAGES - 1, 2),
            (GUEST_IPA_PAGES - 256, 512),
            (1 << 52, 1),
            (u64::MAX, 1),
        ] {
            let mut a = args.to_vec();
            a[gfn_at] = g;
            a[nr_at] = nr;
            self.err(id, &a, EINVAL);
        }
    }

    /// Bad `prot` (and, for GUEST_MAP_DEVICE, memtype) values.
    #[track_caller]
    fn prot_errors(&mut self, id: Id, args: &[u64], prot_at: usize, device: bool) {
        let mut bad = vec![
            0,
            2,
            4,
            6,
            8 | RW,
            0x10 | RW,
            0x80 | RW,
            (1 << 63) | RW,
            u64::MAX,
        ];
        if device {
            bad.extend([
                NC,
                WB,
                2 | NC,
                0x300 | RW,
                0x400 | RW,
                0x800 | RW,
                0x1000 | RW,
            ]);
        } else {
            bad.extend([NC | RW, WB | RW, 0x300 | RW]);
        }
        for prot in bad {
            let mut a = args.to_vec();
            a[prot_at] = prot;
            self.err(id, &a, EINVAL);
        }
    }

    /// A VM with vCPU 0 whose first entry point is a page the VM owns
    /// (donated) or borrows (shared), already started: (handle, run page).
    #[track_caller]
    fn guest_vm(&mut self, protected: bool) -> (u64, u64) {
        let h = self.vm(u64::from(protected), 16);
        let (_, run) = self.vcpu(h);
        let code = self.ram(1);
        let id = if protected {
            Id::GuestDonate
        } else {
            Id::GuestShare
        };
        self.ok0(id, &[h, code, 0x40000, 1, RWX]);
        self.set_run(run, RP_ENTRY, 0x4000_0000);
        assert_eq!(self.gcall(h, greg(SMCCC_VERSION, &[]))[0], 0x1_0001);
        (h, run)
    }

    /// I1-I4 over the whole board.
    #[track_caller]
    fn invariants(&self) {
        let hv = self.m.hyp();
        let ranges = sim::tracked_ranges(hv.platform());
        if let Err(e) = hyp::invariants::check(hv, &ranges) {
            panic!("[{}] invariants: {e}", self.model);
        }
    }

    /// Format errors (-EINVAL) of a call whose valid arguments are `args`
    /// (x1 onwards): `nr` at `args[nr_at]` out of 1..=512, the pfn range at
    /// `args[pfn_at]` beyond the PA space, and every unused register up to
    /// x6 not zero.
    #[track_caller]
    fn format_errors(&mut self, id: Id, args: &[u64], pfn_at: Option<usize>, nr_at: usize) {
        let mut bad = Vec::new();
        let mut with = |i: usize, v: u64| {
            let mut a = args.to_vec();
            a[i] = v;
            bad.push(a);
        };
        with(nr_at, 0);
        with(nr_at, 513);
        with(nr_at, u64::MAX);
        if let Some(p) = pfn_at {
            with(p, self.lim);
            with(p, self.lim - 1);
            with(p, u64::MAX);
        }
        for a in bad {
            let mut a = a;
            if let Some(p) = pfn_at {
                if a[p] == self.lim - 1 {
                    // Two pages from the last frame: the range leaves the
                    // physical address space.
                    a[nr_at] = 2;
                }
            }
            self.err(id, &a, EINVAL);
        }
        // Unused argument registers (up to x6) must be zero.
        for i in args.len()..6 {
            let mut a = [0u64; 6];
            a[..args.len()].copy_from_slice(args);
            a[i] = 1;
            self.err(id, &a, EINVAL);
            a[i] = u64::MAX;
            self.err(id, &a, EINVAL);
        }
    }
}

/// Ranges that leave their class or region (ABI.md 3.1 step 4), as
/// (pfn, nr).
const STRADDLES: [(u64, u64); 5] = [
    (RAM_FIRST - 1, 2), // HYP -> RAM
    (COH_FIRST - 1, 2), // RAM -> COHERENT
    (COH_END - 1, 2),   // COHERENT -> undeclared MMIO
    (MMIO_END - 1, 2),  // MMIO -> MMIO (uncached-capable region)
    (UC_END - 1, 2),    // MMIO region -> undeclared MMIO
];

// ---------------------------------------------------------------------------
// ABI.md 1: one test per host call

#[test]
fn hyp_version() {
    for model in MODELS {
        let mut t = T::new(model);
        assert_eq!(t.call(Id::HypVersion, &[]), [0, 0, 0x1_0000, 0, 0]);
        for i in 0..6 {
            for v in [1, u64::MAX] {
                let mut a = [0u64; 6];
                a[i] = v;
                t.err(Id::HypVersion, &a, EINVAL);
            }
        }
        t.invariants();
    }
}

#[test]
fn hyp_features() {
    for model in MODELS {
        let mut t = T::new(model);
        // FWB=1, DIC=2, IDC=4, MTE=8, CACHEABLE_DEVICE=16 (= FWB && DIC).
        let bits = match model {
            "cortex-a57" => 0,
            "cortex-a710" => 1 | 4 | 8,
            "neoverse-v1" => 1 | 2 | 4 | 16,
            _ => 1 | 2 | 4 | 8 | 16,
        };
        assert_eq!(
            t.call(Id::HypFeatures, &[]),
            [0, 0, bits, 32, 8],
            "[{model}]"
        );
        assert_eq!(bits & 16 != 0, cacheable_device(model));
        assert_eq!(bits & 8 != 0, has_mte(model));
        for i in 0..6 {
            let mut a = [0u64; 6];
            a[i] = 1 << (i * 9);
            t.err(Id::HypFeatures, &a, EINVAL);
        }
        t.invariants();
    }
}

#[test]
fn page_query() {
    for model in MODELS {
        let mut t = T::new(model);
        let r = t.ram(1);
        let m = t.mmio(1);
        let u = t.mmio_uc(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        let lim = t.lim;
        let before = t.snap();
        for (pfn, want) in [
            (r, HOST_RAM),
            (RAM_FIRST, HOST_RAM),
            (COH_FIRST - 1, HOST_RAM),
            (m, HOST_MMIO),
            (u, HOST_MMIO),
            (c, HOST_COH),
            (COH_FIRST, HOST_COH),
            (COH_END - 1, HOST_COH),
            (hyp, HYP_PAGE),
            (HYP_FIRST, HYP_PAGE),
            (RAM_FIRST - 1, HYP_PAGE),
            // Everything else is (undeclared) MMIO, host OWNED.
            (0, HOST_MMIO),
            (UART, HOST_MMIO),
            (GICD, HOST_MMIO),
            (COH_END, HOST_MMIO),
            (lim - 1, HOST_MMIO),
        ] {
            assert_eq!(
                t.call(Id::PageQuery, &[pfn]),
                [0, 0, want[0], want[1], want[2]],
                "[{model}] PAGE_QUERY {pfn:#x}"
            );
        }
        t.unchanged(&before, "PAGE_QUERY");
        // Format: pfn outside the PA space, unused registers.
        for pfn in [lim, lim + 1, 1 << 52, u64::MAX] {
            t.err(Id::PageQuery, &[pfn], EINVAL);
        }
        for i in 1..6 {
            let mut a = [r, 0, 0, 0, 0, 0];
            a[i] = 1;
            t.err(Id::PageQuery, &a, EINVAL);
        }
        t.invariants();
    }
}

#[test]
fn share_hyp() {
    for model in MODELS {
        let mut t = T::new(model);
        let a = t.ram(3);
        t.hwrite(a << 12, 0x5a5a);
        t.ok0(Id::ShareHyp, &[a, 3]);
        t.expect_q(a, 3, HOST_SHARED_RAM);
        assert_eq!(t.hread(a << 12), Some(0x5a5a), "host keeps access");
        t.hwrite((a + 2) << 12, 7);
        assert_eq!(t.m.hyp().page_meta(a), (0, false));

        // Format.
        let b = t.ram(2);
        t.format_errors(Id::ShareHyp, &[b, 1], Some(0), 1);
        // Class: only RAM.
        let m = t.mmio(1);
        let u = t.mmio_uc(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for p in [m, u, c, hyp, UART] {
            t.err(Id::ShareHyp, &[p, 1], EINVAL);
        }
        for (p, n) in STRADDLES {
            t.err(Id::ShareHyp, &[p, n], EINVAL);
        }
        // EPERM: every state but host OWNED.
        t.err(Id::ShareHyp, &[a, 1], EPERM); // already shared
        t.ok0(Id::ShareHyp, &[b + 1, 1]);
        t.err(Id::ShareHyp, &[b, 2], EPERM); // second page shared
        t.expect_q(b, 1, HOST_RAM);
        let n = t.vm(NORMAL, 8);
        let p = t.vm(PROTECTED, 8);
        let d = t.ram(4);
        t.ok0(Id::GuestDonate, &[p, d, 0x100, 1, RW]);
        t.ok0(Id::GuestShare, &[n, d + 1, 0x100, 1, RW]);
        let gone_pages = t.ram(4);
        let [gone, ..] = t.ok(Id::VmCreate, &[NORMAL, gone_pages, 4]);
        t.ok0(Id::GuestDonate, &[gone, d + 2, 0x100, 1, RW]);
        t.ok0(Id::VmDestroy, &[gone]);
        t.expect_q(d + 2, 1, RECLAIMABLE_RAM);
        t.err(Id::ShareHyp, &[d, 1], EPERM); // guest OWNED
        t.err(Id::ShareHyp, &[d + 1, 1], EPERM); // shared with a guest
        t.err(Id::ShareHyp, &[d + 2, 1], EPERM); // reclaimable
        t.err(Id::ShareHyp, &[gone_pages, 1], EPERM); // reclaimable VM metadata
        t.err(Id::ShareHyp, &[d + 2, 2], EPERM); // [reclaimable, OWNED]
        let vm_page = t.ram(4);
        t.ok(Id::VmCreate, &[NORMAL, vm_page, 4]);
        t.err(Id::ShareHyp, &[vm_page, 1], EPERM); // hypervisor OWNED
        t.expect_q(d + 3, 1, HOST_RAM);
        t.invariants();
    }
}

#[test]
fn unshare_hyp() {
    for model in MODELS {
        let mut t = T::new(model);
        let a = t.ram(2);
        t.ok0(Id::ShareHyp, &[a, 2]);
        t.ok0(Id::UnshareHyp, &[a, 2]);
        t.expect_q(a, 2, HOST_RAM);
        t.hwrite(a << 12, 1);
        assert_eq!(t.hread(a << 12), Some(1));

        let b = t.ram(3);
        t.ok0(Id::ShareHyp, &[b, 3]);
        t.format_errors(Id::UnshareHyp, &[b, 1], Some(0), 1);
        let m = t.mmio(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for p in [m, c, hyp, UART] {
            t.err(Id::UnshareHyp, &[p, 1], EINVAL);
        }
        for (p, n) in STRADDLES {
            t.err(Id::UnshareHyp, &[p, n], EINVAL);
        }
        // EPERM: not shared with the hypervisor.
        t.err(Id::UnshareHyp, &[a, 1], EPERM);
        t.err(Id::UnshareHyp, &[b + 2, 2], EPERM); // [shared, not shared]
        let n = t.vm(NORMAL, 8);
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x100, 1, RW]);
        t.err(Id::UnshareHyp, &[s, 1], EPERM); // shared with a guest
        let d = t.ram(1);
        t.ok0(Id::GuestDonate, &[n, d, 0x101, 1, RW]);
        t.err(Id::UnshareHyp, &[d, 1], EPERM); // guest OWNED
        let v = t.ram(4);
        t.ok(Id::VmCreate, &[NORMAL, v, 4]);
        t.err(Id::UnshareHyp, &[v, 1], EPERM); // hypervisor OWNED
                                               // EBUSY: a run page is pinned while its vCPU exists.
        let [i, ..] = t.ok(Id::VcpuCreate, &[n, b + 1]);
        assert_eq!(i, 0);
        t.err(Id::UnshareHyp, &[b + 1, 1], EBUSY);
        t.err(Id::UnshareHyp, &[b, 2], EBUSY); // [shared, pinned]
        t.err(Id::UnshareHyp, &[b + 1, 2], EBUSY); // [pinned, shared]
        t.expect_q(b, 3, HOST_SHARED_RAM);
        t.ok0(Id::UnshareHyp, &[b, 1]);
        t.ok0(Id::UnshareHyp, &[b + 2, 1]);
        // The pin goes with the VM.
        t.ok0(Id::VmDestroy, &[n]);
        assert!(!t.pinned(b + 1));
        t.expect_q(b + 1, 1, HOST_SHARED_RAM);
        t.ok0(Id::UnshareHyp, &[b + 1, 1]);
        t.expect_q(b, 3, HOST_RAM);
        t.invariants();
    }
}

/// SHARE_HYP and UNSHARE_HYP of one page, again and again, in a 2 MiB
/// region the host touched (the one-page path of the host's stage-2): each
/// answers as the range path does, the host keeps its access and its data,
/// UNSHARE_HYP invalidates exactly that page (one TLBI by IPA, VMID 0,
/// nothing VMID-wide, no table page), and refused calls in between change
/// nothing.
#[test]
fn share_unshare_one_page_again_and_again() {
    for model in MODELS {
        let mut t = T::new(model);
        let a = t.ram(4);
        t.hwrite(a << 12, 0x1234);
        t.hwrite((a + 1) << 12, 0x77);
        for round in 0..4u64 {
            let pool = t.m.hyp().host_stage2().pool_len();
            t.ok0(Id::ShareHyp, &[a, 1]);
            t.expect_q(a, 1, HOST_SHARED_RAM);
            t.expect_q(a + 1, 1, HOST_RAM);
            assert_eq!(t.hread(a << 12), Some(0x1234 + round));
            // Refused while shared: nothing changes.
            let before = t.snap();
            t.err(Id::ShareHyp, &[a, 1], EPERM);
            t.err(Id::UnshareHyp, &[a + 1, 1], EPERM);
            assert_eq!(diff(&before, &t.snap()), "", "round {round}");
            let m0 = t.m.hyp().maintenance().counts();
            t.ok0(Id::UnshareHyp, &[a, 1]);
            let m1 = t.m.hyp().maintenance().counts();
            assert_eq!(m1.tlbi_ipa - m0.tlbi_ipa, 1, "{model} round {round}");
            assert_eq!(m1.last_tlbi_ipa_vmid, 0);
            assert_eq!(m1.tlbi_vmid, m0.tlbi_vmid, "no VMID-wide TLBI");
            t.expect_q(a, 1, HOST_RAM);
            // Faulted in again on the next touch, contents kept.
            t.hwrite(a << 12, 0x1234 + round + 1);
            assert_eq!(t.hread((a + 1) << 12), Some(0x77));
            if round > 0 {
                assert_eq!(t.m.hyp().host_stage2().pool_len(), pool, "no table page");
            }
            t.invariants();
        }
    }
}

#[test]
fn vm_create() {
    for model in MODELS {
        let mut t = T::new(model);
        let a = t.ram(4);
        t.hwrite(a << 12, 9);
        let [h1, x3, x4] = t.ok(Id::VmCreate, &[NORMAL, a, 4]);
        assert!(h1 >= 1 && x3 == 0 && x4 == 0);
        t.expect_q(a, 4, HYP_RAM);
        assert_eq!(t.hread(a << 12), None, "donated page: abort");
        let b = t.ram(5);
        let [h2, ..] = t.ok(Id::VmCreate, &[PROTECTED, b, 5]);
        assert!(h2 >= 1 && h2 != h1);
        t.expect_q(b, 5, HYP_RAM);
        let protected = |t: &T, h: u64| {
            let hv = t.m.hyp();
            let vm = hv
                .vms()
                .find(|(_, v)| v.handle() == h)
                .map(|(_, v)| v.protected());
            vm.expect("VM")
        };
        assert!(!protected(&t, h1));
        assert!(protected(&t, h2));

        // MTE: only on hardware with it (format, ABI.md 3.1 step 2).
        for flags in [MTE, MTE | PROTECTED] {
            let p = t.ram(4);
            if has_mte(model) {
                let [h, ..] = t.ok(Id::VmCreate, &[flags, p, 4]);
                assert!(h >= 1);
                t.expect_q(p, 4, HYP_RAM);
            } else {
                t.err(Id::VmCreate, &[flags, p, 4], EINVAL);
            }
        }

        // Format.
        let f = t.ram(4);
        for flags in [4, 8, 1 << 63, u64::MAX] {
            t.err(Id::VmCreate, &[flags, f, 4], EINVAL);
        }
        t.format_errors(Id::VmCreate, &[NORMAL, f, 4], Some(1), 2);
        // Class: only RAM.
        let m = t.mmio(4);
        let c = t.coherent(4);
        let hyp = t.hyp_pfn();
        for p in [m, c, hyp, UART] {
            t.err(Id::VmCreate, &[NORMAL, p, 4], EINVAL);
        }
        for (p, n) in STRADDLES {
            t.err(Id::VmCreate, &[NORMAL, p, n], EINVAL);
        }
        // EPERM: pages not host OWNED.
        t.err(Id::VmCreate, &[NORMAL, a, 4], EPERM);
        let x = t.ram(6);
        t.ok(Id::VmCreate, &[NORMAL, x, 4]);
        t.err(Id::VmCreate, &[NORMAL, x + 2, 4], EPERM); // [hyp, hyp, OWNED, OWNED]
        t.ok0(Id::ShareHyp, &[f + 3, 1]);
        t.err(Id::VmCreate, &[NORMAL, f, 4], EPERM); // [OWNED x3, shared]
        t.ok0(Id::UnshareHyp, &[f + 3, 1]);
        // README: at least 2 pages, the stage-2 root table and one pool
        // page (enough for one vCPU); fewer is ENOMEM. Where the root is
        // two concatenated tables (PA < 44 bits), it needs an 8 KiB-aligned
        // pair among the donated pages: up to 3 pages, plus the pool page.
        t.err(Id::VmCreate, &[NORMAL, f, 1], ENOMEM);
        t.err(Id::VmCreate, &[PROTECTED, f, 1], ENOMEM);
        let roots = pagetables::stage2_root_geometry(
            host_interface::GUEST_IPA_BITS,
            t.m.hyp().cpu().pa_bits,
        )
        .root_pages as u64;
        let min = if roots == 1 { 2 } else { roots + 2 };
        let [h3, ..] = t.ok(Id::VmCreate, &[NORMAL, f, min]);
        t.expect_q(f, min, HYP_RAM);
        assert!(t.pool(h3) >= 1, "README: the root table and one pool page");
        assert_eq!(t.vcpu(h3).0, 0);
        // ENOMEM: at most 32 VMs (HYP_FEATURES x3).
        let mut handles = vec![h1, h2, h3];
        while t.m.hyp().vms().count() < 32 {
            handles.push(t.vm(NORMAL, 4));
        }
        let g = t.ram(4);
        t.err(Id::VmCreate, &[NORMAL, g, 4], ENOMEM);
        t.err(Id::VmCreate, &[PROTECTED, g, 4], ENOMEM);
        t.expect_q(g, 4, HOST_RAM);
        t.ok0(Id::VmDestroy, &[h1]);
        let [h4, ..] = t.ok(Id::VmCreate, &[NORMAL, g, 4]);
        assert!(!handles.contains(&h4), "handles are not reused");
        t.invariants();
    }
}

#[test]
fn vm_topup() {
    for model in MODELS {
        let mut t = T::new(model);
        let h = t.vm(NORMAL, 4);
        let p0 = t.pool(h);
        let a = t.ram(3);
        t.ok0(Id::VmTopup, &[h, a, 3]);
        t.expect_q(a, 3, HYP_RAM);
        assert_eq!(t.pool(h), p0 + 3);
        assert_eq!(t.hread(a << 12), None);
        let p = t.vm(PROTECTED, 4);
        let p1 = t.pool(p);
        let a2 = t.ram(1);
        t.ok0(Id::VmTopup, &[p, a2, 1]);
        assert_eq!(t.pool(p), p1 + 1);

        let f = t.ram(2);
        t.format_errors(Id::VmTopup, &[h, f, 1], Some(1), 2);
        // ENOENT.
        let gone = t.vm(NORMAL, 4);
        t.ok0(Id::VmDestroy, &[gone]);
        for bad in [0, gone, 999, u64::MAX] {
            t.err(Id::VmTopup, &[bad, f, 1], ENOENT);
        }
        // Class.
        let m = t.mmio(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for pg in [m, c, hyp, UART] {
            t.err(Id::VmTopup, &[h, pg, 1], EINVAL);
        }
        for (pg, n) in STRADDLES {
            t.err(Id::VmTopup, &[h, pg, n], EINVAL);
        }
        // EPERM.
        t.err(Id::VmTopup, &[h, a, 1], EPERM); // already the hypervisor's
        t.err(Id::VmTopup, &[p, a + 2, 2], EPERM); // [hyp, OWNED]
        t.ok0(Id::ShareHyp, &[f + 1, 1]);
        t.err(Id::VmTopup, &[h, f, 2], EPERM); // [OWNED, shared with hyp]
        let d = t.ram(2);
        t.ok0(Id::GuestDonate, &[p, d, 0x10, 1, RW]);
        t.ok0(Id::GuestShare, &[h, d + 1, 0x10, 1, RW]);
        t.err(Id::VmTopup, &[h, d, 1], EPERM); // guest OWNED
        t.err(Id::VmTopup, &[h, d + 1, 1], EPERM); // shared with a guest
        t.ok0(Id::VmDestroy, &[p]);
        t.err(Id::VmTopup, &[h, d, 1], EPERM); // reclaimable
        t.expect_q(f, 1, HOST_RAM);
        t.invariants();
    }
}

#[test]
fn vcpu_create() {
    for model in MODELS {
        let mut t = T::new(model);
        let h = t.vm(NORMAL, 8);
        let p0 = t.pool(h);
        let r0 = t.hyp_shared();
        assert_eq!(t.call(Id::VcpuCreate, &[h, r0]), [0, 0, 0, 0, 0]);
        assert!(t.pinned(r0));
        t.expect_q(r0, 1, HOST_SHARED_RAM);
        assert_eq!(t.hread(r0 << 12), Some(0), "run page stays host-accessible");
        assert_eq!(t.pool(h), p0 - 1, "README: the vCPU takes a pool page");
        let r1 = t.hyp_shared();
        assert_eq!(t.call(Id::VcpuCreate, &[h, r1]), [0, 0, 1, 0, 0]);
        let p = t.vm(PROTECTED, 8);
        let r2 = t.hyp_shared();
        assert_eq!(t.call(Id::VcpuCreate, &[p, r2]), [0, 0, 0, 0, 0]);

        // Format.
        let r3 = t.hyp_shared();
        let lim = t.lim;
        t.err(Id::VcpuCreate, &[h, lim], EINVAL);
        t.err(Id::VcpuCreate, &[h, u64::MAX], EINVAL);
        for i in 2..6 {
            let mut a = [h, r3, 0, 0, 0, 0];
            a[i] = 1;
            t.err(Id::VcpuCreate, &a, EINVAL);
        }
        // ENOENT.
        let gone = t.vm(NORMAL, 4);
        t.ok0(Id::VmDestroy, &[gone]);
        for bad in [0, gone, 999] {
            t.err(Id::VcpuCreate, &[bad, r3], ENOENT);
        }
        // Class.
        let m = t.mmio(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for pg in [m, c, hyp, UART] {
            t.err(Id::VcpuCreate, &[h, pg], EINVAL);
        }
        // EPERM: the run page must be shared with the hypervisor.
        let own = t.ram(1);
        t.err(Id::VcpuCreate, &[h, own], EPERM);
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[h, s, 0x10, 1, RW]);
        t.err(Id::VcpuCreate, &[h, s], EPERM); // shared with a guest
        let d = t.ram(1);
        t.ok0(Id::GuestDonate, &[p, d, 0x10, 1, RW]);
        t.err(Id::VcpuCreate, &[h, d], EPERM); // guest OWNED
        let v = t.ram(4);
        t.ok(Id::VmCreate, &[NORMAL, v, 4]);
        t.err(Id::VcpuCreate, &[h, v], EPERM); // hypervisor OWNED

        // EBUSY: run page pinned by another vCPU (this VM or another).
        t.err(Id::VcpuCreate, &[h, r0], EBUSY);
        t.err(Id::VcpuCreate, &[p, r0], EBUSY);
        t.err(Id::VcpuCreate, &[h, r2], EBUSY);
        assert!(!t.pinned(r3));

        // ENOMEM: the VM's pool is empty; VM_TOPUP and retry.
        let (e, k) = t.tight_vm(NORMAL);
        t.err(Id::VcpuCreate, &[e, r3], ENOMEM);
        assert!(!t.pinned(r3));
        let top = t.ram(1);
        t.ok0(Id::VmTopup, &[e, top, 1]);
        assert_eq!(t.call(Id::VcpuCreate, &[e, r3]), [0, 0, k, 0, 0]);
        assert!(t.pinned(r3));

        // ENOMEM: at most 8 vCPUs per VM (HYP_FEATURES x4), pool or not.
        let big = t.vm(PROTECTED, 16);
        for k in 0..8 {
            let (i, _) = t.vcpu(big);
            assert_eq!(i, k);
        }
        assert!(t.pool(big) > 0);
        let r9 = t.hyp_shared();
        t.err(Id::VcpuCreate, &[big, r9], ENOMEM);
        assert!(!t.pinned(r9));
        // The refused vCPU does not exist.
        t.err(Id::VcpuRun, &[big, 8], ENOENT);
        t.invariants();
    }
}

#[test]
fn vcpu_run_takes_interrupt_requests() {
    for model in MODELS {
        for protected in [false, true] {
            let mut t = T::new(model);
            let h = t.vm(if protected { PROTECTED } else { NORMAL }, 8);
            if protected {
                // A protected vCPU starts only in memory the VM owns.
                let p = t.ram(1);
                t.ok0(Id::GuestDonate, &[h, p, 0x40000, 1, RWX]);
            }
            let (_, run) = t.vcpu(h);
            t.set_run(run, RP_ENTRY, 0x4000_0000);
            // Malformed requests: -EINVAL, the request stays, no entry.
            for bad in [
                27,
                inject_irq::VALID | 1020,
                inject_irq::VALID | 1023,
                inject_irq::VALID | 1024,
                inject_irq::VALID | 1 << 40,
                u64::MAX,
            ] {
                t.set_run(run, RP_INJECT, bad);
                t.err(Id::VcpuRun, &[h, 0], EINVAL);
                assert_eq!(t.run_field(run, RP_INJECT), bad);
            }
            // No such vCPU comes first.
            t.err(Id::VcpuRun, &[h, 1], ENOENT);
            // A valid request is taken before the guest runs and cleared.
            t.set_run(run, RP_INJECT, inject_irq::VALID | 40);
            let (r, log) = t.run(h, 0, vec![Act::Trap(Trap::Resume), Act::TimerWfi(0x1234)]);
            assert_eq!(r, exit(ExitReason::Wfi));
            assert_eq!(log.len(), 2, "Resume re-enters the guest");
            assert!(log[0].gic.is_queued(40));
            assert!(!log[0].gic.is_queued(41));
            assert_eq!(
                log[0].pc, 0x4000_0000,
                "the first entry still starts at entry"
            );
            assert_eq!(t.run_field(run, RP_INJECT), 0);
            assert_eq!(t.run_field(run, RP_TIMER_DEADLINE), 0x1234);
            // Injections accumulate across runs until the executor places them.
            t.set_run(run, RP_INJECT, inject_irq::VALID);
            let (_, log) = t.run(h, 0, vec![Act::TimerWfi(u64::MAX)]);
            assert!(log[0].gic.is_queued(0) && log[0].gic.is_queued(40));
            assert_eq!(t.run_field(run, RP_TIMER_DEADLINE), u64::MAX);
            t.invariants();
        }
    }
}

#[test]
fn guest_sgis_reach_their_vcpus() {
    let sgi = |value: u64| Act::Trap(Trap::Sgi { value });
    for model in MODELS {
        let mut t = T::new(model);
        let h = t.vm(NORMAL, 8);
        let runs: Vec<u64> = (0..3).map(|_| t.vcpu(h).1).collect();
        for &run in &runs {
            t.set_run(run, RP_ENTRY, 0x4000_0000);
        }
        // To itself (target list bit 0): taken at once, no exit.
        let (r, log) = t.run(h, 0, vec![sgi(5 << 24 | 1), Act::TimerWfi(u64::MAX)]);
        assert_eq!(r, exit(ExitReason::Wfi));
        assert!(!log[0].gic.is_queued(5) && log[1].gic.is_queued(5));
        assert_eq!(t.run_field(runs[0], RP_KICK), 0);
        // To vCPU 1: the run ends so the host can run it.
        let (r, _) = t.run(h, 0, vec![sgi(7 << 24 | 0b10)]);
        assert_eq!(r, exit(ExitReason::Interrupted));
        assert_eq!(t.run_field(runs[0], RP_KICK), 0b10);
        let (_, log) = t.run(h, 1, vec![Act::TimerWfi(u64::MAX)]);
        assert!(log[0].gic.is_queued(7));
        assert!(!log[0].gic.is_queued(5), "only what was sent to it");
        assert_eq!(t.run_field(runs[1], RP_KICK), 0);
        // To every other vCPU (IRM).
        let (r, _) = t.run(h, 0, vec![sgi(1 << 40 | 2 << 24)]);
        assert_eq!(r, exit(ExitReason::Interrupted));
        assert_eq!(t.run_field(runs[0], RP_KICK), 0b110);
        for v in [1, 2] {
            let (_, log) = t.run(h, v, vec![Act::TimerWfi(u64::MAX)]);
            assert!(log[0].gic.is_queued(2), "vCPU {v}");
        }
        // No vCPU has Aff1 = 1, none is beyond the VM's: nobody, no exit.
        let (r, log) = t.run(
            h,
            0,
            vec![
                sgi(1 << 16 | 3 << 24 | 1),
                sgi(9 << 24 | 0b1000),
                Act::TimerWfi(u64::MAX),
            ],
        );
        assert_eq!(r, exit(ExitReason::Wfi));
        assert!(!log[2].gic.is_queued(3) && !log[2].gic.is_queued(9));
        assert_eq!(t.run_field(runs[0], RP_KICK), 0);
        t.invariants();
    }
}

#[test]
fn smc32_psci_calls_take_w_registers() {
    let hi = 0xffff_ffff_0000_0000;
    for model in MODELS {
        let mut t = T::new(model);
        let h = t.vm(NORMAL, 8);
        let (_, run0) = t.vcpu(h);
        t.vcpu(h);
        t.set_run(run0, RP_ENTRY, 0x4000_0000);
        // AFFINITY_INFO, SMC32: W1 = 0 is vCPU 0 itself, which is on; the
        // argument registers are left as they were.
        let r = t.gcall(h, greg(0x8400_0004, &[hi, hi]));
        assert_eq!(r, [0, hi, hi, 0], "[{model}]");
        // The SMC64 form takes all of X1: no such vCPU.
        let r = t.gcall(h, greg(0xC400_0004, &[hi, 0]));
        assert_eq!(r[0], psci::INVALID_PARAMETERS, "[{model}]");
        // CPU_ON, SMC32: target, entry and context in W1..W3.
        let r = t.gcall(h, greg(0x8400_0003, &[hi | 1, hi | 0x4000_2000, hi | 7]));
        assert_eq!(r[0], psci::SUCCESS, "[{model}]");
        let (_, log) = t.run(h, 1, vec![Act::TimerWfi(u64::MAX)]);
        assert_eq!((log[0].pc, log[0].x[0]), (0x4000_2000, 7), "[{model}]");
        let r = t.gcall(h, greg(0x8400_0003, &[hi | 1, hi | 0x4000_2000, 0]));
        assert_eq!(r[0], psci::ALREADY_ON, "[{model}]");
    }
}

#[test]
fn vcpu_run() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let (_, run) = t.vcpu(n);
        // The first run starts at the run page's entry with its x0.
        t.set_run(run, RP_ENTRY, 0x1234_5000);
        t.set_run(run, RP_X0, 0xabcd);
        let (r, log) = t.run(n, 0, vec![Act::Trap(Trap::Wfi)]);
        assert_eq!(r, exit(ExitReason::Wfi));
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].pc, log[0].x[0]), (0x1234_5000, 0xabcd));
        assert_eq!(t.run_field(run, RP_EXIT), ExitReason::Wfi as u64);
        // ... and only the first.
        t.set_run(run, RP_ENTRY, 0x9999_0000);
        t.set_run(run, RP_X0, 1);
        let (r, log) = t.run(n, 0, vec![]);
        assert_eq!(r, exit(ExitReason::Interrupted));
        assert_eq!(log[0].pc & !0xfff, 0x1234_5000);
        assert_eq!(log[0].x[0], 0xabcd);
        assert_eq!(t.run_field(run, RP_EXIT), ExitReason::Interrupted as u64);
        // MEM_FAULT: nothing mapped.
        let (r, _) = t.run(n, 0, vec![Act::Trap(data_abort(0x5000_0008, true))]);
        assert_eq!(r, exit(ExitReason::MemFault));
        assert_eq!(t.run_field(run, RP_FAULT_IPA), 0x5000_0008);
        assert_eq!(t.run_field(run, RP_FAULT_FLAGS) & 1, 1, "write");
        assert_eq!(t.run_field(run, RP_EXIT), ExitReason::MemFault as u64);
        // MMIO: a MMIO_GUARD page; a read is completed from the run page.
        let (r, _) = t.run(
            n,
            0,
            vec![
                Act::Call(greg(MMIO_GUARD, &[0x6000_0000])),
                Act::Trap(data_abort(0x6000_0010, false)),
            ],
        );
        assert_eq!(r, exit(ExitReason::Mmio));
        assert_eq!(t.run_field(run, RP_FAULT_IPA), 0x6000_0010);
        assert_eq!(t.run_field(run, RP_FAULT_FLAGS) & 1, 0, "read");
        t.set_run(run, RP_MMIO_READ, 0x77);
        let (r, log) = t.run(n, 0, vec![]);
        assert_eq!(r, exit(ExitReason::Interrupted));
        assert_eq!(log[0].x[1], 0x77);
        // HVC: a call the hypervisor does not handle.
        let (r, _) = t.run(n, 0, vec![Act::Call(greg(0x8600_1234, &[1, 2]))]);
        assert_eq!(r, exit(ExitReason::Hvc));
        assert_eq!(t.run_field(run, RP_HVC_ARGS), 0x8600_1234);
        // SYSTEM_EVENT: SYSTEM_RESET (type 1), then SYSTEM_OFF (type 0).
        let (r, _) = t.run(n, 0, vec![Act::Call(greg(PSCI_SYSTEM_RESET, &[]))]);
        assert_eq!(r, exit(ExitReason::SystemEvent));
        assert_eq!(t.run_field(run, RP_SYSTEM_EVENT), 1);
        let (r, _) = t.run(n, 0, vec![Act::Call(greg(PSCI_SYSTEM_OFF, &[]))]);
        assert_eq!(r, exit(ExitReason::SystemEvent));
        assert_eq!(t.run_field(run, RP_SYSTEM_EVENT), 0);

        // Format: unused registers.
        for i in 2..6 {
            let mut a = [n, 0, 0, 0, 0, 0];
            a[i] = 1;
            t.err(Id::VcpuRun, &a, EINVAL);
        }
        // ENOENT: no such VM or vCPU.
        let gone = t.vm(NORMAL, 4);
        t.vcpu(gone);
        t.ok0(Id::VmDestroy, &[gone]);
        let empty = t.vm(NORMAL, 4);
        for (h, v) in [
            (0, 0),
            (999, 0),
            (gone, 0),
            (n, 1),
            (n, 8),
            (n, u64::MAX),
            (empty, 0),
        ] {
            t.err(Id::VcpuRun, &[h, v], ENOENT);
        }
        // EPERM: a protected VM's entry point must lie in memory it owns.
        let p = t.vm(PROTECTED, 8);
        let (_, prun) = t.vcpu(p);
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x40000, 1, RWX]);
        for entry in [0x4000_0000, 1 << 40, !0xfff] {
            t.set_run(prun, RP_ENTRY, entry);
            t.err(Id::VcpuRun, &[p, 0], EPERM);
        }
        // Owned memory: the same run now starts there.
        let code = t.ram(1);
        t.ok0(Id::GuestDonate, &[p, code, 0x40000, 1, RWX]);
        t.set_run(prun, RP_ENTRY, 0x4000_0000);
        t.set_run(prun, RP_X0, 5);
        let (r, log) = t.run(p, 0, vec![]);
        assert_eq!(r, exit(ExitReason::Interrupted));
        assert_eq!((log[0].pc, log[0].x[0]), (0x4000_0000, 5));
        // A vCPU that called PSCI CPU_OFF answers WFI (README).
        let n3 = t.vm(NORMAL, 4);
        t.vcpu(n3);
        let (r, _) = t.run(n3, 0, vec![Act::Call(greg(0x8400_0002, &[]))]);
        assert_eq!(r, exit(ExitReason::Wfi));
        let (r, log) = t.run(n3, 0, vec![]);
        assert_eq!(r, exit(ExitReason::Wfi));
        assert!(log.is_empty());
        // FATAL: the VM is dead; VCPU_RUN answers FATAL again without
        // entering the guest (README); VM_DESTROY still works.
        let (r, _) = t.run(p, 0, vec![Act::Trap(Trap::Fatal)]);
        assert_eq!(r, exit(ExitReason::Fatal));
        let (r, log) = t.run(p, 0, vec![]);
        assert_eq!(r, exit(ExitReason::Fatal));
        assert!(log.is_empty());
        assert_eq!(t.run_field(prun, RP_EXIT), ExitReason::Fatal as u64);
        t.ok0(Id::VmDestroy, &[p]);
        t.expect_q(code, 1, RECLAIMABLE_RAM);
        // EBUSY (a vCPU already running) needs a second physical CPU: the
        // simulator runs one host call at a time, so it is not reachable.
        t.invariants();
    }
}

#[test]
fn vm_destroy() {
    for model in MODELS {
        let mut t = T::new(model);
        // A protected VM with a vCPU, donated RAM and an MMIO page.
        let pv = t.ram(8);
        let [p, ..] = t.ok(Id::VmCreate, &[PROTECTED, pv, 8]);
        let (_, run) = t.vcpu(p);
        let d = t.ram(2);
        t.hwrite(d << 12, 0x1111);
        t.ok0(Id::GuestDonate, &[p, d, 0x100, 2, RW]);
        let m = t.mmio(1);
        t.ok0(Id::GuestMapDevice, &[p, m, 0x200, 1, RW | DEV]);
        t.expect_q(m, 1, GUEST_MMIO);
        // Two normal VMs sharing one RAM page, one with an NC device page.
        let n = t.vm(NORMAL, 8);
        let n2 = t.vm(NORMAL, 8);
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x100, 1, RW]);
        t.ok0(Id::GuestShare, &[n2, s, 0x100, 1, RW]);
        let u = t.mmio_uc(1);
        t.ok0(Id::GuestMapDevice, &[n, u, 0x200, 1, RW | NC]);
        assert_eq!(t.count(s), 2);

        // Format, ENOENT.
        for i in 1..6 {
            let mut a = [p, 0, 0, 0, 0, 0];
            a[i] = 1;
            t.err(Id::VmDestroy, &a, EINVAL);
        }
        for bad in [0, 999, u64::MAX] {
            t.err(Id::VmDestroy, &[bad], ENOENT);
        }

        t.ok0(Id::VmDestroy, &[p]);
        assert!(!t.vm_exists(p));
        t.expect_q(pv, 8, RECLAIMABLE_RAM); // its metadata (and vCPU state)
        t.expect_q(d, 2, RECLAIMABLE_RAM);
        t.expect_q(m, 1, HOST_MMIO); // MMIO straight back
        t.expect_q(run, 1, HOST_SHARED_RAM);
        assert!(!t.pinned(run));
        assert_eq!(t.hread(d << 12), None, "reclaimable: not the host's yet");
        t.hwrite(m << 12, 3);
        // The handle is dead for every call.
        t.err(Id::VmDestroy, &[p], ENOENT);
        let f = t.ram(1);
        t.err(Id::VmTopup, &[p, f, 1], ENOENT);
        t.err(Id::VcpuRun, &[p, 0], ENOENT);
        t.err(Id::GuestDonate, &[p, f, 0x300, 1, RW], ENOENT);
        t.err(Id::GuestUnmapDevice, &[p, 0x200, 1], ENOENT);
        t.ok0(Id::UnshareHyp, &[run, 1]);

        t.ok0(Id::VmDestroy, &[n]);
        assert_eq!(t.count(s), 1);
        t.expect_q(s, 1, HOST_SHARED_RAM); // still shared with n2
        t.expect_q(u, 1, HOST_MMIO);
        assert_eq!(t.count(u), 0);
        // Back to the class default type (D7) once the host touches it.
        t.hwrite(u << 12, 1);
        assert!(matches!(
            t.host_entry(u),
            Entry::Mapped { leaf, .. } if leaf.memtype == MemType::Device
        ));
        t.ok0(Id::VmDestroy, &[n2]);
        t.expect_q(s, 1, HOST_RAM);
        assert_eq!(t.count(s), 0);
        // A new VM gets a new handle.
        let x = t.vm(NORMAL, 4);
        assert!(![p, n, n2].contains(&x));
        // EBUSY (a vCPU running) is not reachable in the single-threaded
        // simulator.
        t.invariants();
    }
}

#[test]
fn reclaim() {
    for model in MODELS {
        let mut t = T::new(model);
        let pv = t.ram(8);
        let [p, ..] = t.ok(Id::VmCreate, &[PROTECTED, pv, 8]);
        let d = t.ram(4); // d+3 stays the host's
        let own = d + 3;
        for k in 0..3 {
            t.hwrite((d + k) << 12, 0xdead_0000 + k);
        }
        t.ok0(Id::GuestDonate, &[p, d, 0x100, 3, RW]);
        let m = t.mmio(1);
        t.ok0(Id::GuestMapDevice, &[p, m, 0x200, 1, RW]);
        let c = t.coherent(1);
        if cacheable_device(model) {
            t.ok0(Id::GuestMapDevice, &[p, c, 0x300, 1, RWX | WB]);
            t.expect_q(c, 1, GUEST_COH);
        }
        let n = t.vm(NORMAL, 8);
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x100, 1, RW]);
        let sh = t.hyp_shared();

        // EPERM while the VM lives: guest and hypervisor pages.
        t.err(Id::Reclaim, &[d, 1], EPERM);
        t.err(Id::Reclaim, &[pv, 1], EPERM);
        t.ok0(Id::VmDestroy, &[p]);
        t.expect_q(d, 3, RECLAIMABLE_RAM);

        // Format.
        t.format_errors(Id::Reclaim, &[d, 1], Some(0), 1);
        // Class: MMIO (even straight after VM_DESTROY), HYP, straddles.
        let hyp = t.hyp_pfn();
        for pg in [m, hyp, UART] {
            t.err(Id::Reclaim, &[pg, 1], EINVAL);
        }
        for (pg, nr) in STRADDLES {
            t.err(Id::Reclaim, &[pg, nr], EINVAL);
        }
        // EPERM: not reclaimable.
        t.err(Id::Reclaim, &[own, 1], EPERM); // host OWNED
        t.err(Id::Reclaim, &[sh, 1], EPERM); // shared with the hypervisor
        t.err(Id::Reclaim, &[s, 1], EPERM); // shared with a guest
        if !cacheable_device(model) {
            t.err(Id::Reclaim, &[c, 1], EPERM); // COHERENT, host OWNED
        }
        // [reclaimable x3, then host OWNED]: nothing scrubbed.
        t.err(Id::Reclaim, &[d, 4], EPERM);
        assert_eq!(t.word(d + 1), 0xdead_0001, "refused RECLAIM scrubbed");

        // Success: scrubbed (zeroed, cleaned to PoC) and the host's again.
        let before = t.m.hyp().maintenance().counts();
        t.ok0(Id::Reclaim, &[d, 3]);
        let after = t.m.hyp().maintenance().counts();
        let cleaned = after.dcache_bytes - before.dcache_bytes;
        assert!(cleaned >= 3 * 4096, "[{model}] cleaned {cleaned} bytes");
        // Tags are contents too (RULES.md S3): every page's are zeroed.
        assert_eq!(
            after.tag_bytes - before.tag_bytes,
            3 * 4096,
            "[{model}] tags"
        );
        t.expect_q(d, 3, HOST_RAM);
        for k in 0..3 {
            assert_eq!(t.hread((d + k) << 12), Some(0), "scrubbed");
            assert!(t.is_zero(d + k), "whole page scrubbed");
        }
        t.ok0(Id::Reclaim, &[pv, 8]);
        t.expect_q(pv, 8, HOST_RAM);
        t.err(Id::Reclaim, &[d, 1], EPERM); // twice
        if cacheable_device(model) {
            t.expect_q(c, 1, RECLAIMABLE_COH);
            t.ok0(Id::Reclaim, &[c, 1]);
            t.expect_q(c, 1, HOST_COH);
            assert_eq!(t.hread(c << 12), Some(0));
        }
        t.invariants();
    }
}

#[test]
fn guest_share() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let n2 = t.vm(NORMAL, 8);
        let s = t.ram(2);
        t.hwrite(s << 12, 0x5151);
        t.ok0(Id::GuestShare, &[n, s, 0x100, 2, RW]);
        t.expect_q(s, 2, HOST_SHARED_RAM);
        for k in 0..2 {
            let (pfn, leaf) = t.mapped(n, 0x100 + k);
            assert_eq!(pfn, s + k);
            assert_eq!(leaf.state, PageState::SharedBorrowed);
            assert_eq!(leaf.perms, perms(true, true, false));
            assert!(leaf.memtype.is_cacheable());
            assert_eq!(t.count(s + k), 1);
        }
        assert_eq!(t.hread(s << 12), Some(0x5151), "host keeps access");
        // Again: another gfn, another VM, other permissions.
        t.ok0(Id::GuestShare, &[n, s, 0x200, 1, R]);
        assert_eq!(t.mapped(n, 0x200).1.perms, perms(true, false, false));
        t.ok0(Id::GuestShare, &[n2, s, 0x100, 1, RWX]);
        assert_eq!(t.mapped(n2, 0x100).1.perms, perms(true, true, true));
        assert_eq!(t.count(s), 3);
        t.expect_q(s, 1, HOST_SHARED_RAM);
        t.hwrite(s << 12, 1);

        let f = t.ram(2);
        t.format_errors(Id::GuestShare, &[n, f, 0x300, 1, RW], Some(1), 3);
        t.gfn_errors(Id::GuestShare, &[n, f, 0x300, 1, RW], 2, 3);
        t.prot_errors(Id::GuestShare, &[n, f, 0x300, 1, RW], 4, false);
        for bad in [0, 999, u64::MAX] {
            t.err(Id::GuestShare, &[bad, f, 0x300, 1, RW], ENOENT);
        }
        // Class: RAM only.
        let m = t.mmio(1);
        let u = t.mmio_uc(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for pg in [m, u, c, hyp, UART] {
            t.err(Id::GuestShare, &[n, pg, 0x300, 1, RW], EINVAL);
        }
        for (pg, nr) in STRADDLES {
            t.err(Id::GuestShare, &[n, pg, 0x300, nr, RW], EINVAL);
        }
        // EPERM: VM kind, and every host state but OWNED or shared with guests.
        let p = t.vm(PROTECTED, 8);
        t.err(Id::GuestShare, &[p, f, 0x300, 1, RW], EPERM);
        t.ok0(Id::ShareHyp, &[f + 1, 1]);
        t.err(Id::GuestShare, &[n, f + 1, 0x300, 1, RW], EPERM);
        t.err(Id::GuestShare, &[n, f, 0x300, 2, RW], EPERM);
        let d = t.ram(1);
        t.ok0(Id::GuestDonate, &[p, d, 0x100, 1, RW]);
        t.err(Id::GuestShare, &[n, d, 0x300, 1, RW], EPERM); // guest OWNED
        let v = t.ram(4);
        t.ok(Id::VmCreate, &[NORMAL, v, 4]);
        t.err(Id::GuestShare, &[n, v, 0x300, 1, RW], EPERM); // hyp OWNED
        let gone = t.vm(PROTECTED, 4);
        let e = t.ram(1);
        t.ok0(Id::GuestDonate, &[gone, e, 0x100, 1, RW]);
        t.ok0(Id::VmDestroy, &[gone]);
        t.err(Id::GuestShare, &[n, e, 0x300, 1, RW], EPERM); // reclaimable
                                                             // EEXIST: the gfn is mapped, whatever mapped it.
        t.err(Id::GuestShare, &[n, f, 0x100, 1, RW], EEXIST);
        let f2 = t.ram(2);
        t.err(Id::GuestShare, &[n, f2, 0xff, 2, RW], EEXIST); // [free, taken]
        let g = t.ram(1);
        t.ok0(Id::GuestDonate, &[n, g, 0x400, 1, RW]);
        t.err(Id::GuestShare, &[n, f, 0x400, 1, RW], EEXIST);
        t.ok0(Id::GuestMapDevice, &[n, m, 0x401, 1, RW | DEV]);
        t.err(Id::GuestShare, &[n, f, 0x401, 1, RW], EEXIST);
        t.unmapped(n, 0xff);
        // EBUSY: the share count would overflow.
        let big = t.vm(NORMAL, 80);
        let z = t.ram(1);
        t.fill(
            Id::GuestShare,
            big,
            z,
            0x10000,
            u64::from(MAX_SHARE_COUNT),
            RW,
        );
        assert_eq!(t.count(z), MAX_SHARE_COUNT);
        t.err(Id::GuestShare, &[n, z, 0x300, 1, RW], EBUSY);
        t.err(Id::GuestShare, &[big, z, 0x300, 1, R], EBUSY);
        t.ok0(Id::GuestUnshare, &[big, 0x10000, 1]);
        t.ok0(Id::GuestShare, &[n, z, 0x300, 1, RW]);
        assert_eq!(t.count(z), MAX_SHARE_COUNT);
        // ENOMEM: the VM's pool is empty; VM_TOPUP and retry.
        let (sm, _) = t.tight_vm(NORMAL);
        let h = t.ram(1);
        t.err(Id::GuestShare, &[sm, h, 0x100, 1, RW], ENOMEM);
        let top = t.ram(4);
        t.ok0(Id::VmTopup, &[sm, top, 4]);
        t.ok0(Id::GuestShare, &[sm, h, 0x100, 1, RW]);
        t.expect_q(h, 1, HOST_SHARED_RAM);
        assert_eq!(t.mapped(sm, 0x100).0, h);
        t.invariants();
    }
}

#[test]
fn guest_unshare_gives_pages_back_one_run_at_a_time() {
    // The frames whose last borrower goes back to the host in one update
    // per run of consecutive frames: the DMA view counts them.
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let a = t.ram(4);
        let _gap = t.ram(1);
        let b = t.ram(4);
        t.ok0(Id::GuestShare, &[n, a, 0x100, 4, RW]);
        t.ok0(Id::GuestShare, &[n, b, 0x104, 4, RW]);
        let before = t.m.hyp().dma_updates();
        t.ok0(Id::GuestUnshare, &[n, 0x100, 8]);
        assert_eq!(t.m.hyp().dma_updates(), before + 2, "{model}: two runs");
        for p in (a..a + 4).chain(b..b + 4) {
            t.expect_q(p, 1, HOST_RAM);
        }
        t.ok0(Id::GuestShare, &[n, a, 0x100, 4, RW]);
        let before = t.m.hyp().dma_updates();
        t.ok0(Id::GuestUnshare, &[n, 0x100, 4]);
        assert_eq!(t.m.hyp().dma_updates(), before + 1, "{model}: one run");
    }
}

/// VM_DESTROY, too, gives pages back in one host update per run of
/// consecutive frames: a guest's four consecutive pages, donated or
/// shared, cost the DMA view as many updates as one page does.
#[test]
fn vm_destroy_gives_pages_back_one_run_at_a_time() {
    // On a fresh board each time, so that everything but the run's
    // length is the same.
    fn destroy_updates(model: &'static str, flags: u64, id: Id, nr: u64) -> u64 {
        let mut t = T::new(model);
        let vm = t.vm(flags, 8);
        let _gap = t.ram(1);
        let pages = t.ram(nr);
        t.ok0(id, &[vm, pages, 0x100, nr, RW]);
        let before = t.m.hyp().dma_updates();
        t.ok0(Id::VmDestroy, &[vm]);
        t.invariants();
        t.m.hyp().dma_updates() - before
    }
    for model in MODELS {
        for (flags, id) in [(PROTECTED, Id::GuestDonate), (NORMAL, Id::GuestShare)] {
            let one = destroy_updates(model, flags, id, 1);
            let four = destroy_updates(model, flags, id, 4);
            assert!(one >= 1, "[{model}] {id:?}: no update");
            assert_eq!(four, one, "[{model}] {id:?}: four pages in one run");
        }
    }
}

#[test]
fn guest_unshare() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let n2 = t.vm(NORMAL, 8);
        let p = t.vm(PROTECTED, 8);
        let s = t.ram(2);
        t.ok0(Id::GuestShare, &[n, s, 0x100, 2, RW]);
        t.ok0(Id::GuestShare, &[n2, s, 0x100, 1, RW]);
        t.ok0(Id::GuestUnshare, &[n, 0x100, 2]);
        t.unmapped(n, 0x100);
        t.unmapped(n, 0x101);
        t.expect_q(s, 1, HOST_SHARED_RAM); // n2 still has it
        assert_eq!(t.count(s), 1);
        t.expect_q(s + 1, 1, HOST_RAM);
        assert_eq!(t.count(s + 1), 0);
        t.ok0(Id::GuestUnshare, &[n2, 0x100, 1]);
        t.expect_q(s, 1, HOST_RAM);
        t.hwrite(s << 12, 4);

        // One gfn of each kind in n, one donated page in p.
        let a = t.ram(3);
        let m = t.mmio(1);
        t.ok0(Id::GuestShare, &[n, a, 0x200, 1, RW]);
        t.ok0(Id::GuestDonate, &[n, a + 1, 0x201, 1, RW]);
        t.ok0(Id::GuestMapDevice, &[n, m, 0x202, 1, RW | DEV]);
        t.ok0(Id::GuestDonate, &[p, a + 2, 0x200, 1, RW]);

        t.format_errors(Id::GuestUnshare, &[n, 0x200, 1], None, 2);
        t.gfn_errors(Id::GuestUnshare, &[n, 0x200, 1], 1, 2);
        for bad in [0, 999, u64::MAX] {
            t.err(Id::GuestUnshare, &[bad, 0x200, 1], ENOENT);
        }
        // ENOENT: nothing mapped at a gfn.
        t.err(Id::GuestUnshare, &[n, 0x300, 1], ENOENT);
        t.err(Id::GuestUnshare, &[n, 0x1ff, 2], ENOENT); // [free, shared]
        t.err(Id::GuestUnshare, &[n, 0x200, 4], ENOENT); // [.., free]
                                                         // EPERM: each unmapping call undoes only its own kind.
        t.err(Id::GuestUnshare, &[n, 0x201, 1], EPERM); // GUEST_DONATE
        t.err(Id::GuestUnshare, &[n, 0x202, 1], EPERM); // GUEST_MAP_DEVICE
        t.err(Id::GuestUnshare, &[p, 0x200, 1], EPERM); // protected, donated
        t.err(Id::GuestUnshare, &[n, 0x200, 2], EPERM); // [shared, donated]
        assert_eq!(t.mapped(n, 0x200).0, a);
        t.ok0(Id::GuestUnshare, &[n, 0x200, 1]);
        t.expect_q(a, 1, HOST_RAM);
        t.invariants();
    }
}

#[test]
fn guest_donate() {
    for model in MODELS {
        let mut t = T::new(model);
        let p = t.vm(PROTECTED, 8);
        let n = t.vm(NORMAL, 8);
        let d = t.ram(2);
        t.hwrite(d << 12, 0xd0d0);
        t.ok0(Id::GuestDonate, &[p, d, 0x100, 2, RWX]);
        t.expect_q(d, 2, GUEST_RAM);
        for k in 0..2 {
            let (pfn, leaf) = t.mapped(p, 0x100 + k);
            assert_eq!(pfn, d + k);
            assert_eq!(leaf.state, PageState::Owned);
            assert_eq!(leaf.perms, perms(true, true, true));
            assert!(leaf.memtype.is_cacheable());
        }
        assert_eq!(t.hread(d << 12), None, "the host loses access");
        assert_eq!(t.word(d), 0xd0d0, "donation passes contents on");
        // Into a normal VM too.
        let e = t.ram(1);
        t.ok0(Id::GuestDonate, &[n, e, 0x100, 1, R]);
        t.expect_q(e, 1, GUEST_RAM);
        assert_eq!(t.mapped(n, 0x100).1.state, PageState::Owned);
        assert_eq!(t.mapped(n, 0x100).1.perms, perms(true, false, false));
        assert_eq!(t.hread(e << 12), None);

        let f = t.ram(2);
        t.format_errors(Id::GuestDonate, &[p, f, 0x200, 1, RW], Some(1), 3);
        t.gfn_errors(Id::GuestDonate, &[p, f, 0x200, 1, RW], 2, 3);
        t.prot_errors(Id::GuestDonate, &[p, f, 0x200, 1, RW], 4, false);
        for bad in [0, 999, u64::MAX] {
            t.err(Id::GuestDonate, &[bad, f, 0x200, 1, RW], ENOENT);
        }
        let m = t.mmio(1);
        let u = t.mmio_uc(1);
        let c = t.coherent(1);
        let hyp = t.hyp_pfn();
        for pg in [m, u, c, hyp, UART] {
            t.err(Id::GuestDonate, &[p, pg, 0x200, 1, RW], EINVAL);
        }
        for (pg, nr) in STRADDLES {
            t.err(Id::GuestDonate, &[p, pg, 0x200, nr, RW], EINVAL);
        }
        // EPERM: only host OWNED pages.
        t.err(Id::GuestDonate, &[p, d, 0x200, 1, RW], EPERM); // already a guest's
        t.err(Id::GuestDonate, &[n, d, 0x200, 1, RW], EPERM);
        t.ok0(Id::ShareHyp, &[f + 1, 1]);
        t.err(Id::GuestDonate, &[p, f + 1, 0x200, 1, RW], EPERM);
        t.err(Id::GuestDonate, &[p, f, 0x200, 2, RW], EPERM); // [OWNED, shared]
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x101, 1, RW]);
        t.err(Id::GuestDonate, &[p, s, 0x200, 1, RW], EPERM); // shared with a guest
        t.err(Id::GuestDonate, &[n, s, 0x200, 1, RW], EPERM);
        let v = t.ram(4);
        t.ok(Id::VmCreate, &[NORMAL, v, 4]);
        t.err(Id::GuestDonate, &[p, v + 1, 0x200, 1, RW], EPERM); // hyp OWNED
        let gone = t.vm(PROTECTED, 4);
        let g = t.ram(1);
        t.ok0(Id::GuestDonate, &[gone, g, 0x100, 1, RW]);
        t.ok0(Id::VmDestroy, &[gone]);
        t.err(Id::GuestDonate, &[p, g, 0x200, 1, RW], EPERM); // reclaimable
                                                              // EEXIST.
        t.err(Id::GuestDonate, &[p, f, 0x100, 1, RW], EEXIST);
        let f2 = t.ram(2);
        t.err(Id::GuestDonate, &[p, f2, 0xff, 2, RW], EEXIST); // [free, taken]
        t.err(Id::GuestDonate, &[n, f, 0x101, 1, RW], EEXIST); // taken by a share
        t.unmapped(p, 0xff);
        // ENOMEM: the VM's pool is empty; VM_TOPUP and retry.
        let (sm, _) = t.tight_vm(PROTECTED);
        let h = t.ram(1);
        t.err(Id::GuestDonate, &[sm, h, 0x100, 1, RW], ENOMEM);
        let top = t.ram(4);
        t.ok0(Id::VmTopup, &[sm, top, 4]);
        t.ok0(Id::GuestDonate, &[sm, h, 0x100, 1, RW]);
        t.expect_q(h, 1, GUEST_RAM);
        t.invariants();
    }
}

#[test]
fn guest_map_device() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let n2 = t.vm(NORMAL, 8);
        let p = t.vm(PROTECTED, 8);
        let m = t.mmio(2);
        let u = t.mmio_uc(3);
        let c = t.coherent(3);

        // Normal VM, DEVICE: shared, the host keeps a Device mapping.
        t.ok0(Id::GuestMapDevice, &[n, m, 0x100, 1, RW | DEV]);
        t.expect_q(m, 1, HOST_SHARED_MMIO);
        assert_eq!(t.count(m), 1);
        let (pfn, leaf) = t.mapped(n, 0x100);
        assert_eq!(pfn, m);
        assert_eq!(leaf.state, PageState::SharedBorrowed);
        assert_eq!(leaf.memtype, MemType::Device);
        assert_eq!(leaf.perms, perms(true, true, false));
        t.host_type(m, MemType::Device);
        t.hwrite(m << 12, 1);
        // NORMAL_NC on an uncached-capable region: the host follows (D7).
        t.ok0(Id::GuestMapDevice, &[n, u, 0x101, 1, RW | NC]);
        t.expect_q(u, 1, HOST_SHARED_MMIO);
        assert_eq!(t.mapped(n, 0x101).1.memtype, MemType::NormalNc);
        t.host_type(u, MemType::NormalNc);
        t.ok0(Id::GuestMapDevice, &[n2, u, 0x101, 1, R | NC]);
        assert_eq!(t.count(u), 2);
        assert_eq!(t.mapped(n2, 0x101).1.perms, perms(true, false, false));
        t.ok0(Id::GuestMapDevice, &[n, u + 1, 0x102, 1, RW | DEV]);
        assert_eq!(t.mapped(n, 0x102).1.memtype, MemType::Device);
        // Protected VM: exclusive, the host loses its mapping.
        t.ok0(Id::GuestMapDevice, &[p, m + 1, 0x100, 1, RW | DEV]);
        t.expect_q(m + 1, 1, GUEST_MMIO);
        let (pfn, leaf) = t.mapped(p, 0x100);
        assert_eq!(
            (pfn, leaf.state, leaf.memtype),
            (m + 1, PageState::Owned, MemType::Device)
        );
        assert_eq!(t.hread((m + 1) << 12), None);
        // COHERENT NORMAL_WB only with FWB and DIC (D3).
        if cacheable_device(model) {
            t.ok0(Id::GuestMapDevice, &[n, c, 0x103, 1, RWX | WB]);
            t.expect_q(c, 1, HOST_SHARED_COH);
            let leaf = t.mapped(n, 0x103).1;
            assert_eq!(
                (leaf.memtype, leaf.perms),
                (MemType::NormalWb, perms(true, true, true))
            );
            t.host_type(c, MemType::NormalWb);
            t.ok0(Id::GuestMapDevice, &[p, c + 1, 0x101, 1, RW | WB]);
            t.expect_q(c + 1, 1, GUEST_COH);
        } else {
            t.err(Id::GuestMapDevice, &[n, c, 0x103, 1, RWX | WB], EFAULT);
            t.err(Id::GuestMapDevice, &[n, c, 0x103, 1, R | WB], EFAULT);
            t.err(Id::GuestMapDevice, &[p, c + 1, 0x101, 1, RW | WB], EFAULT);
        }

        let fm = t.mmio(2);
        t.format_errors(Id::GuestMapDevice, &[n, fm, 0x200, 1, RW], Some(1), 3);
        t.gfn_errors(Id::GuestMapDevice, &[n, fm, 0x200, 1, RW], 2, 3);
        t.prot_errors(Id::GuestMapDevice, &[n, fm, 0x200, 1, RW], 4, true);
        for bad in [0, 999, u64::MAX] {
            t.err(Id::GuestMapDevice, &[bad, fm, 0x200, 1, RW], ENOENT);
        }
        // Class and type: D1, HYP, undeclared MMIO (README), D2, D5,
        // ranges that leave their region.
        let r = t.ram(1);
        let hyp = t.hyp_pfn();
        for mt in [DEV, NC, WB] {
            t.err(Id::GuestMapDevice, &[n, r, 0x200, 1, RW | mt], EINVAL);
            t.err(Id::GuestMapDevice, &[n, hyp, 0x200, 1, RW | mt], EINVAL);
            t.err(Id::GuestMapDevice, &[n, UART, 0x200, 1, RW | mt], EINVAL);
            t.err(Id::GuestMapDevice, &[n, GICD, 0x200, 1, RW | mt], EINVAL);
            t.err(Id::GuestMapDevice, &[p, r, 0x200, 1, RW | mt], EINVAL);
        }
        t.err(Id::GuestMapDevice, &[n, fm, 0x200, 1, RW | NC], EINVAL);
        t.err(Id::GuestMapDevice, &[n, fm, 0x200, 1, RW | WB], EINVAL);
        t.err(Id::GuestMapDevice, &[n, u + 2, 0x200, 1, RW | WB], EINVAL);
        t.err(Id::GuestMapDevice, &[n, c + 2, 0x200, 1, RW | DEV], EINVAL);
        t.err(Id::GuestMapDevice, &[n, c + 2, 0x200, 1, RW | NC], EINVAL);
        t.err(
            Id::GuestMapDevice,
            &[n, MMIO_END - 1, 0x200, 2, RW | DEV],
            EINVAL,
        );
        t.err(
            Id::GuestMapDevice,
            &[n, UC_END - 1, 0x200, 2, RW | DEV],
            EINVAL,
        );
        t.err(
            Id::GuestMapDevice,
            &[n, COH_FIRST - 1, 0x200, 2, RW | WB],
            EINVAL,
        );
        t.err(
            Id::GuestMapDevice,
            &[n, COH_END - 1, 0x200, 2, RW | WB],
            EINVAL,
        );
        // D8: an MTE VM gets no device memory.
        if has_mte(model) {
            let mv = t.vm(MTE, 8);
            t.err(Id::GuestMapDevice, &[mv, fm, 0x200, 1, RW | DEV], EINVAL);
            t.err(Id::GuestMapDevice, &[mv, u + 2, 0x200, 1, RW | NC], EINVAL);
            t.err(Id::GuestMapDevice, &[mv, c + 2, 0x200, 1, RW | WB], EINVAL);
            let pv = t.vm(MTE | PROTECTED, 8);
            t.err(Id::GuestMapDevice, &[pv, fm, 0x200, 1, RW | DEV], EINVAL);
        }
        // ENOEXEC (D4): execute with a non-cacheable type.
        t.err(Id::GuestMapDevice, &[n, fm, 0x200, 1, RX | DEV], ENOEXEC);
        t.err(Id::GuestMapDevice, &[n, u + 2, 0x200, 1, RWX | NC], ENOEXEC);
        t.err(Id::GuestMapDevice, &[p, fm, 0x200, 1, RWX | DEV], ENOEXEC);
        // EPERM.
        t.err(Id::GuestMapDevice, &[n, m + 1, 0x200, 1, RW | DEV], EPERM); // p's
        t.err(Id::GuestMapDevice, &[p, m, 0x200, 1, RW | DEV], EPERM); // shared
        t.err(Id::GuestMapDevice, &[p, u, 0x200, 1, RW | NC], EPERM);
        t.err(Id::GuestMapDevice, &[n, m, 0x200, 2, RW | DEV], EPERM); // [ok, p's]
        if cacheable_device(model) {
            t.err(Id::GuestMapDevice, &[n, c + 1, 0x200, 1, RW | WB], EPERM);
            t.err(Id::GuestMapDevice, &[p, c, 0x200, 1, RW | WB], EPERM);
        }
        // EINVAL (D7): a page mapped in a guest keeps its one type.
        t.err(Id::GuestMapDevice, &[n2, u, 0x200, 1, RW | DEV], EINVAL);
        t.err(Id::GuestMapDevice, &[n2, u + 1, 0x200, 1, RW | NC], EINVAL);
        t.err(Id::GuestMapDevice, &[n2, u, 0x200, 2, RW | NC], EINVAL); // [ok, D7]
        t.ok0(Id::GuestMapDevice, &[n2, u + 1, 0x200, 1, R | DEV]);
        assert_eq!(t.count(u + 1), 2);
        // EEXIST.
        t.err(Id::GuestMapDevice, &[n, fm, 0x100, 1, RW | DEV], EEXIST);
        t.err(Id::GuestMapDevice, &[n, fm, 0xff, 2, RW | DEV], EEXIST); // [free, taken]
        let s = t.ram(1);
        t.ok0(Id::GuestShare, &[n, s, 0x300, 1, RW]);
        t.err(Id::GuestMapDevice, &[n, fm, 0x300, 1, RW | DEV], EEXIST);
        t.unmapped(n, 0xff);
        // EBUSY: the share count would overflow.
        let big = t.vm(NORMAL, 80);
        let v = t.mmio_uc(1);
        t.fill(
            Id::GuestMapDevice,
            big,
            v,
            0x10000,
            u64::from(MAX_SHARE_COUNT),
            RW | NC,
        );
        assert_eq!(t.count(v), MAX_SHARE_COUNT);
        t.err(Id::GuestMapDevice, &[n, v, 0x200, 1, RW | NC], EBUSY);
        t.ok0(Id::GuestUnmapDevice, &[big, 0x10000, 1]);
        t.ok0(Id::GuestMapDevice, &[n, v, 0x200, 1, RW | NC]);
        // ENOMEM: the VM's pool is empty; VM_TOPUP and retry.
        for (flags, want) in [(NORMAL, HOST_SHARED_MMIO), (PROTECTED, GUEST_MMIO)] {
            let (sm, _) = t.tight_vm(flags);
            let pg = t.mmio(1);
            t.err(Id::GuestMapDevice, &[sm, pg, 0x100, 1, RW | DEV], ENOMEM);
            let top = t.ram(4);
            t.ok0(Id::VmTopup, &[sm, top, 4]);
            t.ok0(Id::GuestMapDevice, &[sm, pg, 0x100, 1, RW | DEV]);
            t.expect_q(pg, 1, want);
        }
        t.invariants();
    }
}

/// What the host keeps of a whole 2 MiB it lends: memory lent write-back
/// stays one block (no table page spent on it), while non-cacheable
/// memory lent to a guest becomes 512 pages (D6), also where the range
/// would fit a block.
#[test]
fn lending_a_whole_block_keeps_it_only_when_cacheable() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let r = t.ram(1024);
        let b = r.next_multiple_of(512);
        t.hwrite(b << 12, 1);
        let pool = t.m.hyp().host_stage2().pool_len();
        t.ok0(Id::GuestShare, &[n, b, 0x200, 512, RW]);
        for p in [b, b + 511] {
            match t.host_entry(p) {
                Entry::Mapped { level, leaf, .. } => {
                    assert_eq!(level, 2, "[{model}] shared WB {p:#x} split");
                    assert_eq!(leaf.state, PageState::SharedOwned);
                }
                e => panic!("[{model}] {p:#x}: {e:?}"),
            }
        }
        assert_eq!(
            t.m.hyp().host_stage2().pool_len(),
            pool,
            "[{model}] table pages"
        );

        let u = t.mmio_uc(1024);
        let ub = u.next_multiple_of(512);
        t.ok0(Id::GuestMapDevice, &[n, ub, 0x400, 512, RW | NC]);
        for p in [ub, ub + 255, ub + 511] {
            t.host_type(p, MemType::NormalNc);
        }
        t.invariants();
    }
}

/// GUEST_UNSHARE of a whole 2 MiB the host kept as one block counts the
/// host's table pages by run, not page by page: the block goes back with
/// no table page, even on a board whose host pool is little more than its
/// boot reservation (fewer free pages than the block has pages).
#[test]
fn unsharing_a_whole_block_needs_no_table_page() {
    for model in MODELS {
        let mut t = T::new_on(model, SimMachine::with_spare_pool(model, 0).expect("board"));
        let n = t.vm(NORMAL, 8);
        let r = t.ram(1024);
        let b = r.next_multiple_of(512);
        t.ok0(Id::GuestShare, &[n, b, 0x200, 512, RW]);
        // One page shared out of each of other blocks: each split takes a
        // table page, until fewer are left than the block has pages.
        let mut gfn = 0x1000;
        while t.m.hyp().host_stage2().pool_len() >= 512 {
            let other = t.ram(512).next_multiple_of(512);
            t.ok0(Id::GuestShare, &[n, other, gfn, 1, RW]);
            gfn += 1;
        }
        let pool = t.m.hyp().host_stage2().pool_len();
        t.ok0(Id::GuestUnshare, &[n, 0x200, 512]);
        assert_eq!(
            t.m.hyp().host_stage2().pool_len(),
            pool,
            "[{model}] table pages"
        );
        t.expect_q(b, 512, HOST_RAM);
        t.invariants();
    }
}

#[test]
fn guest_unmap_device() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let n2 = t.vm(NORMAL, 8);
        let p = t.vm(PROTECTED, 8);
        let m = t.mmio(2);
        t.ok0(Id::GuestMapDevice, &[n, m, 0x100, 2, RW | DEV]);
        t.ok0(Id::GuestUnmapDevice, &[n, 0x100, 2]);
        t.unmapped(n, 0x100);
        t.unmapped(n, 0x101);
        t.expect_q(m, 2, HOST_MMIO);
        assert_eq!(t.count(m), 0);
        t.hwrite(m << 12, 1);
        t.host_type(m, MemType::Device);
        // Shared NC into two VMs: the host's type goes back to DEVICE only
        // when the last guest mapping goes (D7).
        let u = t.mmio_uc(1);
        t.ok0(Id::GuestMapDevice, &[n, u, 0x200, 1, RW | NC]);
        t.ok0(Id::GuestMapDevice, &[n2, u, 0x200, 1, RW | NC]);
        t.ok0(Id::GuestUnmapDevice, &[n, 0x200, 1]);
        t.expect_q(u, 1, HOST_SHARED_MMIO);
        assert_eq!(t.count(u), 1);
        t.host_type(u, MemType::NormalNc);
        t.ok0(Id::GuestUnmapDevice, &[n2, 0x200, 1]);
        t.expect_q(u, 1, HOST_MMIO);
        assert_eq!(t.hread(u << 12), Some(0));
        t.host_type(u, MemType::Device);
        if cacheable_device(model) {
            let c = t.coherent(1);
            t.ok0(Id::GuestMapDevice, &[n, c, 0x300, 1, RW | WB]);
            t.ok0(Id::GuestUnmapDevice, &[n, 0x300, 1]);
            t.expect_q(c, 1, HOST_COH);
        }

        // One gfn of each kind.
        let x = t.mmio(1);
        let pm = t.mmio(1);
        let a = t.ram(2);
        t.ok0(Id::GuestMapDevice, &[n, x, 0x400, 1, RW | DEV]);
        t.ok0(Id::GuestShare, &[n, a, 0x401, 1, RW]);
        t.ok0(Id::GuestDonate, &[n, a + 1, 0x402, 1, RW]);
        t.ok0(Id::GuestMapDevice, &[p, pm, 0x400, 1, RW | DEV]);

        t.format_errors(Id::GuestUnmapDevice, &[n, 0x400, 1], None, 2);
        t.gfn_errors(Id::GuestUnmapDevice, &[n, 0x400, 1], 1, 2);
        for bad in [0, 999, u64::MAX] {
            t.err(Id::GuestUnmapDevice, &[bad, 0x400, 1], ENOENT);
        }
        t.err(Id::GuestUnmapDevice, &[n, 0x500, 1], ENOENT);
        t.err(Id::GuestUnmapDevice, &[n, 0x3ff, 2], ENOENT); // [free, device]
        t.err(Id::GuestUnmapDevice, &[p, 0x400, 2], ENOENT); // [protected, free]
                                                             // EPERM: protected VM, or not a device mapping.
        t.err(Id::GuestUnmapDevice, &[p, 0x400, 1], EPERM);
        t.err(Id::GuestUnmapDevice, &[n, 0x401, 1], EPERM); // GUEST_SHARE
        t.err(Id::GuestUnmapDevice, &[n, 0x402, 1], EPERM); // GUEST_DONATE
        t.err(Id::GuestUnmapDevice, &[n, 0x400, 2], EPERM); // [device, shared]
        t.expect_q(pm, 1, GUEST_MMIO);
        t.ok0(Id::GuestUnmapDevice, &[n, 0x400, 1]);
        t.expect_q(x, 1, HOST_MMIO);
        // Protected device pages leave only with VM_DESTROY.
        t.ok0(Id::VmDestroy, &[p]);
        t.expect_q(pm, 1, HOST_MMIO);
        t.invariants();
    }
}

// ---------------------------------------------------------------------------
// ABI.md 2: guest calls

#[test]
fn guest_calls() {
    use host_interface::psci;
    for model in MODELS {
        let mut t = T::new(model);
        let other = t.vm(NORMAL, 8);
        for protected in [true, false] {
            let (h, run) = t.guest_vm(protected);
            // Discovery.
            assert_eq!(t.gcall(h, greg(SMCCC_VERSION, &[]))[0], 0x1_0001);
            for id in [0x8600_1234, 0xC600_0110, 0xC600_01FF, 0x8400_00FF, u64::MAX] {
                assert_eq!(
                    t.gcall(h, greg(SMCCC_ARCH_FEATURES, &[id]))[0],
                    SMCCC_NOT_SUPPORTED
                );
            }
            // SMC32 calls take W1: the upper half of x1 is not the argument.
            assert_eq!(
                t.gcall(
                    h,
                    greg(SMCCC_ARCH_FEATURES, &[0xdead_beef << 32 | SMCCC_VERSION])
                )[0],
                0
            );
            // Whatever x1..x3 held on the way in.
            for junk in [[0, 0, 0], [7, 8, 9]] {
                let uid = t.gcall(h, greg(VENDOR_HYP_CALL_UID, &junk));
                assert_eq!(uid, [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d]);
                assert_eq!(uid, KVM_UID.map(u64::from));
                assert_eq!(
                    t.gcall(h, greg(VENDOR_HYP_KVM_FEATURES, &junk)),
                    [
                        (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7),
                        0,
                        0,
                        0
                    ]
                );
            }
            assert_eq!(t.gcall(h, greg(HYP_MEMINFO, &[]))[0], 4096);
            for i in 0..3 {
                let mut a = [0u64; 3];
                a[i] = 1;
                t.gcall_invalid(h, greg(HYP_MEMINFO, &a));
            }
            // PSCI.
            assert_eq!(t.gcall(h, greg(PSCI_VERSION, &[]))[0], 0x1_0001);
            assert_eq!(t.gcall(h, greg(PSCI_MIGRATE_INFO_TYPE, &[]))[0], 2);
            for f in [
                PSCI_VERSION,
                PSCI_FEATURES,
                PSCI_MIGRATE_INFO_TYPE,
                PSCI_SYSTEM_OFF,
                PSCI_SYSTEM_RESET,
                0x8400_0002, // CPU_OFF
                0xC400_0003, // CPU_ON
                0xC400_0004, // AFFINITY_INFO
            ] {
                assert_eq!(t.gcall(h, greg(PSCI_FEATURES, &[f]))[0], psci::SUCCESS);
                let w1 = 0xdead_beef << 32 | f;
                assert_eq!(t.gcall(h, greg(PSCI_FEATURES, &[w1]))[0], psci::SUCCESS);
            }
            for f in [0x8400_00FF, 0xC600_0110] {
                assert_eq!(
                    t.gcall(h, greg(PSCI_FEATURES, &[f]))[0],
                    psci::NOT_SUPPORTED
                );
            }

            // Host-call IDs: NOT_SUPPORTED, not forwarded, no effect.
            let a = t.ram(1);
            for regs in [
                greg(0xC600_0100, &[]),
                greg(0xC600_0101, &[]),
                greg(0xC600_0102, &[a]),
                greg(0xC600_0110, &[a, 1]),
                greg(0xC600_0120, &[0, a, 1]),
                greg(0xC600_0124, &[other]),
                greg(0xC600_0130, &[other, a, 0x100, 1, RW]),
                greg(0xC600_0132, &[h, a, 0x900, 1, RW]),
                greg(0xC600_0180, &[]),
                greg(0xC600_01FF, &[1, 2, 3, 4, 5, 6]),
            ] {
                let before = t.snap();
                assert_eq!(t.gcall(h, regs)[0], SMCCC_NOT_SUPPORTED, "{regs:#x?}");
                t.unchanged(&before, &format!("host call {regs:#x?} from a guest"));
            }
            t.expect_q(a, 1, HOST_RAM);

            // Any other ID: an HVC exit with x0..x6 in the run page; the
            // host's results come back in x0..x3.
            for id in [
                0x8600_1234,
                0xC600_0042,
                0xC600_00FF,
                0xC600_0200,
                0x8400_00FF,
            ] {
                let args = [1, 2, 3, 4, 5, 6];
                let (r, log) = t.run(h, 0, vec![Act::Call(greg(id, &args))]);
                assert_eq!(r, exit(ExitReason::Hvc), "{id:#x}");
                assert_eq!(log.len(), 1);
                for (k, want) in [id, 1, 2, 3, 4, 5, 6].into_iter().enumerate() {
                    assert_eq!(t.run_field(run, RP_HVC_ARGS + 8 * k), want);
                }
                for k in 0..4 {
                    t.set_run(run, RP_HVC_RESULTS + 8 * k, 0x10 + k as u64);
                }
                let (r, log) = t.run(h, 0, vec![]);
                assert_eq!(r, exit(ExitReason::Interrupted));
                assert_eq!(log[0].x[..4], [0x10, 0x11, 0x12, 0x13]);
            }

            // MEM_SHARE: guest OWNED -> SHARED_OWNED, host SHARED_BORROWED.
            let g = t.ram(3);
            for k in 0..3 {
                t.hwrite((g + k) << 12, 0x6000 + k);
            }
            t.ok0(Id::GuestDonate, &[h, g, 0x800, 3, RW]);
            let ipa = 0x800 << 12;
            assert_eq!(t.gcall(h, greg(MEM_SHARE, &[ipa]))[0], 0);
            t.expect_q(g, 1, BORROWED_RAM);
            t.expect_q(g + 1, 2, GUEST_RAM);
            assert_eq!(t.mapped(h, 0x800).1.state, PageState::SharedOwned);
            assert_eq!(t.hread(g << 12), Some(0x6000));
            t.hwrite(g << 12, 0x7000);
            // The host may not pass on what it only borrows.
            t.err(Id::ShareHyp, &[g, 1], EPERM);
            t.err(Id::GuestShare, &[other, g, 0x100, 1, RW], EPERM);
            t.err(Id::GuestDonate, &[other, g, 0x100, 1, RW], EPERM);
            t.err(Id::VmTopup, &[other, g, 1], EPERM);
            t.err(Id::Reclaim, &[g, 1], EPERM);
            // Device pages, and for a normal VM a page the host shared in.
            let dm = t.mmio(1);
            t.ok0(Id::GuestMapDevice, &[h, dm, 0xa00, 1, RW | DEV]);
            if !protected {
                let hs = t.ram(1);
                t.ok0(Id::GuestShare, &[h, hs, 0xa01, 1, RW]);
            }
            // INVALID_PARAMETER: alignment, reserved x2/x3, state.
            for bad in [
                greg(MEM_SHARE, &[ipa]), // already shared
                greg(MEM_SHARE, &[ipa + 0x1000 + 8]),
                greg(MEM_SHARE, &[ipa + 0x1800]),
                greg(MEM_SHARE, &[ipa + 0x1000, 1]),
                greg(MEM_SHARE, &[ipa + 0x1000, 0, 1]),
                greg(MEM_SHARE, &[ipa + 0x1000, u64::MAX, u64::MAX]),
                greg(MEM_SHARE, &[0x900 << 12]), // nothing mapped
                greg(MEM_SHARE, &[0xa00 << 12]), // device (README)
                greg(MEM_SHARE, &[0xa01 << 12]), // host's page / nothing
                greg(MEM_SHARE, &[1 << 40]),
                greg(MEM_SHARE, &[!0xfff]),
            ] {
                t.gcall_invalid(h, bad);
            }
            // x4 and above are not checked (README).
            assert_eq!(
                t.gcall(h, greg(MEM_SHARE, &[ipa + 0x1000, 0, 0, 4, 5, 6]))[0],
                0
            );
            t.expect_q(g + 1, 1, BORROWED_RAM);

            // MEM_UNSHARE: back to guest OWNED, the host loses access;
            // without FWB the page is cleaned to PoC so that the host's
            // dirty lines cannot land later over the guest's data.
            let before = t.m.hyp().maintenance().counts().dcache_bytes;
            assert_eq!(t.gcall(h, greg(MEM_UNSHARE, &[ipa]))[0], 0);
            let cleaned = t.m.hyp().maintenance().counts().dcache_bytes - before;
            let fwb = model != "cortex-a57";
            assert_eq!(
                cleaned,
                if fwb { 0 } else { 4096 },
                "[{model}] MEM_UNSHARE clean"
            );
            t.expect_q(g, 1, GUEST_RAM);
            assert_eq!(t.mapped(h, 0x800).1.state, PageState::Owned);
            assert_eq!(t.hread(g << 12), None);
            assert_eq!(t.word(g), 0x7000);
            for bad in [
                greg(MEM_UNSHARE, &[ipa]),          // not shared
                greg(MEM_UNSHARE, &[ipa + 0x2000]), // never shared
                greg(MEM_UNSHARE, &[ipa + 0x1000 + 8]),
                greg(MEM_UNSHARE, &[ipa + 0x1000, 1]),
                greg(MEM_UNSHARE, &[ipa + 0x1000, 0, 1]),
                greg(MEM_UNSHARE, &[0x900 << 12]),
                greg(MEM_UNSHARE, &[0xa00 << 12]),
                greg(MEM_UNSHARE, &[0xa01 << 12]),
                greg(MEM_UNSHARE, &[1 << 40]),
            ] {
                t.gcall_invalid(h, bad);
            }

            // MMIO_GUARD: a page with nothing mapped; twice is fine.
            assert_eq!(t.gcall(h, greg(MMIO_GUARD, &[0x6000_0000]))[0], 0);
            assert_eq!(t.gcall(h, greg(MMIO_GUARD, &[0x6000_0000]))[0], 0);
            for bad in [
                greg(MMIO_GUARD, &[ipa]), // mapped
                greg(MMIO_GUARD, &[0xa00 << 12]),
                greg(MMIO_GUARD, &[0x6000_1008]),
                greg(MMIO_GUARD, &[0x6000_1000, 1]),
                greg(MMIO_GUARD, &[0x6000_1000, 0, 1]),
                greg(MMIO_GUARD, &[1 << 40]),
            ] {
                t.gcall_invalid(h, bad);
            }
            // Only guarded pages produce MMIO exits.
            let (r, _) = t.run(h, 0, vec![Act::Trap(data_abort(0x6000_0018, true))]);
            assert_eq!(r, exit(ExitReason::Mmio));
            assert_eq!(t.run_field(run, RP_FAULT_IPA), 0x6000_0018);
            assert_eq!(t.run(h, 0, vec![]).0, exit(ExitReason::Interrupted));
            let (r, _) = t.run(h, 0, vec![Act::Trap(data_abort(0x6000_1000, false))]);
            assert_eq!(r, exit(ExitReason::MemFault));
            assert_eq!(t.run_field(run, RP_FAULT_IPA), 0x6000_1000);
            assert_eq!(t.run(h, 0, vec![]).0, exit(ExitReason::Interrupted));

            // VM_DESTROY: pages shared back are the guest's, so reclaimable.
            t.ok0(Id::VmDestroy, &[h]);
            t.expect_q(g, 3, RECLAIMABLE_RAM);
            t.expect_q(dm, 1, HOST_MMIO);
        }
        // MMIO_GUARD that needs a table page from an empty pool answers
        // INVALID_PARAMETER (README).
        let (e, _) = t.tight_vm(NORMAL);
        assert_eq!(t.gcall(e, greg(SMCCC_VERSION, &[]))[0], 0x1_0001);
        t.gcall_invalid(e, greg(MMIO_GUARD, &[0x1234_5000]));
        t.invariants();
    }
}

/// ABI.md 2 promises PSCI 1.1, whose PSCI_FEATURES also reports whether
/// SMCCC_VERSION is implemented; "guests written for pKVM run unchanged", and
/// Linux (drivers/firmware/psci/psci.c, psci_init_smccc) asks exactly
/// PSCI_FEATURES(SMCCC_VERSION) before it trusts SMCCC 1.1 and so before it
/// looks for the pKVM services at all.
#[test]
fn psci_features_reports_smccc_version() {
    for model in MODELS {
        let mut t = T::new(model);
        for protected in [true, false] {
            let (h, _) = t.guest_vm(protected);
            assert_eq!(
                t.gcall(h, greg(PSCI_FEATURES, &[SMCCC_VERSION]))[0],
                host_interface::psci::SUCCESS,
                "[{model}] PSCI_FEATURES(SMCCC_VERSION)"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// ABI.md 1, return convention: NOT_SUPPORTED

#[test]
fn not_supported() {
    for model in MODELS {
        let mut t = T::new(model);
        let n = t.vm(NORMAL, 8);
        let a = t.ram(2);
        t.ok0(Id::GuestShare, &[n, a, 0x100, 1, RW]);
        let b = a + 1;
        // Unknown IDs, whatever the other registers hold.
        t.raw([0xC600_01FF, 1, 2, 3, 4, 5, 6], NS);
        t.raw([0xC600_01FF, u64::MAX, 0, 0, 0, 0, u64::MAX], NS);
        for id in [
            0xC600_0103,
            0xC600_010F,
            0xC600_0112,
            0xC600_011F,
            0xC600_0126,
            0xC600_012F,
            0xC600_0135,
            0xC600_0180,
            0xC600_01FE,
            0xC600_01FF,
            0xC600_0200,
            0xC600_00FF,
            0xC600_0000,
            0x8600_0100,
            0x4600_0100,
            0xC500_0100,
            0,
            u64::MAX,
        ] {
            t.raw([id, b, 1, 0, 0, 0, 0], NS);
            t.raw([id, 0, 0, 0, 0, 0, 0], NS);
        }
        // Guest-call IDs from the host.
        for id in [
            SMCCC_VERSION,
            SMCCC_ARCH_FEATURES,
            VENDOR_HYP_CALL_UID,
            VENDOR_HYP_KVM_FEATURES,
            HYP_MEMINFO,
            MEM_SHARE,
            MEM_UNSHARE,
            MMIO_GUARD,
            PSCI_VERSION,
            0x8400_0001,
            0xC400_0001,
            0x8400_0002,
            0xC400_0003,
            0xC400_0004,
            PSCI_MIGRATE_INFO_TYPE,
            PSCI_SYSTEM_OFF,
            PSCI_SYSTEM_RESET,
            PSCI_FEATURES,
        ] {
            t.raw([id, 0, 0, 0, 0, 0, 0], NS);
            t.raw([id, 0x100 << 12, 0, 0, 0, 0, 0], NS);
            t.raw([id, b << 12, 0, 0, 0, 0, 0], NS);
        }
        // Known IDs with any of bits 63:32 set, valid-looking arguments.
        for id in Id::ALL {
            for hi in [1u64 << 32, 1 << 63, 0xffff_ffff << 32] {
                let x0 = u64::from(id.id()) | hi;
                t.raw([x0, 0, 0, 0, 0, 0, 0], NS);
                t.raw([x0, b, 1, 0, 0, 0, 0], NS);
                t.raw([x0, n, 0, 0, 0, 0, 0], NS);
                t.raw([x0, n, 0x100, 1, 0, 0, 0], NS);
                t.raw([x0, n, b, 0x200, 1, RW, 0], NS);
            }
        }
        t.expect_q(a, 1, HOST_SHARED_RAM);
        t.expect_q(b, 1, HOST_RAM);
        assert!(t.vm_exists(n));
        t.unmapped(n, 0x200);
        t.invariants();
    }
}

// ---------------------------------------------------------------------------
// ABI.md 3.1: which error when several apply

#[test]
fn precedence() {
    for model in MODELS {
        let mut t = T::new(model);
        let cache = cacheable_device(model);
        let n = t.vm(NORMAL, 16);
        let p = t.vm(PROTECTED, 16);
        let big = t.vm(NORMAL, 80);
        let gone = t.vm(NORMAL, 4);
        t.ok0(Id::VmDestroy, &[gone]);
        // a: shared with the hypervisor; a+1: p's; a+2: shared with n at
        // 0x100; a+3: host OWNED.
        let a = t.ram(4);
        t.ok0(Id::ShareHyp, &[a, 1]);
        t.ok0(Id::GuestDonate, &[p, a + 1, 0x100, 1, RW]);
        t.ok0(Id::GuestShare, &[n, a + 2, 0x100, 1, RW]);
        // m: p's at 0x200; m+1, m+2: host OWNED.
        let m = t.mmio(3);
        t.ok0(Id::GuestMapDevice, &[p, m, 0x200, 1, RW | DEV]);
        let c = t.coherent(3);
        // n's gfn 0x501 is taken; 0x500 and 0x502 are free.
        let f = t.ram(1);
        t.ok0(Id::GuestShare, &[n, f, 0x501, 1, RW]);
        let hyp = t.hyp_pfn();
        let lim = t.lim;

        // 1 before 2: an unknown ID is not looked at further.
        t.raw([0xC600_01FF, 0, 0, 0, 0, 0, 1], NS);
        t.raw([0xC600_0103, a + 3, 0, 0, 0, 0, 0], NS);

        // 2 (format) before 3 (no such VM).
        let cases: Vec<(Id, Vec<u64>)> = vec![
            (Id::VmTopup, vec![999, a + 3, 0]),
            (Id::VmTopup, vec![gone, lim, 1]),
            (Id::VmTopup, vec![gone, a + 3, 1, 1]),
            (Id::VcpuCreate, vec![999, lim]),
            (Id::VcpuCreate, vec![999, a, 1]),
            (Id::VcpuRun, vec![999, 0, 1]),
            (Id::VcpuRun, vec![gone, 0, 0, 0, 0, 1]),
            (Id::VmDestroy, vec![gone, 1]),
            (Id::GuestShare, vec![999, a + 3, 0x300, 1, 0]),
            (Id::GuestShare, vec![999, a + 3, GUEST_IPA_PAGES, 1, RW]),
            (Id::GuestDonate, vec![gone, a + 3, 0x300, 513, RW]),
            (Id::GuestDonate, vec![gone, a + 3, 0x300, 1, RW, 1]),
            (Id::GuestMapDevice, vec![999, m + 1, 0x300, 1, RW | 0x300]),
            (Id::GuestMapDevice, vec![gone, lim, 0x300, 1, RW]),
            (Id::GuestUnshare, vec![999, 0x100, 0]),
            (Id::GuestUnmapDevice, vec![gone, GUEST_IPA_PAGES, 1]),
        ];
        for (id, args) in cases {
            t.err(id, &args, EINVAL);
        }
        // MTE on hardware without it is a format error: before EPERM.
        let want = if has_mte(model) { EPERM } else { EINVAL };
        t.err(Id::VmCreate, &[MTE, a, 2], want);

        // 3 (no such VM) before 4 (class), 5 (D3, D4) and 6 (per page).
        let cases: Vec<(Id, Vec<u64>)> = vec![
            (Id::VmTopup, vec![999, m + 1, 1]),
            (Id::VmTopup, vec![gone, hyp, 1]),
            (Id::VmTopup, vec![gone, a, 1]),
            (Id::VcpuCreate, vec![999, hyp]),
            (Id::VcpuCreate, vec![gone, a + 3]),
            (Id::VcpuRun, vec![gone, 0]),
            (Id::GuestShare, vec![999, c, 0x300, 1, RW]),
            (Id::GuestShare, vec![gone, a + 1, 0x100, 1, RW]),
            (Id::GuestDonate, vec![999, hyp, 0x300, 1, RW]),
            (Id::GuestDonate, vec![gone, a + 1, 0x300, 1, RW]),
            (Id::GuestMapDevice, vec![999, a + 3, 0x300, 1, RW | DEV]),
            (Id::GuestMapDevice, vec![gone, m + 1, 0x300, 1, RW | WB]),
            (Id::GuestMapDevice, vec![999, c, 0x300, 1, RW | NC]),
            (Id::GuestMapDevice, vec![999, c, 0x300, 1, RW | WB]),
            (Id::GuestMapDevice, vec![gone, m + 1, 0x300, 1, RX | DEV]),
            (Id::GuestMapDevice, vec![999, m, 0x200, 1, RW | DEV]),
            (Id::GuestUnmapDevice, vec![999, 0x200, 1]),
            (Id::GuestUnshare, vec![gone, 0x100, 1]),
        ];
        for (id, args) in cases {
            t.err(id, &args, ENOENT);
        }

        // 4 (class, type) before 5 and 6.
        t.err(
            Id::GuestMapDevice,
            &[n, COH_END - 1, 0x300, 2, RW | WB],
            EINVAL,
        );
        t.err(
            Id::GuestMapDevice,
            &[n, COH_FIRST - 1, 0x300, 2, RWX | WB],
            EINVAL,
        );
        if has_mte(model) {
            let mv = t.vm(MTE, 8);
            t.err(Id::GuestMapDevice, &[mv, c + 1, 0x300, 1, RW | WB], EINVAL); // D8, D3
        }
        t.err(Id::GuestMapDevice, &[n, m + 1, 0x300, 1, RX | NC], EINVAL); // D2, D4
        t.err(Id::GuestMapDevice, &[n, c + 1, 0x300, 1, RWX | DEV], EINVAL); // D5, D4
        t.err(Id::GuestMapDevice, &[n, a + 3, 0x300, 1, RX | DEV], EINVAL); // D1, D4
        t.err(Id::GuestMapDevice, &[n, hyp, 0x300, 1, RX], EINVAL);
        t.err(Id::GuestMapDevice, &[n, a + 1, 0x100, 1, RW | DEV], EINVAL); // D1, EPERM, EEXIST
        t.err(Id::GuestDonate, &[p, m, 0x100, 1, RW], EINVAL); // class, EPERM, EEXIST
        t.err(Id::GuestShare, &[p, c, 0x100, 1, RW], EINVAL); // class, VM kind, EEXIST
        t.err(Id::Reclaim, &[m, 1], EINVAL); // MMIO, and not reclaimable
        t.ok0(Id::ShareHyp, &[COH_FIRST - 1, 1]);
        t.err(Id::ShareHyp, &[COH_FIRST - 1, 2], EINVAL); // straddle, EPERM
        t.err(Id::VmTopup, &[n, COH_FIRST - 1, 2], EINVAL);
        t.ok0(Id::UnshareHyp, &[COH_FIRST - 1, 1]);

        // 5 (EFAULT, then ENOEXEC) before 6 and 7. Where every CPU has FWB
        // and DIC there is no EFAULT, and the later error shows.
        let (sm, _) = t.tight_vm(NORMAL); // an empty pool
        if cache {
            t.ok0(Id::GuestMapDevice, &[p, c, 0x300, 1, RW | WB]);
        } else {
            t.err(Id::GuestMapDevice, &[p, c, 0x300, 1, RW | WB], EFAULT);
        }
        let pick = |e: Errno| if cache { e } else { EFAULT };
        t.err(Id::GuestMapDevice, &[n, c, 0x501, 1, RW | WB], pick(EPERM));
        t.err(
            Id::GuestMapDevice,
            &[n, c + 1, 0x501, 1, RW | WB],
            pick(EEXIST),
        );
        t.err(
            Id::GuestMapDevice,
            &[sm, c + 2, 0x100, 1, RW | WB],
            pick(ENOMEM),
        );
        t.err(Id::GuestMapDevice, &[n, m, 0x300, 1, RX | DEV], ENOEXEC); // EPERM
        t.err(Id::GuestMapDevice, &[n, m + 1, 0x501, 1, RX | DEV], ENOEXEC); // EEXIST
        t.err(
            Id::GuestMapDevice,
            &[sm, m + 1, 0x100, 1, RX | DEV],
            ENOEXEC,
        ); // ENOMEM

        // 6, per page, across the range whatever the page order:
        // ENOENT before EPERM.
        let dn = t.ram(1);
        t.ok0(Id::GuestDonate, &[n, dn, 0x600, 1, RW]);
        t.err(Id::GuestUnshare, &[n, 0x600, 2], ENOENT); // [EPERM, ENOENT]
        t.err(Id::GuestUnshare, &[n, 0x5ff, 2], ENOENT); // [ENOENT, EPERM]
        t.err(Id::GuestUnshare, &[n, 0x600, 1], EPERM);
        t.err(Id::GuestUnmapDevice, &[p, 0x200, 2], ENOENT);
        t.err(Id::GuestUnmapDevice, &[p, 0x1ff, 2], ENOENT);
        t.err(Id::GuestUnmapDevice, &[p, 0x200, 1], EPERM);
        // EPERM before EBUSY: a pinned run page between pages not shared.
        let rp = t.ram(3);
        t.ok0(Id::ShareHyp, &[rp + 1, 1]);
        t.ok(Id::VcpuCreate, &[n, rp + 1]);
        t.err(Id::UnshareHyp, &[rp, 2], EPERM); // [EPERM, EBUSY]
        t.err(Id::UnshareHyp, &[rp + 1, 2], EPERM); // [EBUSY, EPERM]
        t.err(Id::UnshareHyp, &[rp + 1, 1], EBUSY);
        // Device pages: u0, u4 p's (EPERM); u2 at the share-count limit
        // (EBUSY); u1, u3, u6 mapped NC once (EINVAL, D7, for DEVICE); u5,
        // u7 host OWNED.
        let u = t.mmio_uc(8);
        t.ok0(Id::GuestMapDevice, &[p, u, 0x400, 1, RW | NC]);
        t.ok0(Id::GuestMapDevice, &[p, u + 4, 0x404, 1, RW | NC]);
        for (k, g) in [(1, 0x100), (3, 0x101), (6, 0x102)] {
            t.ok0(Id::GuestMapDevice, &[big, u + k, g, 1, RW | NC]);
        }
        t.fill(
            Id::GuestMapDevice,
            big,
            u + 2,
            0x10000,
            u64::from(MAX_SHARE_COUNT),
            RW | NC,
        );
        for (k, nr, g, mt, want) in [
            (0, 3, 0x700, NC, EPERM),   // [EPERM, ok, EBUSY]
            (2, 3, 0x700, NC, EPERM),   // [EBUSY, ok, EPERM]
            (1, 2, 0x700, DEV, EBUSY),  // [D7, EBUSY]
            (2, 2, 0x700, DEV, EBUSY),  // [EBUSY, D7]
            (3, 2, 0x700, DEV, EPERM),  // [D7, EPERM]
            (0, 2, 0x700, DEV, EPERM),  // [EPERM, D7]
            (6, 2, 0x500, DEV, EINVAL), // [D7, EEXIST]
            (5, 2, 0x501, DEV, EINVAL), // [EEXIST, D7]
            (2, 2, 0x500, NC, EBUSY),   // [EBUSY, EEXIST]
            (1, 2, 0x501, NC, EBUSY),   // [EEXIST, EBUSY]
            (4, 2, 0x500, NC, EPERM),   // [EPERM, EEXIST]
            (3, 2, 0x501, NC, EPERM),   // [EEXIST, EPERM]
            (5, 1, 0x501, NC, EEXIST),
        ] {
            t.err(Id::GuestMapDevice, &[n, u + k, g, nr, RW | mt], want);
        }
        // RAM: EPERM (state, VM kind) before EEXIST.
        t.err(Id::GuestShare, &[p, a + 3, 0x100, 1, RW], EPERM);
        t.err(Id::GuestShare, &[n, a, 0x501, 1, RW], EPERM);
        t.err(Id::GuestDonate, &[n, a + 2, 0x100, 1, RW], EPERM);
        t.err(Id::GuestShare, &[n, a + 1, 0x500, 2, RW], EPERM); // [EPERM, EEXIST]
        t.err(Id::GuestShare, &[n, a + 2, 0x501, 2, RW], EEXIST);

        // 6 before 7: EPERM, EBUSY, EINVAL (D7) and EEXIST before ENOMEM.
        t.err(Id::GuestDonate, &[sm, a + 1, 0x100, 1, RW], EPERM);
        t.err(Id::GuestShare, &[sm, a, 0x100, 1, RW], EPERM);
        t.err(Id::GuestMapDevice, &[sm, u, 0x100, 1, RW | NC], EPERM);
        t.err(Id::GuestMapDevice, &[sm, u + 2, 0x100, 1, RW | NC], EBUSY);
        t.err(Id::GuestMapDevice, &[sm, u + 1, 0x100, 1, RW | DEV], EINVAL);
        t.err(Id::GuestMapDevice, &[sm, u + 5, 0x100, 1, RW | NC], ENOMEM);
        let fr = t.ram(2);
        t.err(Id::GuestShare, &[sm, fr, 0x100, 1, RW], ENOMEM);
        t.err(Id::VmCreate, &[NORMAL, a, 1], EPERM);
        t.err(Id::VmCreate, &[NORMAL, fr, 1], ENOMEM);
        // A gfn taken at the end of one 1 GiB region, the next page in a
        // region whose tables the (empty) pool cannot pay for.
        let s2 = t.vm(NORMAL, 8);
        let x = t.ram(1);
        t.ok0(Id::GuestShare, &[s2, x, 0x3ffff, 1, RW]);
        t.drain(s2);
        t.err(Id::GuestShare, &[s2, fr, 0x40000, 1, RW], ENOMEM);
        t.err(Id::GuestShare, &[s2, fr, 0x3ffff, 2, RW], EEXIST);
        t.err(Id::GuestDonate, &[s2, fr, 0x3ffff, 2, RW], EEXIST);
        t.err(
            Id::GuestMapDevice,
            &[s2, m + 1, 0x3ffff, 2, RW | DEV],
            EEXIST,
        );
        // VCPU_CREATE: EPERM and EBUSY before ENOMEM.
        let r2 = t.hyp_shared();
        t.err(Id::VcpuCreate, &[sm, r2], ENOMEM);
        t.err(Id::VcpuCreate, &[sm, rp + 1], EBUSY);
        t.err(Id::VcpuCreate, &[sm, rp], EPERM);
        t.invariants();
    }
}

/// RULES.md S1: a device behind the SMMU reaches what the host owns, shares
/// or borrows, and nothing else; a call that takes a page has the SMMU's
/// TLB invalidated (and synced) before it returns, even for a page a device
/// used a moment before.
#[test]
fn dma_view_follows_ownership() {
    for model in MODELS {
        let mut t = T::new(model);
        let dev = |t: &T, pfn: u64| t.m.device_access(pfn << 12);
        // Host RAM and COHERENT: reachable; HYP, MMIO: not.
        let a = t.ram(4);
        assert!(dev(&t, a), "[{model}] host page");
        let c = t.coherent(1);
        assert!(dev(&t, c), "[{model}] COHERENT page");
        let hyp = t.hyp_pfn();
        assert!(!dev(&t, hyp), "[{model}] HYP page");
        assert!(!dev(&t, HYP_FIRST), "[{model}] hypervisor image");
        let mmio = t.mmio(1);
        assert!(!dev(&t, mmio), "[{model}] MMIO page");

        // A page the device just used, donated: blocked at once.
        let (h, _run) = t.guest_vm(true);
        assert!(dev(&t, a));
        let syncs = t.m.iommu().counts().2;
        t.ok0(Id::GuestDonate, &[h, a, 0x900, 1, RW]);
        assert!(!dev(&t, a), "[{model}] donated page still reachable");
        assert!(t.m.iommu().counts().2 > syncs, "[{model}] no CMD_SYNC");
        assert_eq!(t.m.iommu().unsynced(), 0);
        // The guest shares it back: reachable; unshares: blocked.
        assert_eq!(t.gcall(h, greg(MEM_SHARE, &[0x900 << 12]))[0], 0);
        assert!(dev(&t, a), "[{model}] page the guest shared");
        assert_eq!(t.gcall(h, greg(MEM_UNSHARE, &[0x900 << 12]))[0], 0);
        assert!(!dev(&t, a), "[{model}] page the guest unshared");

        // Shared into a normal VM and with the hypervisor: still the host's.
        let (n, _) = t.guest_vm(false);
        t.ok0(Id::GuestShare, &[n, a + 1, 0x900, 1, RW]);
        assert!(dev(&t, a + 1), "[{model}] page shared into a normal VM");
        t.ok0(Id::ShareHyp, &[a + 2, 1]);
        assert!(dev(&t, a + 2), "[{model}] page shared with the hypervisor");

        // VM_CREATE / VM_TOPUP pages: the hypervisor's.
        assert!(dev(&t, a + 3));
        t.ok0(Id::VmTopup, &[h, a + 3, 1]);
        assert!(!dev(&t, a + 3), "[{model}] VM_TOPUP page");

        // Destroy: reclaimable pages stay blocked until RECLAIM.
        t.ok0(Id::VmDestroy, &[h]);
        assert!(!dev(&t, a), "[{model}] reclaimable page");
        assert!(!dev(&t, a + 3), "[{model}] reclaimable pool page");
        t.ok0(Id::Reclaim, &[a, 1]);
        assert!(dev(&t, a), "[{model}] reclaimed page");
        t.invariants();
        assert!(!t.m.hyp().dma_view().is_some_and(|v| v.failed()));

        // The withheld bus masters' registers abort; their neighbours map.
        for base in [
            qemu_virt::SMMU_BASE,
            qemu_virt::SMMU_BASE + 0x1_0000,
            qemu_virt::FW_CFG_BASE,
            qemu_virt::ITS_BASE,
        ] {
            assert_eq!(t.hread(base), None, "[{model}] withheld {base:#x}");
            t.expect_q(base >> 12, 1, HOST_MMIO);
        }
        assert!(t.hread(qemu_virt::UART_BASE).is_some());
    }
}

/// The DMA view's regions end where RAM and COHERENT end: on a board with
/// assignable MMIO right past COHERENT's end, a page of it lent to a guest
/// and given back never enters the view, and costs it no update.
#[test]
fn mmio_bordering_coherent_stays_out_of_the_dma_view() {
    let manifest = format!(
        "{}\nmmio {:#x} 0x4000\n",
        platform::QEMU_VIRT_MANIFEST,
        COH_END << 12
    );
    for model in MODELS {
        let m = SimMachine::with_manifest(model, &manifest).expect("board");
        let mut t = T::new_on(model, m);
        let n = t.vm(NORMAL, 8);
        for (i, pfn) in [COH_END, COH_END + 2].into_iter().enumerate() {
            let gfn = 0x100 + 2 * i as u64;
            let before = t.m.hyp().dma_updates();
            t.ok0(Id::GuestMapDevice, &[n, pfn, gfn, 2, RW | DEV]);
            t.ok0(Id::GuestUnmapDevice, &[n, gfn, 2]);
            for p in [pfn, pfn + 1] {
                assert!(
                    !t.m.device_access(p << 12),
                    "[{model}] MMIO {p:#x} in the DMA view"
                );
            }
            assert_eq!(
                t.m.hyp().dma_updates(),
                before,
                "[{model}] MMIO at {pfn:#x} updated the DMA view"
            );
        }
        assert!(t.m.device_access((COH_END - 1) << 12), "[{model}] COHERENT");
        t.invariants();
    }
}

/// RULES.md S1 through the SMMU's TLB: a device's cached translations of a
/// 2 MiB block of the DMA view are all dropped when the block goes (not
/// only its first page's), and so are those of more pages than one batch
/// of page invalidations holds; one page taken costs one invalidation by
/// IPA, not the whole TLB.
#[test]
fn dma_view_invalidates_blocks_and_long_runs() {
    for model in MODELS {
        let mut t = T::new(model);
        let dev = |t: &T, pfn: u64| t.m.device_access(pfn << 12);
        let (h, _run) = t.guest_vm(true);
        let r = t.ram(1536);
        let block = r.next_multiple_of(512);
        let split = block + 512;

        // A whole block of the view, cached by the device at two pages.
        assert!(dev(&t, block + 7) && dev(&t, block + 300));
        t.ok0(Id::GuestDonate, &[h, block, 0x1000, 512, RW]);
        assert!(!dev(&t, block + 7), "[{model}] page 7 of a donated block");
        assert!(
            !dev(&t, block + 300),
            "[{model}] page 300 of a donated block"
        );

        // One page out of a block splits it; then one more page costs one
        // TLBI by IPA.
        t.ok0(Id::GuestDonate, &[h, split, 0x1200, 1, RW]);
        assert!(dev(&t, split + 1));
        let (ipa, all, _) = t.m.iommu().counts();
        t.ok0(Id::GuestDonate, &[h, split + 1, 0x1201, 1, RW]);
        let (ipa2, all2, _) = t.m.iommu().counts();
        assert_eq!(
            (ipa2 - ipa, all2 - all),
            (1, 0),
            "[{model}] one page: one TLBI by IPA"
        );
        assert!(!dev(&t, split + 1), "[{model}] the page");

        // Ten pages of a split block, all cached: more than one batch of
        // page invalidations, so the whole view's entries go.
        for p in split + 20..split + 30 {
            assert!(dev(&t, p));
        }
        t.ok0(Id::GuestDonate, &[h, split + 20, 0x1220, 10, RW]);
        for p in split + 20..split + 30 {
            assert!(!dev(&t, p), "[{model}] page {} of ten", p - split - 20);
        }
        assert_eq!(t.m.iommu().unsynced(), 0);
        t.invariants();
    }
}

// ---------------------------------------------------------------------------
// RULES.md S4: a protected VM's secondaries start only through the guest's
// own CPU_ON, and no vCPU takes the host's entry point once it has run.

#[test]
fn protected_secondaries_start_only_through_guest_cpu_on() {
    for model in MODELS {
        for protected in [true, false] {
            let mut t = T::new(model);
            let (h, run0) = t.guest_vm(protected);
            // vCPU 1, created after vCPU 0 ran, with the host's entry point
            // and x0 in its run page: the guest's own code, at an IPA the VM
            // owns.
            let (i, run1) = t.vcpu(h);
            assert_eq!(i, 1);
            t.set_run(run1, RP_ENTRY, 0x4000_0000);
            t.set_run(run1, RP_X0, 0xdead_0000);
            let (r, log) = t.run(h, 1, vec![Act::Call(greg(SMCCC_VERSION, &[]))]);
            if protected {
                assert_eq!(r, exit(ExitReason::Wfi), "[{model}] powered off");
                assert!(log.is_empty(), "[{model}] the secondary ran nothing");
                assert_eq!(t.run_field(run1, RP_EXIT), ExitReason::Wfi as u64);
                // AFFINITY_INFO from the guest: still OFF (1).
                assert_eq!(t.gcall(h, greg(0xC400_0004, &[1, 0]))[0], 1);
                // The guest starts it at its own entry and context.
                let (r, _) = t.run(
                    h,
                    0,
                    vec![Act::Call(greg(0xC400_0003, &[1, 0x4000_0100, 0x77]))],
                );
                assert_eq!(r, exit(ExitReason::Interrupted));
                assert_eq!(
                    t.run_field(run0, RP_KICK),
                    1 << 1,
                    "[{model}] CPU_ON names its target"
                );
                let (_, log) = t.run(h, 0, vec![]);
                assert_eq!(log[0].x[0], psci::SUCCESS);
                t.set_run(run1, RP_ENTRY, 0x4000_0000);
                t.set_run(run1, RP_X0, 0xdead_0001);
                let (r, log) = t.run(h, 1, vec![Act::Call(greg(SMCCC_VERSION, &[]))]);
                assert_eq!(r, exit(ExitReason::Interrupted));
                assert_eq!(log[0].pc, 0x4000_0100, "[{model}] the guest's entry");
                assert_eq!(log[0].x[0], 0x77, "[{model}] the guest's context");
            } else {
                // Normal VMs keep the host's choice.
                assert_eq!(r, exit(ExitReason::Interrupted));
                assert_eq!(log[0].pc, 0x4000_0000);
                assert_eq!(log[0].x[0], 0xdead_0000);
            }
            // Once a vCPU has run, the host's entry is never read again.
            for (vcpu, run) in [(0, run0), (1, run1)] {
                t.set_run(run, RP_ENTRY, 0x4000_0800);
                t.set_run(run, RP_X0, 0xbad);
                let (_, log) = t.run(h, vcpu, vec![Act::Call(greg(SMCCC_VERSION, &[]))]);
                assert_ne!(log[0].pc, 0x4000_0800, "[{model}] vCPU {vcpu} redirected");
                assert_ne!(log[0].x[0], 0xbad, "[{model}] vCPU {vcpu} x0 set");
            }
            t.invariants();
        }
    }
}

/// The DMA view's reservation (one last-level table per 2 MiB of RAM and
/// COHERENT memory, the levels above, the root): a page short is refused
/// with the count, the count builds the view.
#[test]
fn dma_view_needs_its_reservation_and_no_more() {
    let fdt = platform::qemu_virt_fdt(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE);
    let platform = platform::Platform::new(&fdt, platform::QEMU_VIRT_MANIFEST, &[], 44)
        .expect("the simulator's platform");
    let phys = SimPhys::new(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE);
    let needed = hyp::DmaView::<SimPhys>::pages_needed(&platform, sim::DMA_IPA_BITS);
    let tracked: u64 = platform
        .regions()
        .iter()
        .filter(|r| {
            matches!(
                r.class,
                platform::MemClass::Ram | platform::MemClass::Coherent
            )
        })
        .map(|r| r.nr_pages)
        .sum();
    // 960 MiB of RAM and COHERENT: 480 last-level tables, two more per
    // region (5) for partial blocks at its ends, one table above them, 8
    // for the levels above and splits, and the 2 concatenated root pages
    // of a 40-bit view.
    assert_eq!(tracked, 245_760);
    assert_eq!(platform.regions().len(), 5);
    assert_eq!(needed, 480 + 2 * 5 + 1 + 8 + 2);
    let hyp_region = platform
        .regions()
        .iter()
        .find(|r| r.class == platform::MemClass::Hyp)
        .copied()
        .expect("a HYP region");
    let base = (hyp_region.base_pfn + hyp_region.nr_pages - needed - 16) & !15;
    let view = |n: u64| {
        hyp::DmaView::new(
            phys.clone(),
            &platform,
            sim::DMA_IPA_BITS,
            &mut (base..base + n).map(|p| p << 12),
            Box::new(sim::SimIommu::default()),
        )
    };
    assert!(matches!(
        view(needed - 1),
        Err(hyp::DmaViewError::NotEnoughMemory { needed: n }) if n == needed
    ));
    assert!(view(needed).is_ok());
}

/// RULES.md S1 under the DMA view's worst case: one page of every 2 MiB of
/// RAM and COHERENT memory taken from the host (RAM donated, COHERENT
/// mapped into the protected guest), so that every block of the view is
/// split. The reservation covers it, to the page: a view given exactly
/// `pages_needed` pages, the first of them one past the root's alignment
/// (skipped for the root, so it feeds the pool), never fails closed, each
/// taken page is out of the devices' reach at once, and the host's pages
/// around it stay reachable.
#[test]
fn dma_view_survives_every_block_split() {
    let model = "max";
    let mut t = with_spare_hyp_pages(model);
    let n = hyp::DmaView::<SimPhys>::pages_needed(t.m.hyp().platform(), sim::DMA_IPA_BITS);
    // An odd page: the root's two pages must start at an even one.
    let first = spare_hyp_pages(&t, n + 16).start | 1;
    let view = hyp::DmaView::new(
        t.m.phys().clone(),
        t.m.hyp().platform(),
        sim::DMA_IPA_BITS,
        &mut (first..first + n).map(|p| p << 12),
        Box::new(t.m.iommu().clone()),
    )
    .expect("exactly the reservation");
    assert_eq!(view.stage2().root_pa() >> 12, first + 1, "the aligned pair");
    t.m.hyp_mut().attach_dma_view(view);
    let (h, _run) = t.guest_vm(true);
    let regions: Vec<(u64, u64, bool)> =
        t.m.hyp()
            .platform()
            .regions()
            .iter()
            .filter(|r| {
                matches!(
                    r.class,
                    platform::MemClass::Ram | platform::MemClass::Coherent
                )
            })
            .map(|r| {
                (
                    r.base_pfn,
                    r.base_pfn + r.nr_pages,
                    r.class == platform::MemClass::Ram,
                )
            })
            .collect();
    let (mut taken, mut blocks, mut gfn) = (0, 0, 0x10_0000);
    for (start, end, ram) in regions {
        let mut block = start & !511;
        while block < end {
            blocks += 1;
            // A page in the middle of the block, inside the region.
            let p = (block + 256).clamp(start, end - 1);
            let r = if ram {
                t.call(Id::GuestDonate, &[h, p, gfn, 1, RW])
            } else {
                t.call(Id::GuestMapDevice, &[h, p, gfn, 1, RW | WB])
            };
            if r[..2] == [0, 0] {
                taken += 1;
                gfn += 1;
                if gfn % 512 == 0 {
                    // Another last-level table for the guest.
                    let more = t.ram(1);
                    t.ok0(Id::VmTopup, &[h, more, 1]);
                }
                assert!(!t.m.device_access(p << 12), "[{model}] taken page {p:#x}");
                let q = if p > start { p - 1 } else { p + 1 };
                if t.q(q)[0] == 0 {
                    assert!(t.m.device_access(q << 12), "[{model}] host page {q:#x}");
                }
            }
            block += 512;
        }
    }
    // All but the blocks whose middle page the board already gave away
    // (the guest's own pages, the hypervisor's pool).
    assert!(
        taken + 8 >= blocks,
        "[{model}] {taken} of {blocks} blocks split"
    );
    assert!(
        !t.m.iommu().0.lock().unwrap().failed_closed,
        "[{model}] the DMA view ran out of table pages"
    );
    t.invariants();
}

/// A DMA view sized for `platform` on `pages` of `t`'s board, its SMMU
/// returned too.
fn extra_view(
    t: &T,
    platform: &platform::Platform,
    pages: std::ops::Range<u64>,
) -> (hyp::DmaView<SimPhys>, sim::SimIommu) {
    let iommu = sim::SimIommu::default();
    let view = hyp::DmaView::new(
        t.m.phys().clone(),
        platform,
        sim::DMA_IPA_BITS,
        &mut pages.map(|p| p << 12),
        Box::new(iommu.clone()),
    )
    .expect("the view's reservation");
    (view, iommu)
}

/// A board whose host pool is small, so that HYP pages are left for
/// [`spare_hyp_pages`].
fn with_spare_hyp_pages(model: &'static str) -> T {
    T::new_on(
        model,
        SimMachine::with_spare_pool(model, 64).expect("board"),
    )
}

/// HYP pages nothing uses on a board built with a small host pool: below
/// the DMA view's, `n` of them ending 1024 pages before the region's end.
fn spare_hyp_pages(t: &T, n: u64) -> std::ops::Range<u64> {
    let hyp_region =
        t.m.hyp()
            .platform()
            .regions()
            .iter()
            .find(|r| r.class == platform::MemClass::Hyp)
            .copied()
            .expect("a HYP region");
    let end = (hyp_region.base_pfn + hyp_region.nr_pages - 1024) & !15;
    end - n..end
}

/// A view attached after the host gave pages away (at boot the EL2 image
/// attaches it before any host call) still leaves those pages out: its
/// fill walks the host's table for annotated runs.
#[test]
fn a_dma_view_attached_late_leaves_out_what_the_host_gave_away() {
    let model = "max";
    let mut t = with_spare_hyp_pages(model);
    let (h, _run) = t.guest_vm(true);
    let a = t.ram(3);
    t.ok0(Id::GuestDonate, &[h, a + 1, 0x900, 1, RW]);
    let n = hyp::DmaView::<SimPhys>::pages_needed(t.m.hyp().platform(), sim::DMA_IPA_BITS);
    let pages = spare_hyp_pages(&t, n + 16);
    let (view, _iommu) = extra_view(&t, t.m.hyp().platform(), pages);
    t.m.hyp_mut().attach_dma_view(view);
    let hyp = t.m.hyp_pfn();
    let view = t.m.hyp().dma_view().expect("attached");
    assert!(
        view.allows(a << 12) && view.allows((a + 2) << 12),
        "host pages"
    );
    assert!(!view.allows((a + 1) << 12), "the donated page");
    assert!(!view.allows(hyp << 12), "a HYP page");
}

/// A view that cannot be updated (a bookkeeping bug: here a view sized for
/// a 256 MiB board on the 1 GiB one) stops all DMA at the first failed
/// update and says so: no device keeps a view the core no longer agrees
/// with. Each update is counted once (the EL2 image drains the SMMU's
/// events when the count moves).
#[test]
fn a_dma_view_that_runs_out_fails_closed() {
    let model = "max";
    let mut t = with_spare_hyp_pages(model);
    let (h, _run) = t.guest_vm(true);
    let fdt = platform::qemu_virt_fdt(qemu_virt::RAM_BASE, 256 << 20);
    let small = platform::Platform::new(&fdt, platform::QEMU_VIRT_MANIFEST, &[], 44)
        .expect("a 256 MiB board");
    let n = hyp::DmaView::<SimPhys>::pages_needed(&small, sim::DMA_IPA_BITS);
    let (view, iommu) = extra_view(&t, &small, spare_hyp_pages(&t, n + 16));
    t.m.hyp_mut().attach_dma_view(view);
    // One page out of each 2 MiB block: each split takes a table page
    // from the view's pool, sized for 128 MiB of host RAM, until one
    // cannot.
    let r = t.ram(200 * 512);
    let first = r.next_multiple_of(512);
    for (i, block) in (first..r + 199 * 512).step_by(512).enumerate() {
        if iommu.0.lock().unwrap().failed_closed {
            break;
        }
        let updates = t.m.hyp().dma_updates();
        t.ok0(Id::GuestDonate, &[h, block + 3, 0x1000 + i as u64, 1, RW]);
        assert_eq!(t.m.hyp().dma_updates(), updates + 1, "one update per call");
    }
    assert!(
        iommu.0.lock().unwrap().failed_closed,
        "the SMMU was not stopped"
    );
    assert!(t.m.hyp().dma_view().is_some_and(|v| v.failed()));
}

/// A multi-page call judges each page by its own metadata, also where the
/// host's table holds the pages as one run: UNSHARE_HYP of three shared
/// pages, the last pinned as a run page, is -EBUSY; GUEST_SHARE of three,
/// the last at the share limit, is -EBUSY.
#[test]
fn each_page_of_a_run_is_judged_by_its_own_metadata() {
    for model in MODELS {
        let mut t = T::new(model);
        let h = t.vm(NORMAL, 8);
        let a = t.ram(3);
        t.ok0(Id::ShareHyp, &[a, 3]);
        // Touched by the host: mapped SHARED_OWNED, the same leaf for all.
        for p in a..a + 3 {
            t.hread(p << 12);
        }
        t.ok(Id::VcpuCreate, &[h, a + 2]);
        t.err(Id::UnshareHyp, &[a, 3], EBUSY);
        t.ok0(Id::UnshareHyp, &[a, 2]);

        let b = t.ram(3);
        t.ok0(Id::GuestShare, &[h, b, 0x100, 3, RW]);
        let big = t.vm(NORMAL, 80);
        t.fill(
            Id::GuestShare,
            big,
            b + 2,
            0x10000,
            u64::from(MAX_SHARE_COUNT) - 1,
            RW,
        );
        assert_eq!(t.count(b + 2), MAX_SHARE_COUNT);
        let n = t.vm(NORMAL, 8);
        t.err(Id::GuestShare, &[n, b, 0x200, 3, RW], EBUSY);
        t.ok0(Id::GuestShare, &[n, b, 0x200, 2, RW]);
        t.invariants();
    }
}

/// What a guest shares back with the host (SHARED_BORROWED) the host may
/// read and write but never execute; a page the host shares into a guest
/// it still executes.
#[test]
fn the_host_never_executes_what_a_guest_shared() {
    for model in MODELS {
        let mut t = T::new(model);
        let (h, _run) = t.guest_vm(true);
        let a = t.ram(1);
        t.ok0(Id::GuestDonate, &[h, a, 0x900, 1, RW]);
        assert_eq!(t.gcall(h, greg(MEM_SHARE, &[0x900 << 12]))[0], 0);
        let pa = a << 12;
        assert!(
            t.m.host_touch(pa, hyp::Access::Read).is_ok(),
            "[{model}] read"
        );
        assert!(
            t.m.host_touch(pa, hyp::Access::Write).is_ok(),
            "[{model}] write"
        );
        assert!(
            t.m.host_touch(pa, hyp::Access::Exec).is_err(),
            "[{model}] the host executed a page a guest shared"
        );
        let (n, _) = t.guest_vm(false);
        let b = t.ram(1);
        t.ok0(Id::GuestShare, &[n, b, 0x900, 1, RW]);
        assert!(
            t.m.host_touch(b << 12, hyp::Access::Exec).is_ok(),
            "[{model}] own page"
        );
        t.invariants();
    }
}
