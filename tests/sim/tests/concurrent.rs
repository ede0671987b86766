//! Issue 12, per-VM locks: the core is `Sync`, and calls on different VMs
//! run at once. Threads drive one core together: host calls on VM A (guest
//! sharing, which takes A's lock and the host's), guest traps of VM B's
//! vCPU (MEM_SHARE and MEM_UNSHARE, which take B's lock and the host's; a
//! stage-2 fault, which takes B's alone), host calls and host faults on the
//! host's own pages (the host's lock alone), and VM_CREATE / VM_DESTROY of
//! a third VM in a loop, so slots and handles turn over while the others
//! look theirs up. Each thread touches only its own pages and VMs, so each
//! call must get exactly the answer it would get alone; afterwards the
//! invariants hold over all tracked memory. A lock the order gets wrong
//! deadlocks here; one that is missing shows as a wrong answer or a broken
//! invariant.

use std::sync::Barrier;

use host_interface::{Errno, ExitReason, GuestCallId, HostCallId, PAGE_SIZE};
use hyp::{Access, Trap};
use scenario::{Machine, PageKind};
use sim::{SimHyp, SimMachine};

const PAGE: u64 = PAGE_SIZE;
const G: u64 = 0x9_0000;
const ROUNDS: usize = 2000;

fn call(hv: &SimHyp, id: HostCallId, args: &[u64]) -> [u64; 5] {
    let mut regs = [0u64; 7];
    regs[0] = u64::from(id.id());
    regs[1..=args.len()].copy_from_slice(args);
    hv.host_call_simple(&regs).regs
}

#[track_caller]
fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

/// A normal VM with a 16-page pool and one vCPU: its handle.
fn vm(m: &mut SimMachine) -> u64 {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let h = ok(m.call(HostCallId::VmCreate, &[0, pool, 16]))[2];
    let run = m.alloc(PageKind::Ram, 1).unwrap();
    ok(m.call(HostCallId::ShareHyp, &[run, 1]));
    ok(m.call(HostCallId::VcpuCreate, &[h, run]));
    h
}

fn guest_call(hv: &SimHyp, run: &mut hyp::Run, id: GuestCallId, ipa: u64) -> Option<u64> {
    run.ctx.x[..4].copy_from_slice(&[u64::from(id.id()), ipa, 0, 0]);
    hv.vcpu_run_trap(run, Trap::Hvc)
}

#[test]
fn calls_on_different_vms_run_concurrently() {
    fn sync<T: Sync>() {}
    sync::<SimHyp>();
    let mut m = SimMachine::new("max").unwrap();
    let a = vm(&mut m);
    let b = vm(&mut m);
    let lent = m.alloc(PageKind::Ram, 4).unwrap();
    let b_mem = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[b, b_mem, G, 2, 3]));
    let hyp_pages = m.alloc(PageKind::Ram, 4).unwrap();
    let churn = m.alloc(PageKind::Ram, 16).unwrap();
    let touched = m.alloc(PageKind::Ram, 512).unwrap();
    let hv = m.hyp();
    let start = Barrier::new(4);
    std::thread::scope(|s| {
        // Host calls on VM A.
        s.spawn(|| {
            start.wait();
            for _ in 0..ROUNDS {
                ok(call(hv, HostCallId::GuestShare, &[a, lent, G, 4, 3]));
                ok(call(hv, HostCallId::GuestUnshare, &[a, G, 4]));
            }
        });
        // VM B's guest, trapping to the core.
        s.spawn(|| {
            start.wait();
            for _ in 0..ROUNDS {
                let mut run = hv.vcpu_run_begin(b, 0).unwrap().unwrap();
                for id in [GuestCallId::MemShare, GuestCallId::MemUnshare] {
                    assert_eq!(guest_call(hv, &mut run, id, G * PAGE), None);
                    assert_eq!(run.ctx.x[0], 0, "{id:?}");
                }
                // A fault where nothing is mapped ends the run.
                let fault = Trap::DataAbort {
                    ipa: (G + 64) * PAGE,
                    write: false,
                    size: 8,
                    reg: 1,
                    esr: 0,
                };
                let reason = hv.vcpu_run_trap(&mut run, fault);
                assert_eq!(reason, Some(ExitReason::MemFault as u64));
            }
        });
        // The host's own pages: SHARE_HYP / UNSHARE_HYP, and faults.
        s.spawn(|| {
            start.wait();
            for i in 0..ROUNDS {
                ok(call(hv, HostCallId::ShareHyp, &[hyp_pages, 4]));
                ok(call(hv, HostCallId::UnshareHyp, &[hyp_pages, 4]));
                let page = touched + (i as u64 % 512);
                assert_eq!(hv.host_fault(page * PAGE, Access::Write), Ok(()));
            }
        });
        // A third VM created and destroyed over and over: its slot and
        // handles turn over while A and B are looked up.
        s.spawn(|| {
            start.wait();
            for _ in 0..ROUNDS / 4 {
                let h = ok(call(hv, HostCallId::VmCreate, &[0, churn, 16]))[2];
                assert!(h != a && h != b);
                ok(call(hv, HostCallId::VmDestroy, &[h]));
                let r = call(hv, HostCallId::VmDestroy, &[h]);
                assert_eq!(Errno::from_x1(r[1]), Some(Errno::ENOENT));
                ok(call(hv, HostCallId::Reclaim, &[churn, 16]));
            }
        });
    });
    let ranges = sim::tracked_ranges(hv.platform());
    hyp::invariants::check(hv, &ranges).unwrap();
    // Everything is back where it started.
    assert_eq!(hv.page_meta(lent), (0, false));
    assert_eq!(hv.vms().count(), 2);
}

/// A vCPU that is running keeps its VM: VM_DESTROY from another thread is
/// -EBUSY until the run ends, and a second VCPU_RUN of it is -EBUSY.
#[test]
fn a_running_vcpu_keeps_its_vm_across_threads() {
    let mut m = SimMachine::new("max").unwrap();
    let b = vm(&mut m);
    let hv = m.hyp();
    let mut run = hv.vcpu_run_begin(b, 0).unwrap().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = call(hv, HostCallId::VmDestroy, &[b]);
            assert_eq!(Errno::from_x1(r[1]), Some(Errno::EBUSY));
            let r = call(hv, HostCallId::VcpuRun, &[b, 0]);
            assert_eq!(Errno::from_x1(r[1]), Some(Errno::EBUSY));
        });
    });
    hv.vcpu_run_end(&mut run, ExitReason::Interrupted);
    ok(call(hv, HostCallId::VmDestroy, &[b]));
}

/// What a guest trap that needs only its own VM waits for: nothing that
/// belongs to another VM or to the host. With VM A's lock and the host's
/// held (a long host call on A, say), VM B still runs: VCPU_RUN begins,
/// its stage-2 fault and its MMIO_GUARD are handled, the run ends.
#[test]
fn guest_traps_take_no_lock_of_another_vm_or_the_host() {
    let mut m = SimMachine::new("max").unwrap();
    let a = vm(&mut m);
    let b = vm(&mut m);
    let m = std::sync::Arc::new(m);
    let held = m.hyp().hold_locks(Some(a));
    let (done, finished) = std::sync::mpsc::channel();
    let m2 = m.clone();
    std::thread::spawn(move || {
        let hv = m2.hyp();
        let mut run = hv.vcpu_run_begin(b, 0).unwrap().unwrap();
        assert_eq!(
            guest_call(hv, &mut run, GuestCallId::MmioGuard, (G + 1) * PAGE),
            None
        );
        assert_eq!(run.ctx.x[0], 0);
        let fault = Trap::DataAbort {
            ipa: (G + 64) * PAGE,
            write: true,
            size: 4,
            reg: 2,
            esr: 0,
        };
        let reason = hv.vcpu_run_trap(&mut run, fault);
        let _ = done.send(reason);
    });
    let reason = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("VM B's traps waited for a lock of VM A or the host");
    assert_eq!(reason, Some(ExitReason::MemFault as u64));
    drop(held);
    let ranges = sim::tracked_ranges(m.hyp().platform());
    hyp::invariants::check(m.hyp(), &ranges).unwrap();
}
