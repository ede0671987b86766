//! Scenario memory accesses at any physical address, surviving the
//! synchronous external abort the hypervisor injects when it refuses one
//! (ABI.md 1.1).
//!
//! Each access is one instruction in `entry` ([`entry::host_load`],
//! [`entry::host_store`]); the vector recognises an abort on it, sets
//! [`entry::HOST_ACCESS_ABORTED`] and steps over it.

use core::sync::atomic::Ordering;

use scenario::Abort;

use crate::{entry, mmu};

/// Whether `[pa, pa + 8)` lies in the identity map. Addresses beyond it
/// the host cannot reach at all; like the simulator, which answers them with
/// an abort, the scenario sees an abort.
fn reachable(pa: u64) -> bool {
    pa.checked_add(8)
        .is_some_and(|end| end <= mmu::mapped_end())
}

/// Read 8 bytes at `pa`.
pub fn read(pa: u64) -> Result<u64, Abort> {
    if !reachable(pa) {
        return Err(Abort);
    }
    entry::HOST_ACCESS_ABORTED.store(false, Ordering::Relaxed);
    // SAFETY: `pa` is identity mapped (checked above), so the access either
    // completes or takes an abort, which the vector catches and reports
    // through the flag. Scenarios name pages the machine set aside for them,
    // hypervisor or device pages: none that Rust holds references to (the
    // runner's scenario files are trusted not to name the test host's own).
    let value = unsafe { entry::host_load(pa) };
    if entry::HOST_ACCESS_ABORTED.swap(false, Ordering::Relaxed) {
        Err(Abort)
    } else {
        Ok(value)
    }
}

/// Write 8 bytes at `pa`.
pub fn write(pa: u64, value: u64) -> Result<(), Abort> {
    if !reachable(pa) {
        return Err(Abort);
    }
    entry::HOST_ACCESS_ABORTED.store(false, Ordering::Relaxed);
    // SAFETY: as in `read`. The allocators never hand out the test host's
    // own pages, so a write changes nothing Rust knows about.
    unsafe { entry::host_store(pa, value) };
    if entry::HOST_ACCESS_ABORTED.swap(false, Ordering::Relaxed) {
        Err(Abort)
    } else {
        Ok(())
    }
}

/// Set `len` bytes from `pa` to `byte`, 8 bytes at a time from `pa`
/// rounded down to 8; stops at the first abort.
pub fn fill(pa: u64, len: u64, byte: u8) -> Result<(), Abort> {
    let word = u64::from_ne_bytes([byte; 8]);
    let end = pa.checked_add(len).ok_or(Abort)?;
    let mut at = pa & !7;
    while at < end {
        write(at, word)?;
        at += 8;
    }
    Ok(())
}
