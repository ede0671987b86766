//! Each rule of the invariant checker (`hyp::invariants`), one test per
//! error path, and legal states it must pass. As in `checker_catches.rs`,
//! a test builds a legal state with real host calls, checks that it
//! passes, breaks exactly one descriptor of a real stage-2 table (the
//! host's, a guest's or the DMA view's) with a raw write, expects the
//! message naming the broken rule, restores the descriptor and expects a
//! pass again. Where the scope matters, the check also runs over the one
//! page broken (`pages` of one page), so that the scan's bounds are held
//! too. The last tests pin when `check_cached` reads a table again.

mod checker;

use checker::{ok, vm, G};
use host_interface::{vm_flags, HostCallId, PAGE_SIZE};
use hyp::invariants::WalkCache;
use hyp::phys::{read_u64, write_u64};
use hyp::HostAnnotation;
use pagetables::{memattr_bits, Entry, MemType, PageState, Stage2};
use scenario::{GuestOp, GuestOutcome, Machine, PageKind};
use sim::{tracked_ranges, SimMachine, SimPhys, GUEST_BASE_IPA};

/// Output-address bits of a stage-2 descriptor (4 KiB granule, 48-bit OA).
const OA: u64 = 0x0000_ffff_ffff_f000;
/// The software page-state bits \[56:55\] of a leaf.
const STATE: u64 = 0b11 << 55;
/// MemAttr\[3:0\], bits \[5:2\] of a leaf.
const MEMATTR: u64 = 0xf << 2;
/// prot R|W and GUEST_MAP_DEVICE's memtype field (ABI.md).
const RW: u64 = 3;
const DEV: u64 = 0;
const NC: u64 = 0x100;
const WB: u64 = 0x200;
/// The guest's MEM_SHARE call (ABI.md 2).
const MEM_SHARE: u64 = 0xC600_0003;

fn check_in(m: &SimMachine, pages: &[(u64, u64)]) -> Result<(), String> {
    hyp::invariants::check(m.hyp(), pages)
}

fn check(m: &SimMachine) -> Result<(), String> {
    check_in(m, &tracked_ranges(m.hyp().platform()))
}

fn check_cached(m: &SimMachine, pages: &[(u64, u64)], cache: &mut WalkCache) -> Result<(), String> {
    hyp::invariants::check_cached(m.hyp(), pages, cache)
}

/// The descriptor translating `ipa` in `s2`: its address, value and level.
fn desc_at(s2: &Stage2<SimPhys>, phys: &SimPhys, ipa: u64) -> (u64, u64, u8) {
    let at = s2.descriptor_pa(ipa).expect("inside the address space");
    let (value, level) = s2.descriptor(ipa);
    assert_eq!(read_u64(phys, at), value);
    (at, value, level)
}

/// The page descriptor translating `ipa` in `s2`: its address and value.
fn desc(s2: &Stage2<SimPhys>, phys: &SimPhys, ipa: u64) -> (u64, u64) {
    let (at, value, level) = desc_at(s2, phys, ipa);
    assert_eq!(level, 3, "a page descriptor translates {ipa:#x}");
    (at, value)
}

/// The host's page descriptor for `pfn`.
fn host_desc(m: &SimMachine, pfn: u64) -> (u64, u64) {
    desc(&m.hyp().host_stage2(), m.phys(), pfn * PAGE_SIZE)
}

/// The page descriptor for `gfn` in the guest in VM slot `slot`.
fn guest_desc(m: &SimMachine, slot: usize, gfn: u64) -> (u64, u64) {
    let (_, g) = m.hyp().vms().find(|(s, _)| *s == slot).unwrap();
    desc(g.stage2(), m.phys(), gfn * PAGE_SIZE)
}

/// The DMA view's page descriptor for `pfn`.
fn view_desc(m: &SimMachine, pfn: u64) -> (u64, u64) {
    let view = m.hyp().dma_view().expect("the simulated board has an SMMU");
    desc(view.stage2(), m.phys(), pfn * PAGE_SIZE)
}

/// The VM slots in use, in slot order.
fn slots(m: &SimMachine) -> Vec<usize> {
    m.hyp().vms().map(|(s, _)| s).collect()
}

fn fwb(m: &SimMachine) -> bool {
    m.hyp().host_stage2().fwb()
}

/// `d` pointing at `pfn`.
fn at_pfn(d: u64, pfn: u64) -> u64 {
    (d & !OA) | (pfn * PAGE_SIZE)
}

/// `d` in page state `s`.
fn in_state(d: u64, s: PageState) -> u64 {
    let bits = match s {
        PageState::Owned => 0b00,
        PageState::SharedOwned => 0b01,
        PageState::SharedBorrowed => 0b10,
    };
    (d & !STATE) | (bits << 55)
}

/// `d` with memory type `t`.
fn of_type(d: u64, t: MemType, fwb: bool) -> u64 {
    (d & !MEMATTR) | (memattr_bits(t, fwb) << 2)
}

/// An invalid descriptor carrying the host annotation `a` (bits \[11:2\]).
fn annotated(a: HostAnnotation) -> u64 {
    u64::from(a.encode()) << 2
}

/// Write `value` at `at`; expect the checker, over every tracked page and
/// over each of `scopes`, to fail with a message containing each of
/// `want`; put the old value back and expect every check to pass.
#[track_caller]
fn corrupt(m: &SimMachine, at: u64, value: u64, want: &[&str], scopes: &[&[(u64, u64)]]) {
    let all = tracked_ranges(m.hyp().platform());
    let mut scopes = scopes.to_vec();
    scopes.insert(0, &all);
    for s in &scopes {
        check_in(m, s).unwrap();
    }
    let old = read_u64(m.phys(), at);
    write_u64(m.phys(), at, value);
    let results: Vec<_> = scopes.iter().map(|s| check_in(m, s)).collect();
    write_u64(m.phys(), at, old);
    for (s, r) in scopes.iter().zip(results) {
        match r {
            Err(e) => {
                for w in want {
                    assert!(e.contains(w), "over {s:x?}: expected {w:?}, got: {e}");
                }
            }
            Ok(()) => panic!("over {s:x?}: the checker missed {want:?}"),
        }
    }
    for s in &scopes {
        check_in(m, s).unwrap();
    }
}

/// [`checker::donated`] with the VM's slot: (machine, VM slot, mem).
fn donated(model: &str) -> (SimMachine, usize, u64) {
    let (m, _, mem) = checker::donated(model);
    let slot = slots(&m)[0];
    (m, slot, mem)
}

/// A normal VM borrowing the host's `mem` at G: (machine, VM slot, mem).
fn shared(model: &str) -> (SimMachine, usize, u64) {
    let mut m = SimMachine::new(model).unwrap();
    let n = vm(&mut m, 0);
    let mem = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[n, mem, G, 1, RW]));
    check(&m).unwrap();
    let slot = slots(&m)[0];
    (m, slot, mem)
}

// ---------------------------------------------------------------------------
// Legal states that must pass

#[test]
fn a_page_the_hypervisor_borrows_passes_with_share_count_zero() {
    let mut m = SimMachine::new("max").unwrap();
    let page = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::ShareHyp, &[page, 1]));
    let host = m.hyp().host_stage2().lookup(page * PAGE_SIZE);
    assert!(
        matches!(host, Entry::Mapped { leaf, .. } if leaf.state == PageState::SharedOwned),
        "{host:?}"
    );
    assert_eq!(m.hyp().page_meta(page).0, 0);
    check(&m).unwrap();
    check_in(&m, &[(page, 1)]).unwrap();
}

#[test]
fn a_page_two_vms_borrow_passes_with_share_count_two() {
    let mut m = SimMachine::new("max").unwrap();
    let a = vm(&mut m, 0);
    let b = vm(&mut m, 0);
    let mem = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[a, mem, G, 1, RW]));
    ok(m.call(HostCallId::GuestShare, &[b, mem, G + 3, 1, RW]));
    assert_eq!(m.hyp().page_meta(mem).0, 2);
    check(&m).unwrap();
    check_in(&m, &[(mem, 1)]).unwrap();
}

/// A protected VM booted with the test guest's image (16 pages of
/// consecutive frames at consecutive gfns), which then shares its second
/// page with the host (MEM_SHARE): (machine, VM slot, first frame).
fn guest_shared(model: &str) -> (SimMachine, usize, u64) {
    let mut m = SimMachine::new(model).unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let run = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::ShareHyp, &[run, 1]));
    ok(m.call(HostCallId::VcpuCreate, &[p, run]));
    assert_eq!(m.guest_boot(p, 0, true), GuestOutcome::Done(0));
    let slot = slots(&m)[0];
    let image = {
        let (_, g) = m.hyp().vms().next().unwrap();
        match g.stage2().lookup(GUEST_BASE_IPA) {
            Entry::Mapped { pa, .. } => pa >> 12,
            e => panic!("the image is not mapped: {e:?}"),
        }
    };
    let mut regs = [0u64; 7];
    regs[0] = MEM_SHARE;
    regs[1] = GUEST_BASE_IPA + PAGE_SIZE;
    assert_eq!(
        m.guest_op(p, 0, GuestOp::Hvc { regs }),
        GuestOutcome::Done(0)
    );
    (m, slot, image)
}

#[test]
fn a_guest_page_the_host_borrows_passes() {
    let (m, slot, image) = guest_shared("max");
    // The shared page lies between two OWNED pages of consecutive frames:
    // its state keeps it a run of its own.
    let gfn = GUEST_BASE_IPA >> 12;
    for (k, want) in [PageState::Owned, PageState::SharedOwned, PageState::Owned]
        .into_iter()
        .enumerate()
    {
        let (_, g) = m.hyp().vms().find(|(s, _)| *s == slot).unwrap();
        match g.stage2().lookup((gfn + k as u64) * PAGE_SIZE) {
            Entry::Mapped { pa, leaf, .. } => {
                assert_eq!(pa >> 12, image + k as u64);
                assert_eq!(leaf.state, want);
            }
            e => panic!("{e:?}"),
        }
    }
    let host = m.hyp().host_stage2().lookup((image + 1) * PAGE_SIZE);
    assert!(
        matches!(host, Entry::Mapped { leaf, .. } if leaf.state == PageState::SharedBorrowed),
        "{host:?}"
    );
    check(&m).unwrap();
    check_in(&m, &[(image + 1, 1)]).unwrap();
}

#[test]
fn pages_of_scattered_frames_at_consecutive_gfns_pass() {
    // Frames mem and mem + 2 at G and G + 1, the host holding mem + 1:
    // the guest's two pages must not be read as one run of frames.
    let mut m = SimMachine::new("max").unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let mem = m.alloc(PageKind::Ram, 3).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 1, RW]));
    ok(m.call(HostCallId::GuestDonate, &[p, mem + 2, G + 1, 1, RW]));
    m.host_touch((mem + 1) * PAGE_SIZE, hyp::Access::Read)
        .unwrap();
    check(&m).unwrap();
    // ... nor as one run of gfns: frames mem + 3 and mem + 4 at G + 5 and
    // G + 3.
    let more = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, more, G + 5, 1, RW]));
    ok(m.call(HostCallId::GuestDonate, &[p, more + 1, G + 3, 1, RW]));
    check(&m).unwrap();
    // Consecutive frames the walk reports as two runs, which make one
    // run of pages: across a 2 MiB boundary of the IPA space (two
    // tables), and with two permissions (R, then RW).
    let across = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, across, 0x1ff, 2, RW]));
    let perms = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, perms, G + 8, 1, 1]));
    ok(m.call(HostCallId::GuestDonate, &[p, perms + 1, G + 9, 1, RW]));
    m.host_touch((perms + 2) * PAGE_SIZE, hyp::Access::Read)
        .unwrap();
    check(&m).unwrap();
}

#[test]
fn a_borrowed_page_outside_the_pages_checked_passes() {
    // The host's table is read over `pages` only: a page a guest borrows
    // outside them shows no owner, and is not held to I2. The scopes end
    // just below the page, start just above it, or lie further below.
    let (m, _, mem) = shared("max");
    let all_but_mem = all_but(&m, mem);
    for pages in [
        &all_but_mem[..],
        &[(mem - 1, 1)],
        &[(mem - 2, 1)],
        &[(mem - 2, 2)],
        &[(mem + 1, 1)],
        &[(mem + 1, 8)],
    ] {
        check_in(&m, pages).unwrap_or_else(|e| panic!("over {pages:x?}: {e}"));
    }
}

#[test]
fn device_pages_shared_or_given_to_guests_pass() {
    for model in ["cortex-a57", "max"] {
        let mut m = SimMachine::new(model).unwrap();
        let n = vm(&mut m, 0);
        let p = vm(&mut m, vm_flags::PROTECTED);
        let dev = m.alloc(PageKind::Mmio, 2).unwrap();
        let uc = m.alloc(PageKind::MmioUc, 2).unwrap();
        // The host's own device page: Device.
        m.host_touch((dev + 1) * PAGE_SIZE, hyp::Access::Read)
            .unwrap();
        check(&m).unwrap();
        // Shared with a normal VM, Device and NORMAL_NC: the host's entry
        // follows (SHARED_OWNED, the same type).
        ok(m.call(HostCallId::GuestMapDevice, &[n, dev, G, 1, RW | DEV]));
        ok(m.call(HostCallId::GuestMapDevice, &[n, uc, G + 1, 1, RW | NC]));
        // Given to a protected VM, NORMAL_NC: the guest's own.
        ok(m.call(HostCallId::GuestMapDevice, &[p, uc + 1, G, 1, RW | NC]));
        for (pfn, t) in [(dev, MemType::Device), (uc, MemType::NormalNc)] {
            let host = m.hyp().host_stage2().lookup(pfn * PAGE_SIZE);
            assert!(
                matches!(host, Entry::Mapped { leaf, .. }
                    if leaf.state == PageState::SharedOwned && leaf.memtype == t),
                "{model}: {host:?}"
            );
        }
        check(&m).unwrap();
        for pfn in [dev, uc, uc + 1] {
            check_in(&m, &[(pfn, 1)]).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// I1

#[test]
fn a_page_annotated_for_a_vm_that_does_not_map_it_is_caught() {
    let (mut m, slot, mem) = donated("max");
    let q = vm(&mut m, vm_flags::PROTECTED);
    let other = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[q, other, G, 1, RW]));
    let second = *slots(&m).iter().find(|&&s| s != slot).unwrap();
    let (at, _) = host_desc(&m, mem);
    // The host's annotation of the first VM's page names the second VM.
    corrupt(
        &m,
        at,
        annotated(HostAnnotation::Guest(second)),
        &[&format!(
            "I1: {mem:#x} annotated for VM slot {second} which does not map it"
        )],
        &[&[(mem, 1)]],
    );
}

// ---------------------------------------------------------------------------
// I2

#[test]
fn a_borrowed_page_whose_host_entry_says_reclaimable_has_no_owner() {
    let (m, _, mem) = shared("max");
    let (at, _) = host_desc(&m, mem);
    corrupt(
        &m,
        at,
        annotated(HostAnnotation::Reclaimable),
        &[&format!("I2: borrowed page {mem:#x} has no owner mapping")],
        &[&[(mem, 1)]],
    );
}

#[test]
fn a_borrowed_page_the_host_no_longer_maps_has_no_owner() {
    // The host's SHARED_OWNED entry erased: the page reads as the host's,
    // not faulted in (OWNED), while the guest still borrows it.
    let (m, _, mem) = shared("max");
    let (at, _) = host_desc(&m, mem);
    corrupt(
        &m,
        at,
        0,
        &[&format!("I2: borrowed page {mem:#x} has no owner mapping")],
        &[&[(mem, 1)]],
    );
}

#[test]
fn a_page_the_host_borrows_from_a_guest_that_no_longer_maps_it_has_no_owner() {
    // The guest's SHARED_OWNED entry erased while the host still borrows
    // the page.
    let (m, slot, image) = guest_shared("max");
    let page = image + 1;
    let (at, _) = guest_desc(&m, slot, (GUEST_BASE_IPA >> 12) + 1);
    corrupt(
        &m,
        at,
        0,
        &[&format!("I2: borrowed page {page:#x} has no owner mapping")],
        &[&[(page, 1)]],
    );
}

#[test]
fn a_guest_borrowing_a_page_the_hypervisor_borrows_breaks_the_share_count() {
    // A normal VM's empty entry next to its borrowed page made to borrow a
    // page the host shares with the hypervisor only (share count 0).
    let mut m = SimMachine::new("max").unwrap();
    let h = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::ShareHyp, &[h, 1]));
    let (m, slot, _) = {
        let n = vm(&mut m, 0);
        let mem = m.alloc(PageKind::Ram, 1).unwrap();
        ok(m.call(HostCallId::GuestShare, &[n, mem, G, 1, RW]));
        let slot = slots(&m)[0];
        (m, slot, mem)
    };
    let (_, borrowed) = guest_desc(&m, slot, G);
    let (at, empty) = guest_desc(&m, slot, G + 1);
    assert_eq!(empty, 0);
    corrupt(
        &m,
        at,
        at_pfn(borrowed, h),
        &[&format!("share count 0 of {h:#x} but 1 borrowers")],
        &[&[(h, 1)]],
    );
}

#[test]
fn a_host_page_owned_but_borrowed_is_caught() {
    let (m, _, mem) = shared("cortex-a57");
    let (at, d) = host_desc(&m, mem);
    corrupt(
        &m,
        at,
        in_state(d, PageState::Owned),
        &[&format!("I2: {mem:#x} OWNED but borrowed")],
        &[&[(mem, 1)]],
    );
}

#[test]
fn a_guest_page_owned_but_borrowed_by_another_guest_is_caught() {
    // A protected VM owns mem (the host's entry names it); a normal VM's
    // borrowed mapping of its own page is pointed at mem. mem comes first
    // in the scan, so its rule is the one named.
    let (mut m, slot, mem) = donated("max");
    let n = vm(&mut m, 0);
    let s = m.alloc(PageKind::Ram, 1).unwrap();
    assert!(s > mem);
    ok(m.call(HostCallId::GuestShare, &[n, s, G, 1, RW]));
    let normal = *slots(&m).iter().find(|&&x| x != slot).unwrap();
    let (at, d) = guest_desc(&m, normal, G);
    corrupt(
        &m,
        at,
        at_pfn(d, mem),
        &[&format!("I2: {mem:#x} OWNED but borrowed")],
        &[],
    );
}

#[test]
fn a_lost_borrower_of_a_page_two_vms_borrow_breaks_the_share_count() {
    let mut m = SimMachine::new("max").unwrap();
    let a = vm(&mut m, 0);
    let b = vm(&mut m, 0);
    let mem = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[a, mem, G, 1, RW]));
    ok(m.call(HostCallId::GuestShare, &[b, mem, G, 1, RW]));
    let (at, _) = guest_desc(&m, slots(&m)[1], G);
    corrupt(
        &m,
        at,
        0,
        &[&format!("share count 2 of {mem:#x} but 1 borrowers")],
        &[&[(mem, 1)]],
    );
}

#[test]
fn a_guest_page_shared_with_the_host_outside_the_pages_checked_passes() {
    // The host's borrowing is read over `pages` only (the fuzz targets'
    // scope): a guest's SHARED_OWNED page outside them is not held to I2.
    let (m, _, image) = guest_shared("max");
    let page = image + 1;
    check(&m).unwrap();
    check_in(&m, &all_but(&m, page)).unwrap();
    check_in(&m, &[(page + 1, 1)]).unwrap();
}

#[test]
fn a_guest_page_shared_with_the_host_without_the_hosts_mapping_is_caught() {
    let (m, _, image) = guest_shared("max");
    let page = image + 1;
    let (at, _) = host_desc(&m, page);
    corrupt(
        &m,
        at,
        0,
        &[&format!("I2: {page:#x} SHARED_OWNED with no borrower")],
        &[&[(page, 1)]],
    );
}

#[test]
fn a_shared_coherent_or_device_page_without_borrower_is_caught() {
    // Share count 0 and no borrower is the hypervisor's borrowing, which
    // only RAM can be (SHARE_HYP): the host's own COHERENT and MMIO pages
    // marked SHARED_OWNED have no borrower.
    let mut m = SimMachine::new("max").unwrap();
    let c = m.alloc(PageKind::Coherent, 1).unwrap();
    let dev = m.alloc(PageKind::Mmio, 1).unwrap();
    for pfn in [c, dev] {
        m.host_touch(pfn * PAGE_SIZE, hyp::Access::Read).unwrap();
    }
    check(&m).unwrap();
    for pfn in [c, dev] {
        assert_eq!(m.hyp().page_meta(pfn).0, 0);
        // The host maps COHERENT in blocks: c is the first page of its
        // region and of its block, where the message starts.
        let (at, d, _) = desc_at(&m.hyp().host_stage2(), m.phys(), pfn * PAGE_SIZE);
        assert_eq!(pfn % 512, 0, "{pfn:#x}");
        corrupt(
            &m,
            at,
            in_state(d, PageState::SharedOwned),
            &[&format!("I2: {pfn:#x} SHARED_OWNED with no borrower")],
            &[&[(pfn, 1)]],
        );
    }
}

// ---------------------------------------------------------------------------
// I3

#[test]
fn a_mapped_page_annotated_reclaimable_or_hypervisor_is_caught() {
    let (m, _, mem) = donated("max");
    let (at, _) = host_desc(&m, mem);
    for a in [HostAnnotation::Reclaimable, HostAnnotation::Hyp] {
        corrupt(
            &m,
            at,
            annotated(a),
            &[&format!("I3: hypervisor/reclaimable page {mem:#x} mapped")],
            &[&[(mem, 1)]],
        );
    }
}

// ---------------------------------------------------------------------------
// I4 and D7

#[test]
fn a_shared_page_left_to_stage_1s_type_is_caught() {
    // max has FWB, where "stage 1 decides" has an encoding of its own.
    let (m, slot, mem) = shared("max");
    let fwb = fwb(&m);
    assert!(fwb);
    let (host_at, host) = host_desc(&m, mem);
    let (guest_at, guest) = guest_desc(&m, slot, G);
    let want = format!("I4: shared page {mem:#x} left to stage 1's type");
    corrupt(
        &m,
        host_at,
        of_type(host, MemType::Stage1, fwb),
        &[&want],
        &[&[(mem, 1)]],
    );
    corrupt(
        &m,
        guest_at,
        of_type(guest, MemType::Stage1, fwb),
        &[&want],
        &[&[(mem, 1)]],
    );
}

#[test]
fn two_uncached_types_on_a_shared_device_page_are_caught() {
    for model in ["cortex-a57", "max"] {
        let mut m = SimMachine::new(model).unwrap();
        let n = vm(&mut m, 0);
        let uc = m.alloc(PageKind::MmioUc, 1).unwrap();
        ok(m.call(HostCallId::GuestMapDevice, &[n, uc, G, 1, RW | NC]));
        let fwb = fwb(&m);
        let (at, d) = guest_desc(&m, slots(&m)[0], G);
        let want = format!("I4: {uc:#x} mapped with several memory types");
        corrupt(
            &m,
            at,
            of_type(d, MemType::Device, fwb),
            &[&want],
            &[&[(uc, 1)]],
        );
        let (at, d) = host_desc(&m, uc);
        corrupt(
            &m,
            at,
            of_type(d, MemType::Device, fwb),
            &[&want],
            &[&[(uc, 1)]],
        );
    }
}

#[test]
fn host_private_mmio_of_a_normal_type_is_caught() {
    for model in ["cortex-a57", "max"] {
        let mut m = SimMachine::new(model).unwrap();
        let dev = m.alloc(PageKind::Mmio, 1).unwrap();
        m.host_touch(dev * PAGE_SIZE, hyp::Access::Read).unwrap();
        let fwb = fwb(&m);
        let (at, d) = host_desc(&m, dev);
        for t in [MemType::NormalNc, MemType::NormalWb] {
            corrupt(
                &m,
                at,
                of_type(d, t, fwb),
                &[&format!("D7: host-private MMIO {dev:#x} not Device")],
                &[&[(dev, 1)]],
            );
        }
    }
}

// ---------------------------------------------------------------------------
// S1

#[test]
fn a_dma_view_mapping_a_page_at_another_address_is_caught() {
    let (m, _, mem) = donated("max");
    // mem + 1 is the host's (faulted in), mem + 3 untouched inside a long
    // run of the host's table.
    for pfn in [mem + 1, mem + 3] {
        let (at, d) = view_desc(&m, pfn);
        corrupt(
            &m,
            at,
            at_pfn(d, pfn + 1),
            // The message names the view's run and the host's pages in it.
            &[
                "S1: DMA view Mapped",
                &format!("for Ram pages {pfn:#x}+1, host reaches true at {pfn:#x}+1"),
            ],
            &[&[(pfn, 1)]],
        );
    }
}

#[test]
fn a_dma_view_missing_a_page_the_host_reaches_is_caught() {
    let (m, _, mem) = donated("max");
    for pfn in [mem + 1, mem + 3] {
        let (at, _) = view_desc(&m, pfn);
        corrupt(
            &m,
            at,
            0,
            &[
                "S1: DMA view Invalid",
                &format!("host reaches true at {pfn:#x}+1"),
            ],
            &[&[(pfn, 1)]],
        );
    }
}

#[test]
fn a_dma_view_reaching_a_guests_coherent_page_is_caught() {
    let mut m = SimMachine::new("max").unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let c = m.alloc(PageKind::Coherent, 2).unwrap();
    // max: cacheable device memory (FWB), so COHERENT may go to a guest.
    ok(m.call(HostCallId::GuestMapDevice, &[p, c, G, 1, RW | WB]));
    check(&m).unwrap();
    let (at, _) = view_desc(&m, c);
    let (_, own) = view_desc(&m, c + 1);
    corrupt(
        &m,
        at,
        at_pfn(own, c),
        &[
            "S1: DMA view Mapped",
            &format!("for Coherent pages {c:#x}+"),
            &format!("host reaches false at {c:#x}+1"),
        ],
        &[&[(c, 1)]],
    );
}

// ---------------------------------------------------------------------------
// check_cached: what it reads again

/// The tracked ranges with `pfn` left out.
fn all_but(m: &SimMachine, pfn: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (s, n) in tracked_ranges(m.hyp().platform()) {
        if (s..s + n).contains(&pfn) {
            if pfn > s {
                out.push((s, pfn - s));
            }
            if pfn + 1 < s + n {
                out.push((pfn + 1, s + n - pfn - 1));
            }
        } else {
            out.push((s, n));
        }
    }
    out
}

#[test]
fn new_pages_to_check_are_read_again_with_s1() {
    let (m, _, mem) = donated("max");
    let all = tracked_ranges(m.hyp().platform());
    let (_, d) = view_desc(&m, mem + 1);
    let (guest_at, old) = view_desc(&m, mem);
    // The view reaching the guest's page.
    write_u64(m.phys(), guest_at, at_pfn(d, mem));
    let mut cache = WalkCache::default();
    let without = all_but(&m, mem);
    check_cached(&m, &without, &mut cache).unwrap();
    // Nothing written since, but the pages are not the same: the host's
    // table and S1 are read over the new pages.
    let r = check_cached(&m, &all, &mut cache);
    write_u64(m.phys(), guest_at, old);
    assert!(
        r.as_ref().is_err_and(|e| e.contains("S1: DMA view")),
        "{r:?}"
    );
    check_cached(&m, &all, &mut cache).unwrap();
}

#[test]
fn new_pages_to_check_read_the_hosts_table_again() {
    let (m, _, mem) = donated("cortex-a57");
    let all = tracked_ranges(m.hyp().platform());
    let (at, own) = host_desc(&m, mem + 1);
    write_u64(m.phys(), at, at_pfn(own, mem + 2));
    let mut cache = WalkCache::default();
    check_cached(&m, &all_but(&m, mem + 1), &mut cache).unwrap();
    let r = check_cached(&m, &all, &mut cache);
    write_u64(m.phys(), at, own);
    assert!(
        r.as_ref().is_err_and(|e| e.contains(&format!(
            "host maps {:#x} at another output address",
            mem + 1
        ))),
        "{r:?}"
    );
    check_cached(&m, &all, &mut cache).unwrap();
}

#[test]
fn an_unwritten_host_table_is_not_read_again() {
    // A raw write (not through `Stage2`) leaves the generation alone: the
    // kept walk does not see it, a full check does.
    let (m, _, mem) = donated("cortex-a57");
    let all = tracked_ranges(m.hyp().platform());
    let mut cache = WalkCache::default();
    check_cached(&m, &all, &mut cache).unwrap();
    let (at, own) = host_desc(&m, mem + 1);
    write_u64(m.phys(), at, at_pfn(own, mem + 2));
    let kept = check_cached(&m, &all, &mut cache);
    let full = check(&m);
    write_u64(m.phys(), at, own);
    kept.unwrap();
    assert!(
        full.as_ref()
            .is_err_and(|e| e.contains("another output address")),
        "{full:?}"
    );
}

#[test]
fn an_unwritten_dma_view_is_not_read_again() {
    let (m, _, mem) = donated("max");
    let all = tracked_ranges(m.hyp().platform());
    let mut cache = WalkCache::default();
    check_cached(&m, &all, &mut cache).unwrap();
    let (at, old) = view_desc(&m, mem + 1);
    write_u64(m.phys(), at, 0);
    let kept = check_cached(&m, &all, &mut cache);
    let full = check(&m);
    write_u64(m.phys(), at, old);
    kept.unwrap();
    assert!(
        full.as_ref().is_err_and(|e| e.contains("S1: DMA view")),
        "{full:?}"
    );
}

#[test]
fn a_guest_page_its_owner_does_not_map_is_caught() {
    // The protected VM's only mapping of mem erased: the host's entry
    // still names the VM, which maps it nowhere.
    let (m, slot, mem) = donated("max");
    let (at, _) = guest_desc(&m, slot, G);
    corrupt(
        &m,
        at,
        0,
        &[&format!(
            "I1: {mem:#x} annotated for VM slot {slot} which does not map it"
        )],
        &[&[(mem, 1)]],
    );
}

#[test]
fn a_host_mapping_inside_a_guests_run_of_pages_is_two_owners() {
    // Three frames at three gfns make one run of the guest's; the host's
    // page after them is pointed at the middle one.
    let mut m = SimMachine::new("max").unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let mem = m.alloc(PageKind::Ram, 4).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 3, RW]));
    m.host_touch((mem + 3) * PAGE_SIZE, hyp::Access::Read)
        .unwrap();
    let (at, _) = host_desc(&m, mem + 1);
    let (_, own) = host_desc(&m, mem + 3);
    corrupt(
        &m,
        at,
        at_pfn(own, mem + 1),
        &[&format!("I1: page {:#x} has 2 owners", mem + 1)],
        &[&[(mem + 1, 1)]],
    );
}
