//! Helpers the checker's test files share.

use host_interface::HostCallId;
use scenario::{Machine, PageKind};
use sim::SimMachine;

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
