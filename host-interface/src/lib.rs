//! The hypercall ABI of `shared/spec/ABI.md`, as Rust types.
//!
//! This crate owns every number that crosses the EL1/EL2 boundary: function
//! IDs of host calls (ABI.md 1) and guest calls (ABI.md 2), errno values
//! (ABI.md 3), `prot`, `memtype`, flag and feature bits, PAGE_QUERY codes,
//! VCPU_RUN exit reasons (ABI.md 2.3) and the run-page layout. It is used by
//! the hypervisor, the test host and host-side tools alike, so the contract
//! lives in exactly one place.
//!
//! Data flows one way: the hypervisor hands the host's x0..x6 to
//! [`HostCall::decode`], which performs ABI.md 3.1 steps 1 and 2 (unknown ID,
//! then format checks that need no state) and yields a typed [`HostCall`];
//! the core decides and returns a [`HostResult`], whose registers go back to
//! the host. Callers (test host, simulator) go the other way with
//! [`HostCall::encode`].
//!
//! Decoding never panics, whatever the registers hold.

#![no_std]

#[macro_use]
mod macros;

mod errno;
mod exit;
pub mod features;
mod guest_call;
mod host_call;
mod page_query;
pub mod prot;
pub mod psci;
mod result;
mod run_page;
pub mod vm_flags;

#[cfg(test)]
mod pinned;
#[cfg(test)]
mod tests;

pub use errno::Errno;
pub use exit::ExitReason;
pub use guest_call::{
    GuestCallId, KVM_FEATURES_BITMAP, KVM_UID, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED,
    SMCCC_SUCCESS, SMCCC_VERSION_1_1,
};
pub use host_call::{
    is_host_call_range, DecodeError, HostCall, HostCallId, HOST_CALL_BASE, HOST_CALL_RANGE_END,
};
pub use page_query::{HostState, MemClassCode, Owner};
pub use prot::{MemType, Prot, MEMTYPE_MASK, MEMTYPE_SHIFT};
pub use psci::PSCI_VERSION_1_1;
pub use result::HostResult;
pub use run_page::{fault_flags, inject_irq, system_event, IrqRequest, RunPage, MAX_INJECT_INTID};

/// Most pages one host call may name (`nr`), so every call does bounded work
/// at EL2 (ABI.md 1, "Fields").
pub const MAX_PAGES_PER_CALL: u64 = 512;

/// Size of every guest's IPA space, in bits (ABI.md 1, "Fields").
pub const GUEST_IPA_BITS: u32 = 40;

/// The translation granule: frame number `n` is address `n << PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 12;

/// Bytes in one page (4 KiB granule).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Number of 4 KiB frames in an address space of `addr_bits` bits.
///
/// Below one page the space holds no frame; above 64 bits the answer is
/// capped at the frames a 64-bit address can reach.
pub const fn frames_in(addr_bits: u32) -> u64 {
    if addr_bits < PAGE_SHIFT {
        return 0;
    }
    let bits = if addr_bits > 64 { 64 } else { addr_bits };
    // bits - PAGE_SHIFT <= 52, so the shift cannot overflow.
    1u64 << (bits - PAGE_SHIFT)
}

/// Whether frames `[first, first + nr)` all lie inside an address space of
/// `addr_bits` bits. Overflow-safe for any input; an empty range fits when
/// `first` is not past the end.
pub const fn frame_range_fits(first: u64, nr: u64, addr_bits: u32) -> bool {
    match first.checked_add(nr) {
        Some(end) => end <= frames_in(addr_bits),
        None => false,
    }
}
