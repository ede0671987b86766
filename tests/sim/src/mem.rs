//! Simulated physical memory of the QEMU `virt` board: one zeroed buffer
//! covering all of RAM (the operating system commits pages lazily), and a
//! sparse store for MMIO registers.

use std::collections::HashMap;
use std::sync::Arc;

use pagetables::PhysMem;

struct Buf {
    /// Backing store, zeroed by the allocator lazily (calloc-style), with a
    /// page of slack so `ptr` can be page aligned.
    _store: Vec<u8>,
    ptr: *mut u8,
}

// SAFETY: the buffer is plain memory owned by this struct; all access goes
// through raw pointers whose users synchronise as the hypervisor core does
// (one core instance per simulated machine, used from one thread).
unsafe impl Send for Buf {}
// SAFETY: as above.
unsafe impl Sync for Buf {}

/// RAM of the simulated board, as the hypervisor's linear map sees it.
#[derive(Clone)]
pub struct SimPhys {
    buf: Arc<Buf>,
    base: u64,
    size: u64,
}

impl SimPhys {
    /// Zeroed RAM of `size` bytes at physical `base`.
    pub fn new(base: u64, size: u64) -> Self {
        // `vec![0; n]` asks the allocator for zeroed memory of alignment 1,
        // which large allocations get as fresh, lazily zeroed pages: only
        // the pages the simulation touches cost anything.
        let mut store = vec![0u8; size as usize + 4096];
        let raw = store.as_mut_ptr();
        let ptr = raw.wrapping_add(raw.align_offset(4096));
        Self {
            buf: Arc::new(Buf { _store: store, ptr }),
            base,
            size,
        }
    }

    /// Whether `pa` is backed by RAM.
    pub fn contains(&self, pa: u64) -> bool {
        pa >= self.base && pa - self.base < self.size
    }
}

impl PhysMem for SimPhys {
    fn phys_to_virt(&self, pa: u64) -> *mut u8 {
        assert!(
            self.contains(pa),
            "hypervisor touched unbacked physical address {pa:#x}"
        );
        self.buf.ptr.wrapping_add((pa - self.base) as usize)
    }
}

/// Device registers: what the host wrote, 0 where it wrote nothing.
#[derive(Default)]
pub struct MmioStore(HashMap<u64, u64>);

impl MmioStore {
    /// 8-byte read.
    pub fn read(&self, pa: u64) -> u64 {
        self.0.get(&(pa & !7)).copied().unwrap_or(0)
    }
    /// 8-byte write.
    pub fn write(&mut self, pa: u64, v: u64) {
        self.0.insert(pa & !7, v);
    }
}
