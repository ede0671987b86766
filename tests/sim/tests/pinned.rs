//! Tests that pin exact behaviour the other tests leave loose: the pool
//! reservation at boot, the metadata size, the feature names, the cache
//! maintenance before memory reaches a guest, and the host's own faults
//! (abort or map, and how much the map covers). Written against mutants
//! that cargo-mutants showed surviving (issue 13).

use host_interface::{features, HostCallId, PAGE_SIZE};
use hyp::{Access, HostAbort, Hypervisor, InitError};
use pagetables::Entry;
use platform::{qemu_virt, MemClass, Platform};
use scenario::{Machine, PageKind};
use sim::{SimMachine, SimMaintenance, SimPhys};

const PAGE: u64 = PAGE_SIZE;

fn board(model: &str) -> SimMachine {
    SimMachine::new(model).expect("board")
}

fn ok(r: [u64; 5]) {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
}

#[test]
fn feature_names_are_exactly_the_bits_set() {
    let names = |b: u64| hyp::feature_names(b).collect::<Vec<_>>();
    assert!(names(0).is_empty());
    assert_eq!(names(features::FWB), ["FWB"]);
    assert_eq!(names(features::MTE), ["MTE"]);
    assert_eq!(
        names(features::DIC | features::CACHEABLE_DEVICE),
        ["DIC", "CACHEABLE_DEVICE"]
    );
    assert_eq!(
        names(features::MASK),
        ["FWB", "DIC", "IDC", "MTE", "CACHEABLE_DEVICE"]
    );
    assert!(names(!features::MASK).is_empty());
}

#[test]
fn metadata_is_two_bytes_per_tracked_page() {
    let m = board("max");
    let tracked = m.hyp().platform().tracked_pages();
    assert!(tracked > 200_000);
    assert_eq!(m.hyp().metadata_bytes() as u64, 2 * tracked);
}

/// The host pool is reserved at boot for one last-level table per 2 MiB of
/// tracked memory, the levels above, and 8 more; one page less is refused
/// with the exact counts.
#[test]
fn boot_reserves_exactly_the_worst_case_tables() {
    for model in ["cortex-a57", "cortex-a710", "max"] {
        let cpu = platform::qemu_cpu(model, true).unwrap();
        let fdt = platform::qemu_virt_fdt(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE);
        let platform =
            || Platform::new(&fdt, platform::QEMU_VIRT_MANIFEST, &[], cpu.pa_bits).unwrap();
        let p = platform();
        let hyp = *p
            .regions()
            .iter()
            .find(|r| r.class == MemClass::Hyp)
            .unwrap();
        let l3 = p.tracked_pages().div_ceil(512);
        let root = pagetables::stage2_root_geometry(cpu.pa_bits, cpu.pa_bits).root_pages as u64;
        let needed = l3 + l3.div_ceil(512) + 8 + root;
        // Start 16-page aligned so the root is the first pages given.
        let first = (hyp.base_pfn + 15) & !15;
        let make = |pages: u64| {
            let phys = SimPhys::new(qemu_virt::RAM_BASE, qemu_virt::RAM_SIZE);
            let mut it = (first..first + pages).map(|p| p * PAGE);
            Hypervisor::new(platform(), cpu, phys, SimMaintenance::default(), &mut it)
        };
        assert_eq!(
            make(needed - 1).err(),
            Some(InitError::NotEnoughMemory {
                needed,
                given: needed - 1
            }),
            "{model}"
        );
        let hv = make(needed).unwrap_or_else(|e| panic!("{model}: {e:?}"));
        assert_eq!(hv.host_stage2().pool_len() as u64, needed - root, "{model}");
    }
}

/// Without FWB, memory is cleaned to PoC before a guest gets it (exactly
/// its bytes, then a DSB); with FWB, and IDC for executable memory, it is
/// not. Without DIC an executable mapping also invalidates the I-cache.
#[test]
fn memory_is_cleaned_before_a_guest_gets_it_only_without_fwb() {
    for (model, fwb, idc, dic) in [
        ("cortex-a57", false, false, false),
        ("cortex-a710", true, true, false),
        ("neoverse-v1", true, true, true),
    ] {
        let mut m = board(model);
        let cpu = *m.hyp().cpu();
        assert_eq!((cpu.fwb, cpu.idc, cpu.dic), (fwb, idc, dic), "{model}");
        let pool = m.alloc(PageKind::Ram, 8).unwrap();
        let r = m.call(HostCallId::VmCreate, &[0, pool, 8]);
        ok(r);
        let h = r[2];
        let pages = m.alloc(PageKind::Ram, 6).unwrap();
        for (i, (id, nr, prot)) in [
            (HostCallId::GuestShare, 3u64, 3u64),
            (HostCallId::GuestDonate, 2, 3),
            (HostCallId::GuestDonate, 1, 7),
        ]
        .into_iter()
        .enumerate()
        {
            let before = m.hyp().maintenance().counts();
            let pfn = pages + [0, 3, 5][i];
            ok(m.call(id, &[h, pfn, 0x100 + 8 * i as u64, nr, prot]));
            let after = m.hyp().maintenance().counts();
            let exec = prot & 4 != 0;
            let clean = !fwb || (exec && !idc);
            let cleaned = after.dcache_bytes - before.dcache_bytes;
            assert_eq!(cleaned, if clean { nr * PAGE } else { 0 }, "{model} {id:?}");
            if clean {
                assert!(after.dsb > before.dsb, "{model}: no DSB after the clean");
            }
            let icache = after.icache - before.icache;
            assert_eq!(icache, u64::from(exec && !dic), "{model} {id:?} icache");
        }
        // Device memory is never cleaned: DEVICE and NORMAL_NC MMIO on
        // every model, and COHERENT memory mapped write-back (executable
        // too), which only a CPU with FWB and DIC may do.
        let mut device = vec![(PageKind::Mmio, 0x3u64), (PageKind::MmioUc, 0x103)];
        if fwb && dic {
            device.push((PageKind::Coherent, 0x207));
        }
        for (i, (kind, x5)) in device.into_iter().enumerate() {
            let pfn = m.alloc(kind, 2).unwrap();
            let before = m.hyp().maintenance().counts();
            ok(m.call(
                HostCallId::GuestMapDevice,
                &[h, pfn, 0x200 + 8 * i as u64, 2, x5],
            ));
            let after = m.hyp().maintenance().counts();
            assert_eq!(after.dcache_bytes, before.dcache_bytes, "{model} {kind:?}");
            assert_eq!(after.icache, before.icache, "{model} {kind:?} icache");
        }
    }
}

fn ram_pfn(m: &SimMachine, k: u64) -> u64 {
    let (base, _) = m.hyp().platform().host_ram().next().unwrap();
    base / PAGE + k
}

#[test]
fn host_faults_map_a_block_only_over_a_uniform_untouched_2m() {
    let mut m = board("max");
    // A RAM page at a 2 MiB boundary + 7: the whole 2 MiB comes in as one
    // block, at the right place.
    let base = (ram_pfn(&m, 0x1000) & !511) + 512;
    assert_eq!(
        m.hyp_mut().host_fault((base + 7) * PAGE + 8, Access::Write),
        Ok(())
    );
    for p in [base, base + 7, base + 511] {
        match m.hyp().host_stage2().lookup(p * PAGE) {
            Entry::Mapped { pa, level, leaf } => {
                assert_eq!((pa, level), (p * PAGE, 2), "pfn {p:#x}");
                assert!(leaf.perms.r && leaf.perms.w && leaf.perms.x);
            }
            e => panic!("pfn {p:#x}: {e:?}"),
        }
    }
    assert_eq!(
        m.hyp().host_stage2().lookup((base + 512) * PAGE),
        Entry::Invalid { annotation: 0 }
    );
    // A 2 MiB with one page given away: only the faulting page comes in.
    let next = base + 1024;
    let r = m.call(HostCallId::VmCreate, &[0, next + 100, 2]);
    ok(r);
    assert_eq!(
        m.hyp_mut().host_fault((next + 3) * PAGE, Access::Read),
        Ok(())
    );
    match m.hyp().host_stage2().lookup((next + 3) * PAGE) {
        Entry::Mapped { pa, level, .. } => assert_eq!((pa, level), ((next + 3) * PAGE, 3)),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        m.hyp().host_stage2().lookup((next + 4) * PAGE),
        Entry::Invalid { annotation: 0 }
    );
    // The page given away aborts, whatever the access.
    for a in [Access::Read, Access::Write, Access::Exec] {
        assert_eq!(
            m.hyp_mut().host_fault((next + 100) * PAGE, a),
            Err(HostAbort)
        );
    }
}

#[test]
fn host_faults_on_mmio_map_one_page_never_executable() {
    let mut m = board("max");
    let uart = 0x0900_0000u64;
    assert_eq!(
        m.hyp_mut().host_fault(uart + 0x18, Access::Exec),
        Err(HostAbort)
    );
    assert_eq!(
        m.hyp().host_stage2().lookup(uart),
        Entry::Invalid { annotation: 0 },
        "a refused fault mapped nothing"
    );
    assert_eq!(m.hyp_mut().host_fault(uart + 0x18, Access::Read), Ok(()));
    match m.hyp().host_stage2().lookup(uart) {
        Entry::Mapped { pa, level, leaf } => {
            assert_eq!((pa, level), (uart, 3));
            assert!(leaf.perms.r && leaf.perms.w && !leaf.perms.x);
        }
        e => panic!("{e:?}"),
    }
    // Mapped now: read and write retry, exec still aborts.
    assert_eq!(m.hyp_mut().host_fault(uart, Access::Write), Ok(()));
    assert_eq!(m.hyp_mut().host_fault(uart, Access::Exec), Err(HostAbort));
}

#[test]
fn host_faults_outside_the_pa_space_or_in_hyp_memory_abort() {
    let mut m = board("cortex-a710");
    let bits = m.hyp().cpu().pa_bits;
    let top = 1u64 << bits;
    assert_eq!(m.hyp_mut().host_fault(top, Access::Read), Err(HostAbort));
    assert_eq!(m.hyp_mut().host_fault(!7, Access::Read), Err(HostAbort));
    // The last page inside the PA space is undeclared MMIO: mapped.
    assert_eq!(m.hyp_mut().host_fault(top - PAGE, Access::Read), Ok(()));
    let hyp = m.hyp_pfn();
    assert_eq!(
        m.hyp_mut().host_fault(hyp * PAGE, Access::Read),
        Err(HostAbort)
    );
    assert_eq!(
        m.hyp().host_stage2().lookup(hyp * PAGE),
        Entry::Invalid { annotation: 0 }
    );
}

/// Faults on untracked MMIO spend a budget of table pages: the pool left
/// after the reservation. Once it is spent they abort, and the tracked
/// memory's reservation stays whole.
#[test]
fn untracked_mmio_faults_stop_at_the_budget() {
    let mut m = SimMachine::with_spare_pool("max", 6).unwrap();
    let top = 1u64 << m.hyp().cpu().pa_bits;
    let mut mapped = 0;
    let mut aborted = false;
    // Each fault 1 GiB apart needs new tables.
    for k in 1..64u64 {
        let pa = top - k * (1 << 30);
        let before = m.hyp().host_stage2().pool_len();
        match m.hyp_mut().host_fault(pa, Access::Read) {
            Ok(()) => mapped += 1,
            Err(HostAbort) => {
                aborted = true;
                assert_eq!(
                    m.hyp().host_stage2().pool_len(),
                    before,
                    "an abort spent pages"
                );
                break;
            }
        }
    }
    assert!(aborted, "{mapped} faults on untracked MMIO, never an abort");
    assert!(mapped >= 1, "the spare pages allowed no fault at all");
    // Tracked memory still maps: a RAM fault, a SHARE_HYP.
    let ram = ram_pfn(&m, 0x3000);
    assert_eq!(m.hyp_mut().host_fault(ram * PAGE, Access::Write), Ok(()));
    ok(m.call(HostCallId::ShareHyp, &[ram + 1, 1]));
}

fn vm_of(m: &SimMachine, h: u64) -> impl std::ops::Deref<Target = hyp::Vm<SimPhys>> + '_ {
    m.hyp().vms().find(|(_, v)| v.handle() == h).expect("VM").1
}

/// VM_CREATE places a root of two concatenated tables (40-bit PA) on the
/// first 8 KiB-aligned pair of the donated pages; the rest is the pool.
#[test]
fn vm_create_root_fits_exactly_at_the_end_of_the_range() {
    let mut m = board("cortex-a710");
    assert_eq!(
        pagetables::stage2_root_geometry(40, m.hyp().cpu().pa_bits).root_pages,
        2
    );
    let mut pfn = m.alloc(PageKind::Ram, 8).unwrap();
    if pfn.is_multiple_of(2) {
        pfn += 1;
    }
    // Odd start, 2 pages: no aligned pair inside; nothing changes.
    let r = m.call(HostCallId::VmCreate, &[0, pfn, 2]);
    assert_eq!(r[..2], [0, host_interface::Errno::ENOMEM.to_x1()]);
    assert_eq!(m.hyp().vms().count(), 0);
    // Odd start, 3 pages: the pair is the last two; one pool page.
    let r = m.call(HostCallId::VmCreate, &[0, pfn, 3]);
    ok(r);
    let vm = vm_of(&m, r[2]);
    assert_eq!(vm.stage2().root_pa(), (pfn + 1) * PAGE);
    assert_eq!(vm.stage2().pool_len(), 1);
    // One-page roots (max: 48-bit PA): two pages, one of them the pool.
    let mut m = board("max");
    let pfn = m.alloc(PageKind::Ram, 3).unwrap();
    let r = m.call(HostCallId::VmCreate, &[0, pfn, 1]);
    assert_eq!(r[..2], [0, host_interface::Errno::ENOMEM.to_x1()]);
    let r = m.call(HostCallId::VmCreate, &[0, pfn + 1, 2]);
    ok(r);
    let vm = vm_of(&m, r[2]);
    assert_eq!(vm.stage2().root_pa(), (pfn + 1) * PAGE);
    assert_eq!(vm.stage2().pool_len(), 1);
}

/// The host's own entry for a page it shares: executable only for
/// cacheable memory that is not MMIO and that the host owns (not a page a
/// guest shared back with MEM_SHARE).
#[test]
fn host_entries_of_shared_pages_have_exact_permissions() {
    let mut m = board("max");
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let r = m.call(HostCallId::VmCreate, &[0, pool, 16]);
    ok(r);
    let h = r[2];
    let host_leaf = |m: &SimMachine, pfn: u64| match m.hyp().host_stage2().lookup(pfn * PAGE) {
        Entry::Mapped { leaf, .. } => leaf,
        e => panic!("pfn {pfn:#x}: {e:?}"),
    };
    let ram = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[h, ram, 0x10, 1, 3]));
    let l = host_leaf(&m, ram);
    assert_eq!((l.perms.r, l.perms.w, l.perms.x), (true, true, true));
    assert_eq!(l.state, pagetables::PageState::SharedOwned);
    assert_eq!(l.memtype, pagetables::MemType::NormalWb);
    let coh = m.alloc(PageKind::Coherent, 1).unwrap();
    ok(m.call(HostCallId::GuestMapDevice, &[h, coh, 0x11, 1, 3 | 0x200]));
    let l = host_leaf(&m, coh);
    assert_eq!(
        (l.perms.w, l.perms.x, l.memtype),
        (true, true, pagetables::MemType::NormalWb)
    );
    let mmio = m.alloc(PageKind::MmioUc, 1).unwrap();
    ok(m.call(HostCallId::GuestMapDevice, &[h, mmio, 0x12, 1, 3 | 0x100]));
    let l = host_leaf(&m, mmio);
    assert_eq!(
        (l.perms.w, l.perms.x, l.memtype),
        (true, false, pagetables::MemType::NormalNc)
    );
    // Unmapped: back to the host, not faulted in; a fault maps it Device.
    ok(m.call(HostCallId::GuestUnmapDevice, &[h, 0x12, 1]));
    assert_eq!(
        m.hyp().host_stage2().lookup(mmio * PAGE),
        Entry::Invalid { annotation: 0 }
    );
    assert_eq!(m.hyp_mut().host_fault(mmio * PAGE, Access::Read), Ok(()));
    let l = host_leaf(&m, mmio);
    assert_eq!(
        (l.perms.x, l.memtype, l.state),
        (
            false,
            pagetables::MemType::Device,
            pagetables::PageState::Owned
        )
    );
}

/// A guest that writes one value to ICC_SGI1R_EL1, then records whether
/// SGI `watch` is queued for it, and leaves.
struct SendSgi {
    value: Option<u64>,
    watch: u32,
    saw: Option<bool>,
}

impl hyp::VcpuExecutor<SimPhys> for SendSgi {
    fn enter(
        &mut self,
        _: u64,
        _: u64,
        _: hyp::GuestView<'_, SimPhys>,
        ctx: &mut hyp::VcpuContext,
    ) -> hyp::Trap {
        if let Some(value) = self.value.take() {
            return hyp::Trap::Sgi { value };
        }
        self.saw = Some(ctx.gic.is_queued(self.watch));
        hyp::Trap::Irq
    }
}

/// A VM with `n` vCPUs whose guest image is in place; returns its handle
/// and the run pages.
fn vm_with_vcpus(m: &mut SimMachine, n: u64) -> (u64, Vec<u64>) {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let r = m.call(HostCallId::VmCreate, &[0, pool, 16]);
    ok(r);
    let h = r[2];
    let img = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(
        HostCallId::GuestShare,
        &[h, img, sim::GUEST_BASE_IPA / PAGE, 1, 7],
    ));
    let mut runs = Vec::new();
    for _ in 0..n {
        let run = m.alloc(PageKind::Ram, 1).unwrap();
        ok(m.call(HostCallId::ShareHyp, &[run, 1]));
        ok(m.call(HostCallId::VcpuCreate, &[h, run]));
        hyp::phys::write_u64(m.phys(), run * PAGE, sim::GUEST_BASE_IPA);
        runs.push(run);
    }
    (h, runs)
}

/// Runs vCPU `vcpu` with `exec`; returns the exit reason and `kick_vcpus`.
fn run_with(m: &mut SimMachine, h: u64, vcpu: u64, run: u64, exec: &mut SendSgi) -> (u64, u64) {
    let regs = [u64::from(HostCallId::VcpuRun.id()), h, vcpu, 0, 0, 0, 0];
    let r = m.hyp_mut().host_call(&regs, exec).regs;
    assert_eq!(&r[..2], &[0, 0], "VCPU_RUN: {r:x?}");
    let kick = core::mem::offset_of!(host_interface::RunPage, kick_vcpus) as u64;
    (r[2], hyp::phys::read_u64(m.phys(), run * PAGE + kick))
}

/// ICC_SGI1R_EL1: INTID in bits 27:24, target list in 15:0 for vCPUs
/// RS * 16 + n (RS in 47:44), IRM (bit 40) for all others; an affinity
/// above Aff0 names no vCPU of ours.
#[test]
fn guest_sgis_reach_exactly_the_vcpus_named() {
    let interrupted = host_interface::ExitReason::Interrupted as u64;
    let cases: [(u64, u64, Option<u64>); 8] = [
        // (value, kick_vcpus, vCPU that must see SGI 5 next run)
        ((5 << 24) | 0b10, 0b10, Some(1)),
        ((5 << 24) | 0b100, 0b100, Some(2)),
        ((5 << 24) | 0b110, 0b110, Some(2)),
        ((5 << 24) | (1 << 40), 0b110, Some(1)),
        ((5 << 24) | (1 << 44) | 0b10, 0, None),
        ((5 << 24) | (1 << 16) | 0b10, 0, None),
        ((5 << 24) | (1 << 32) | 0b10, 0, None),
        ((5 << 24) | (1 << 48) | 0b10, 0, None),
    ];
    for (value, want_kick, target) in cases {
        let mut m = board("max");
        let (h, runs) = vm_with_vcpus(&mut m, 3);
        let mut send = SendSgi {
            value: Some(value),
            watch: 5,
            saw: None,
        };
        let (reason, kick) = run_with(&mut m, h, 0, runs[0], &mut send);
        assert_eq!(kick, want_kick, "value {value:#x}");
        assert_eq!(reason, interrupted, "value {value:#x}");
        // The sender did not get its own SGI.
        assert_eq!(send.saw, if want_kick == 0 { Some(false) } else { None });
        for t in 1..3u64 {
            let mut look = SendSgi {
                value: None,
                watch: 5,
                saw: None,
            };
            run_with(&mut m, h, t, runs[t as usize], &mut look);
            let sent = want_kick & (1 << t) != 0;
            assert_eq!(look.saw, Some(sent), "value {value:#x}, vCPU {t}");
            if target == Some(t) {
                assert!(sent);
            }
        }
    }
    // To itself (list bit 0 from vCPU 0): queued at once, the run goes on.
    let mut m = board("max");
    let (h, runs) = vm_with_vcpus(&mut m, 2);
    let mut send = SendSgi {
        value: Some((9 << 24) | 1),
        watch: 9,
        saw: None,
    };
    let (reason, kick) = run_with(&mut m, h, 0, runs[0], &mut send);
    assert_eq!((reason, kick), (interrupted, 0));
    assert_eq!(send.saw, Some(true));
    // To all others (IRM) from vCPU 1: vCPUs 0 and 2, never the sender.
    let mut m = board("max");
    let (h, runs) = vm_with_vcpus(&mut m, 3);
    for (t, run) in runs.iter().enumerate() {
        // Each vCPU started once, so that only the SGI is new.
        let mut idle = SendSgi {
            value: None,
            watch: 5,
            saw: None,
        };
        run_with(&mut m, h, t as u64, *run, &mut idle);
        assert_eq!(idle.saw, Some(false));
    }
    let mut send = SendSgi {
        value: Some((5 << 24) | (1 << 40)),
        watch: 5,
        saw: None,
    };
    let (reason, kick) = run_with(&mut m, h, 1, runs[1], &mut send);
    assert_eq!((reason, kick), (interrupted, 0b101));
    for (t, want) in [(0u64, true), (1, false), (2, true)] {
        let mut look = SendSgi {
            value: None,
            watch: 5,
            saw: None,
        };
        run_with(&mut m, h, t, runs[t as usize], &mut look);
        assert_eq!(look.saw, Some(want), "IRM from vCPU 1: vCPU {t}");
    }
}

/// The untracked budget is exactly the pool beyond the boot reservation:
/// faults on undeclared MMIO may spend all of it, to the last page, and
/// not one page more.
#[test]
fn untracked_mmio_faults_spend_exactly_the_budget() {
    let mut m = SimMachine::with_spare_pool("max", 5).unwrap();
    let l3 = m.hyp().platform().tracked_pages().div_ceil(512);
    let reserved = l3 + l3.div_ceil(512) + 8;
    let budget = m.hyp().host_stage2().pool_len() as u64 - reserved;
    assert!(budget >= 5, "budget {budget}");
    // One 1 GiB of undeclared MMIO: the first fault there needs the upper
    // tables, each later one (another 2 MiB) exactly one last-level table.
    let base = (1u64 << m.hyp().cpu().pa_bits) - (1 << 30);
    let mut spent = 0;
    for k in 0..budget + 4 {
        let before = m.hyp().host_stage2().pool_len() as u64;
        if m.hyp_mut()
            .host_fault(base + k * (2 << 20), Access::Read)
            .is_err()
        {
            assert_eq!(m.hyp().host_stage2().pool_len() as u64, before);
            break;
        }
        spent += before - m.hyp().host_stage2().pool_len() as u64;
    }
    assert_eq!(spent, budget);
    assert_eq!(m.hyp().host_stage2().pool_len() as u64, reserved);
}
