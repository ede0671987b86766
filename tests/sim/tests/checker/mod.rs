//! Helpers the checker's test files share.

use host_interface::{vm_flags, HostCallId, PAGE_SIZE};
use scenario::{Machine, PageKind};
use sim::{tracked_ranges, SimMachine};

/// The gfn the fixtures give guests their pages at.
pub const G: u64 = 0x9_0000;

/// The answer of a call that must succeed.
pub fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

/// A new VM with `flags` and a 16-page pool: its handle.
pub fn vm(m: &mut SimMachine, flags: u64) -> u64 {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    ok(m.call(HostCallId::VmCreate, &[flags, pool, 16]))[2]
}

/// A protected VM owning `mem`, the host holding `mem + 1` (faulted in),
/// both translated by page descriptors of the host's table, checked:
/// (machine, VM handle, mem).
pub fn donated(model: &str) -> (SimMachine, u64, u64) {
    let mut m = SimMachine::new(model).unwrap();
    let p = vm(&mut m, vm_flags::PROTECTED);
    let mem = m.alloc(PageKind::Ram, 2).unwrap();
    ok(m.call(HostCallId::GuestDonate, &[p, mem, G, 1, 3]));
    m.host_touch((mem + 1) * PAGE_SIZE, hyp::Access::Read)
        .unwrap();
    hyp::invariants::check(m.hyp(), &tracked_ranges(m.hyp().platform())).unwrap();
    (m, p, mem)
}
