//! The invariant checker (`hyp::invariants::check`) is the oracle of the
//! model-based tests and of the fuzz targets, so it must itself be shown to
//! fail. Each test builds a legal state, checks it passes, then corrupts
//! one descriptor of a real stage-2 table (the host's, a guest's or the DMA
//! view's) in simulated memory, as a bug in the core could, and checks the
//! checker names the broken rule; restoring the descriptor makes the state
//! pass again.

use host_interface::{vm_flags, HostCallId, PAGE_SIZE};
use hyp::phys::{read_u64, write_u64};
use pagetables::{Entry, Stage2};
use scenario::{Machine, PageKind};
use sim::{tracked_ranges, SimMachine, SimPhys};

const G: u64 = 0x9_0000;
/// Output-address bits of a stage-2 descriptor (4 KiB granule, 48-bit OA).
const OA: u64 = 0x0000_ffff_ffff_f000;

fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

fn vm(m: &mut SimMachine, flags: u64) -> u64 {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    ok(m.call(HostCallId::VmCreate, &[flags, pool, 16]))[2]
}

fn check(m: &SimMachine) -> Result<(), String> {
    hyp::invariants::check(m.hyp(), &tracked_ranges(m.hyp().platform()))
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

/// A protected VM owning `mem`, the host holding `mem + 1` (faulted in),
/// both translated by page descriptors of the host's table.
fn donated(model: &str) -> (SimMachine, u64, u64) {
    let mut m = SimMachine::new(model).unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let mem = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 1, 3]));
    m.host_touch((mem + 1) * PAGE_SIZE, hyp::Access::Read)
        .unwrap();
    check(&m).unwrap();
    (m, p, mem)
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
