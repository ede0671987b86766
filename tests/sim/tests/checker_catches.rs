//! The invariant checker (`hyp::invariants::check`) is the oracle of the
//! model-based tests and of the fuzz targets, so it must itself be shown to
//! fail. Each test builds a legal state, checks it passes, then corrupts
//! one descriptor of a real stage-2 table (the host's, a guest's or the DMA
//! view's) in simulated memory, as a bug in the core could, and checks the
//! checker names the broken rule; restoring the descriptor makes the state
//! pass again. The last tests do the same to `check_cached`, which the fuzz
//! targets run after each step: it keeps what it read of a guest's table
//! until the table's generation changes.

mod checker;

use checker::{donated, ok, vm, G};
use host_interface::{vm_flags, HostCallId, PAGE_SIZE};
use hyp::invariants::WalkCache;
use hyp::phys::{read_u64, write_u64};
use pagetables::{Entry, Stage2};
use scenario::{Machine, PageKind};
use sim::{tracked_ranges, SimMachine, SimPhys};

/// Output-address bits of a stage-2 descriptor (4 KiB granule, 48-bit OA).
const OA: u64 = 0x0000_ffff_ffff_f000;

fn check(m: &SimMachine) -> Result<(), String> {
    hyp::invariants::check(m.hyp(), &tracked_ranges(m.hyp().platform()))
}

fn check_cached(m: &SimMachine, cache: &mut WalkCache) -> Result<(), String> {
    hyp::invariants::check_cached(m.hyp(), &tracked_ranges(m.hyp().platform()), cache)
}

/// The descriptor translating `ipa` in `s2`: its address and value, and
/// the level it sits at.
fn desc(s2: &Stage2<SimPhys>, phys: &SimPhys, ipa: u64) -> (u64, u64, u8) {
    let at = s2.descriptor_pa(ipa).expect("inside the address space");
    let (value, level) = s2.descriptor(ipa);
    assert_eq!(read_u64(phys, at), value);
    (at, value, level)
}

/// Write `value` at `at`, expect the checker to fail naming `rule`, put
/// the old value back and expect it to pass.
fn corrupt(m: &SimMachine, at: u64, value: u64, rule: &str) {
    let old = read_u64(m.phys(), at);
    write_u64(m.phys(), at, value);
    let r = check(m);
    write_u64(m.phys(), at, old);
    match r {
        Err(e) => assert!(e.contains(rule), "expected {rule}, got: {e}"),
        Ok(()) => panic!("the checker missed a broken {rule}"),
    }
    check(m).unwrap();
}

#[test]
fn host_mapping_of_a_guest_page_is_two_owners() {
    let (m, _, mem) = donated("max");
    let host = m.hyp().host_stage2();
    let (at, guest_entry, level) = desc(&host, m.phys(), mem * PAGE_SIZE);
    assert_eq!(level, 3);
    assert!(matches!(
        host.lookup(mem * PAGE_SIZE),
        Entry::Invalid { annotation } if annotation != 0
    ));
    let (_, own, _) = desc(&host, m.phys(), (mem + 1) * PAGE_SIZE);
    assert!(guest_entry != own);
    drop(host);
    // The host's own page descriptor, pointed at the guest's page.
    corrupt(&m, at, (own & !OA) | (mem * PAGE_SIZE), "I1");
}

#[test]
fn host_mapping_elsewhere_is_caught() {
    let (m, _, mem) = donated("cortex-a57");
    let host = m.hyp().host_stage2();
    let (at, own, _) = desc(&host, m.phys(), (mem + 1) * PAGE_SIZE);
    drop(host);
    // The host's page at mem + 1 translated to mem + 2.
    corrupt(
        &m,
        at,
        (own & !OA) | ((mem + 2) * PAGE_SIZE),
        "another output address",
    );
}

#[test]
fn guest_mapping_of_hypervisor_memory_is_caught() {
    let (mut m, _, _) = donated("max");
    let hyp_pfn = m.hyp_pfn();
    let (_, guest) = m.hyp().vms().next().unwrap();
    let (at, entry, level) = desc(guest.stage2(), m.phys(), G * PAGE_SIZE);
    drop(guest);
    assert_eq!(level, 3);
    corrupt(&m, at, (entry & !OA) | (hyp_pfn * PAGE_SIZE), "I3");
}

#[test]
fn a_guest_page_mapped_twice_in_guests_is_caught() {
    let mut m = SimMachine::new("max").unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let mem = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 2, 3]));
    check(&m).unwrap();
    let (_, guest) = m.hyp().vms().next().unwrap();
    let (at, entry, _) = desc(guest.stage2(), m.phys(), (G + 1) * PAGE_SIZE);
    drop(guest);
    // The guest's second page translated to its first: two owners of mem.
    corrupt(&m, at, (entry & !OA) | (mem * PAGE_SIZE), "I1");
}

#[test]
fn shared_page_without_borrower_is_caught() {
    let mut m = SimMachine::new("max").unwrap();
    let n = vm(&mut m, 0);
    let mem = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[n, mem, G, 1, 3]));
    check(&m).unwrap();
    let (_, guest) = m.hyp().vms().next().unwrap();
    let (at, _, _) = desc(guest.stage2(), m.phys(), G * PAGE_SIZE);
    drop(guest);
    // The guest's borrowed mapping dropped: the host's SHARED_OWNED page
    // (share count 1) has no borrower left.
    corrupt(&m, at, 0, "I2");
}

#[test]
fn two_memory_types_on_a_shared_page_are_caught() {
    // cortex-a57: no FWB, so stage 2's MemAttr[3:0] (bits 5:2) is the type
    // itself: 0b1111 Normal write-back, 0b0001 Device-nGnRE.
    let mut m = SimMachine::new("cortex-a57").unwrap();
    let n = vm(&mut m, 0);
    let mem = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestShare, &[n, mem, G, 1, 3]));
    check(&m).unwrap();
    let (_, guest) = m.hyp().vms().next().unwrap();
    let (at, entry, _) = desc(guest.stage2(), m.phys(), G * PAGE_SIZE);
    drop(guest);
    assert_eq!(entry >> 2 & 0xf, 0b1111);
    corrupt(&m, at, (entry & !(0xf << 2)) | (0b0001 << 2), "I4");
}

#[test]
fn dma_view_reaching_a_guest_page_is_caught() {
    let (m, _, mem) = donated("max");
    let view = m.hyp().dma_view().expect("the simulated board has an SMMU");
    let s2 = view.stage2();
    let (at, entry, _) = desc(s2, m.phys(), mem * PAGE_SIZE);
    assert!(!matches!(s2.lookup(mem * PAGE_SIZE), Entry::Mapped { .. }));
    let (_, own, own_level) = desc(s2, m.phys(), (mem + 1) * PAGE_SIZE);
    assert_eq!(own_level, 3, "the view's entry for the host's page");
    assert!(entry != own);
    drop(view);
    corrupt(&m, at, (own & !OA) | (mem * PAGE_SIZE), "S1");
}

#[test]
fn a_host_table_changed_after_a_cached_guest_walk_is_checked_against_it() {
    let (mut m, _, mem) = donated("max");
    let mut cache = WalkCache::default();
    check_cached(&m, &mut cache).unwrap();
    let generation = {
        let (_, guest) = m.hyp().vms().next().unwrap();
        guest.stage2().generation()
    };
    // The host given a mapping of the guest's page, then a page faulted
    // in (a write through the host's table): the guest's table is
    // unchanged (its walk is kept), the host's is read again, and the two
    // owners are found.
    let (at, own) = {
        let host = m.hyp().host_stage2();
        let (at, _, _) = desc(&host, m.phys(), mem * PAGE_SIZE);
        let (_, own, _) = desc(&host, m.phys(), (mem + 1) * PAGE_SIZE);
        (at, own)
    };
    let old = read_u64(m.phys(), at);
    write_u64(m.phys(), at, (own & !OA) | (mem * PAGE_SIZE));
    let host_generation = m.hyp().host_stage2().generation();
    let other = m.alloc(PageKind::Ram, 1).unwrap();
    m.host_touch(other * PAGE_SIZE, hyp::Access::Read).unwrap();
    assert_ne!(m.hyp().host_stage2().generation(), host_generation);
    let r = check_cached(&m, &mut cache);
    write_u64(m.phys(), at, old);
    {
        let (_, guest) = m.hyp().vms().next().unwrap();
        assert_eq!(guest.stage2().generation(), generation);
    }
    assert!(r.as_ref().is_err_and(|e| e.contains("I1")), "{r:?}");
    check(&m).unwrap();
}

#[test]
fn a_raw_write_to_a_cached_guest_table_is_caught_by_the_full_check_and_the_next_write() {
    let (mut m, p, _) = donated("max");
    let mut cache = WalkCache::default();
    check_cached(&m, &mut cache).unwrap();
    let hyp_pfn = m.hyp_pfn();
    let (at, entry) = {
        let (_, guest) = m.hyp().vms().next().unwrap();
        let (at, entry, _) = desc(guest.stage2(), m.phys(), G * PAGE_SIZE);
        (at, entry)
    };
    // The guest's page pointed at hypervisor memory by a write the table's
    // generation does not count: the kept walk does not see it, a full
    // check does (the fuzz targets end every input with one). The same
    // holds for the host's table and the DMA view.
    write_u64(m.phys(), at, (entry & !OA) | (hyp_pfn * PAGE_SIZE));
    check_cached(&m, &mut cache).unwrap();
    assert!(check(&m).is_err_and(|e| e.contains("I3")), "missed");
    // Any write through the table makes the next cached check read it all
    // again.
    let more = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, more, G + 4, 1, 3]));
    let r = check_cached(&m, &mut cache);
    assert!(r.is_err_and(|e| e.contains("I3")), "missed after a write");
    write_u64(m.phys(), at, entry);
    check(&m).unwrap();
}

#[test]
fn a_dma_view_changed_after_a_kept_s1_check_is_checked_again() {
    let (mut m, p, mem) = donated("max");
    let mut cache = WalkCache::default();
    check_cached(&m, &mut cache).unwrap();
    let (at, entry, own, generation) = {
        let view = m.hyp().dma_view().expect("the simulated board has an SMMU");
        let s2 = view.stage2();
        let (at, entry, _) = desc(s2, m.phys(), mem * PAGE_SIZE);
        let (_, own, _) = desc(s2, m.phys(), (mem + 1) * PAGE_SIZE);
        (at, entry, own, s2.generation())
    };
    // The view reaching the guest's page, then another page donated (a
    // write through the host's table and the view): S1 is checked again.
    write_u64(m.phys(), at, (own & !OA) | (mem * PAGE_SIZE));
    let more = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, more, G + 8, 1, 3]));
    {
        let view = m.hyp().dma_view().unwrap();
        assert_ne!(view.stage2().generation(), generation);
    }
    let r = check_cached(&m, &mut cache);
    write_u64(m.phys(), at, entry);
    assert!(r.as_ref().is_err_and(|e| e.contains("S1")), "{r:?}");
    check(&m).unwrap();
}
