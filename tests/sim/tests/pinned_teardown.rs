//! Exact host-side outcomes of taking pages back from guests, against
//! mutants cargo-mutants showed surviving (issue 13) in `vm_destroy`,
//! `guest_unborrow` and `host_unmap_runs` (`hyp/src/hypervisor.rs`): which
//! host entries change, to what, the share counts, the pins, the TLB
//! maintenance, and EBUSY while a vCPU runs.

use host_interface::{Errno, HostCallId, PAGE_SIZE};
use hyp::HostAnnotation;
use pagetables::{Entry, PageState};
use scenario::{Machine, PageKind};
use sim::SimMachine;

const PAGE: u64 = PAGE_SIZE;
const G: u64 = 0x9_0000;

fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

fn errno(r: [u64; 5]) -> Option<Errno> {
    Errno::from_x1(r[1])
}

fn host(m: &SimMachine, pfn: u64) -> Entry {
    m.hyp().host_stage2().lookup(pfn * PAGE)
}

fn host_state(m: &SimMachine, pfn: u64) -> Option<PageState> {
    match host(m, pfn) {
        Entry::Mapped { leaf, .. } => Some(leaf.state),
        Entry::Invalid { .. } => None,
    }
}

fn invalid(a: HostAnnotation) -> Entry {
    Entry::Invalid {
        annotation: a.encode(),
    }
}

/// A VM with a 16-page pool and one vCPU; handle, pool and run page.
fn vm(m: &mut SimMachine, protected: bool) -> (u64, u64, u64) {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let h = ok(m.call(HostCallId::VmCreate, &[u64::from(protected), pool, 16]))[2];
    let run = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::ShareHyp, &[run, 1]));
    ok(m.call(HostCallId::VcpuCreate, &[h, run]));
    (h, pool, run)
}

/// GUEST_UNSHARE gives back exactly the pages whose last borrower went,
/// in runs that skip the pages in between, and leaves the rest alone.
#[test]
fn unshare_returns_exactly_the_pages_no_one_borrows() {
    let mut m = SimMachine::new("max").unwrap();
    let (a, _, _) = vm(&mut m, false);
    let (b, _, _) = vm(&mut m, false);
    let base = m.alloc(PageKind::Ram, 8).unwrap();
    for p in base..base + 8 {
        m.host_write(p * PAGE, p).unwrap();
    }
    // A gets base, base+1, base+5 at G..G+3; B gets base+1 too.
    for (k, p) in [base, base + 1, base + 5].into_iter().enumerate() {
        ok(m.call(HostCallId::GuestShare, &[a, p, G + k as u64, 1, 3]));
    }
    ok(m.call(HostCallId::GuestShare, &[b, base + 1, G, 1, 3]));
    let before: Vec<Entry> = (base..base + 8).map(|p| host(&m, p)).collect();
    assert_eq!(m.hyp().page_meta(base + 1).0, 2);
    ok(m.call(HostCallId::GuestUnshare, &[a, G, 3]));
    for (k, p) in (base..base + 8).enumerate() {
        let want = match k {
            0 | 5 => invalid(HostAnnotation::None),
            _ => before[k],
        };
        assert_eq!(host(&m, p), want, "page {k}");
    }
    assert_eq!(host_state(&m, base + 1), Some(PageState::SharedOwned));
    assert_eq!(m.hyp().page_meta(base + 1).0, 1);
    assert_eq!(m.hyp().page_meta(base).0, 0);
    ok(m.call(HostCallId::GuestUnshare, &[b, G, 1]));
    assert_eq!(host(&m, base + 1), invalid(HostAnnotation::None));
    assert_eq!(m.hyp().page_meta(base + 1).0, 0);
    // The host has its pages again, with what it wrote.
    for p in base..base + 8 {
        assert_eq!(m.host_read(p * PAGE), Ok(p));
        assert_eq!(host_state(&m, p), Some(PageState::Owned));
    }
    // Two consecutive pages given back together, a third left shared.
    let (c, _, _) = vm(&mut m, false);
    ok(m.call(HostCallId::GuestShare, &[c, base + 2, G, 3, 3]));
    ok(m.call(HostCallId::GuestShare, &[a, base + 4, G, 1, 3]));
    ok(m.call(HostCallId::GuestUnshare, &[c, G, 3]));
    assert_eq!(host(&m, base + 2), invalid(HostAnnotation::None));
    assert_eq!(host(&m, base + 3), invalid(HostAnnotation::None));
    assert_eq!(host_state(&m, base + 4), Some(PageState::SharedOwned));
    assert_eq!(m.hyp().page_meta(base + 4).0, 1);
}

/// VM_DESTROY: guest memory, its pool and its vCPU contexts become
/// reclaimable (exactly those pages), device pages and pages no one else
/// borrows go back to the host at once, shared counts drop by one, run
/// pages are unpinned, and the VM's TLB entries are invalidated once.
#[test]
fn vm_destroy_releases_each_page_to_the_right_place() {
    let mut m = SimMachine::new("max").unwrap();
    let (p, pool, run) = vm(&mut m, false);
    let (n, _, _) = vm(&mut m, false);
    let mem = m.alloc(PageKind::Ram, 4).unwrap();
    let dev = m.alloc(PageKind::Mmio, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 2, 3]));
    ok(m.call(HostCallId::GuestShare, &[p, mem + 2, G + 2, 2, 3]));
    ok(m.call(HostCallId::GuestShare, &[n, mem + 3, G, 1, 3]));
    ok(m.call(HostCallId::GuestMapDevice, &[p, dev, G + 8, 2, 3]));
    // Running: EBUSY, nothing changes.
    let r = m.hyp_mut().vcpu_run_begin(p, 0).unwrap();
    assert!(r.is_ok());
    assert_eq!(
        errno(m.call(HostCallId::VmDestroy, &[p])),
        Some(Errno::EBUSY)
    );
    drop(r);
    let mut m = SimMachine::new("max").unwrap();
    let (p, pool2, run2) = vm(&mut m, false);
    assert_eq!((pool2, run2), (pool, run));
    let (n, _, _) = vm(&mut m, false);
    let mem2 = m.alloc(PageKind::Ram, 4).unwrap();
    let dev2 = m.alloc(PageKind::Mmio, 2).unwrap();
    assert_eq!((mem2, dev2), (mem, dev));
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 2, 3]));
    ok(m.call(HostCallId::GuestShare, &[p, mem + 2, G + 2, 2, 3]));
    ok(m.call(HostCallId::GuestShare, &[n, mem + 3, G, 1, 3]));
    ok(m.call(HostCallId::GuestMapDevice, &[p, dev, G + 8, 2, 3]));
    // The run page is pinned while the VM lives.
    assert!(m.hyp().page_meta(run).1);
    assert!(errno(m.call(HostCallId::UnshareHyp, &[run, 1])).is_some());
    let tlbi = m.hyp().maintenance().counts().tlbi_vmid;
    let vmid = m
        .hyp()
        .vms()
        .find(|(_, v)| v.handle() == p)
        .unwrap()
        .1
        .stage2()
        .vmid();
    ok(m.call(HostCallId::VmDestroy, &[p]));
    assert_eq!(m.hyp().maintenance().counts().tlbi_vmid, tlbi + 1);
    // Of this VM's VMID (the first VM's is 1).
    assert_eq!(m.hyp().maintenance().counts().last_tlbi_vmid, vmid);
    assert_eq!(vmid, 1);
    assert!(m.hyp().vms().all(|(_, v)| v.handle() != p));
    assert_eq!(
        errno(m.call(HostCallId::VmDestroy, &[p])),
        Some(Errno::ENOENT)
    );
    // Donated: reclaimable. Shared with P only: the host's again. Shared
    // with N too: still shared, one borrower fewer.
    assert_eq!(host(&m, mem), invalid(HostAnnotation::Reclaimable));
    assert_eq!(host(&m, mem + 1), invalid(HostAnnotation::Reclaimable));
    assert_eq!(host(&m, mem + 2), invalid(HostAnnotation::None));
    assert_eq!(host_state(&m, mem + 3), Some(PageState::SharedOwned));
    assert_eq!(m.hyp().page_meta(mem + 3).0, 1);
    assert_eq!(m.hyp().page_meta(mem + 2).0, 0);
    // Devices: the host's, unannotated.
    assert_eq!(host(&m, dev), invalid(HostAnnotation::None));
    assert_eq!(host(&m, dev + 1), invalid(HostAnnotation::None));
    assert!(m.host_read(dev * PAGE).is_ok());
    // The run page: unpinned, so the host can unshare it.
    assert!(!m.hyp().page_meta(run).1);
    ok(m.call(HostCallId::UnshareHyp, &[run, 1]));
    // The whole pool (tables and the vCPU's context) waits for RECLAIM,
    // and nothing past it.
    for q in pool..pool + 16 {
        assert_eq!(
            host(&m, q),
            invalid(HostAnnotation::Reclaimable),
            "pool page {}",
            q - pool
        );
    }
    ok(m.call(HostCallId::Reclaim, &[pool, 16]));
    ok(m.call(HostCallId::Reclaim, &[mem, 2]));
    assert!(errno(m.call(HostCallId::Reclaim, &[mem + 2, 1])).is_some());
    // N is untouched and still borrows its page.
    assert!(matches!(
        m.hyp().vms().find(|(_, v)| v.handle() == n).unwrap().1.stage2().lookup(G * PAGE),
        Entry::Mapped { pa, .. } if pa == (mem + 3) * PAGE
    ));
}
