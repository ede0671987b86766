//! The only place the core touches memory by physical address: scrubbing
//! reclaimed pages and exchanging run-page fields with the host.
//!
//! All accesses go through [`PhysMem::phys_to_virt`], whose contract is that
//! every RAM, COHERENT and HYP page is mapped there for the hypervisor.

use host_interface::RunPage;
use pagetables::PhysMem;

/// Size of one page.
pub const PAGE: u64 = 4096;

/// Zero one page.
pub fn zero_page<P: PhysMem>(phys: &P, pa: u64) {
    let va = phys.phys_to_virt(pa);
    // SAFETY: the core calls this only for RAM or COHERENT pages it owns at
    // that moment (reclaimable pages, freshly taken pool pages), which the
    // PhysMem contract maps writable for one whole page at `va`; nothing else
    // may access a page the hypervisor owns.
    unsafe { core::ptr::write_bytes(va, 0, PAGE as usize) };
}

/// Byte offset of a run-page field, checked against the page size.
fn field_ptr<P: PhysMem>(phys: &P, run_pfn: u64, offset: usize) -> *mut u64 {
    let base = phys.phys_to_virt(run_pfn << 12);
    base.wrapping_add(offset).cast()
}

/// Read one u64 field of a run page once. The host may change the page at
/// any moment, so each field is read exactly once with a volatile load and
/// then validated by the caller.
pub fn run_read<P: PhysMem>(phys: &P, run_pfn: u64, offset: usize) -> u64 {
    debug_assert!(offset + 8 <= core::mem::size_of::<RunPage>());
    let p = field_ptr(phys, run_pfn, offset);
    // SAFETY: run pages are host RAM pages shared with and pinned by the
    // hypervisor (SHARE_HYP + VCPU_CREATE), mapped for it by the PhysMem
    // contract; `offset` is a field offset inside the 4 KiB RunPage, 8-byte
    // aligned. The host may write concurrently, hence the volatile access of a
    // plain integer (any bit pattern is a valid u64).
    unsafe { p.read_volatile() }
}

/// Write one u64 field of a run page.
pub fn run_write<P: PhysMem>(phys: &P, run_pfn: u64, offset: usize, value: u64) {
    debug_assert!(offset + 8 <= core::mem::size_of::<RunPage>());
    let p = field_ptr(phys, run_pfn, offset);
    // SAFETY: as in `run_read`: a pinned, hypervisor-mapped run page and an
    // aligned in-page field offset.
    unsafe { p.write_volatile(value) };
}

/// Read 8 bytes of guest-visible memory (used by the simulator's guest and by
/// tests; the EL2 image never reads guest memory on the host's behalf).
pub fn read_u64<P: PhysMem>(phys: &P, pa: u64) -> u64 {
    let p: *const u64 = phys.phys_to_virt(pa & !7).cast();
    // SAFETY: callers pass a RAM/COHERENT address the PhysMem contract maps;
    // the address is aligned down to 8 bytes.
    unsafe { p.read_volatile() }
}

/// Write 8 bytes of memory (see [`read_u64`]).
pub fn write_u64<P: PhysMem>(phys: &P, pa: u64, value: u64) {
    let p: *mut u64 = phys.phys_to_virt(pa & !7).cast();
    // SAFETY: as in `read_u64`.
    unsafe { p.write_volatile(value) };
}
