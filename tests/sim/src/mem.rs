//! Simulated physical memory of the QEMU `virt` board: one zeroed buffer
//! covering all of RAM (the operating system commits pages lazily), and a
//! sparse store for MMIO registers.
//!
//! A board's RAM is recycled: when the last handle to it goes, the pages
//! it touched are zeroed and the buffer is kept (one per thread) for the
//! next board of the same size. The fuzz targets build a board per input,
//! and faulting its pages in afresh from the operating system, then
//! unmapping them, cost more than the rest of building it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pagetables::PhysMem;

struct Buf {
    /// Backing store, zeroed by the allocator lazily (calloc-style), with a
    /// page of slack so `ptr` can be page aligned.
    store: Vec<u8>,
    ptr: *mut u8,
    /// One bit per page handed out by `phys_to_virt`: the pages that may
    /// be non-zero.
    touched: Vec<AtomicU64>,
}

/// Pages beyond which a dropped buffer is given back to the operating
/// system rather than zeroed and kept.
const RECYCLE_LIMIT: usize = 16384;

/// A zeroed buffer from a dropped board: a [`Buf`]'s parts, without its
/// `Drop`.
struct Spare {
    store: Vec<u8>,
    ptr: *mut u8,
    touched: Vec<AtomicU64>,
}

thread_local! {
    /// A zeroed buffer from a dropped board, for the next one.
    static SPARE: RefCell<Option<Spare>> = const { RefCell::new(None) };
}

impl Buf {
    fn new(size: u64) -> Buf {
        let pages = size.div_ceil(4096) as usize;
        if let Some(b) = SPARE.with(|s| s.borrow_mut().take()) {
            if b.store.len() == size as usize + 4096 {
                return Buf {
                    store: b.store,
                    ptr: b.ptr,
                    touched: b.touched,
                };
            }
        }
        // `vec![0; n]` asks the allocator for zeroed memory of alignment 1,
        // which large allocations get as fresh, lazily zeroed pages: only
        // the pages the simulation touches cost anything.
        let mut store = vec![0u8; size as usize + 4096];
        let raw = store.as_mut_ptr();
        let ptr = raw.wrapping_add(raw.align_offset(4096));
        let touched = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Buf {
            store,
            ptr,
            touched,
        }
    }

    /// Zeroes the touched pages; false when there are too many to be
    /// worth it.
    fn scrub(&mut self) -> bool {
        let n: u32 = self
            .touched
            .iter_mut()
            .map(|w| w.get_mut().count_ones())
            .sum();
        if n as usize > RECYCLE_LIMIT {
            return false;
        }
        for (i, w) in self.touched.iter_mut().enumerate() {
            let mut bits = core::mem::take(w.get_mut());
            while bits != 0 {
                let page = i * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let off = self.ptr as usize - self.store.as_ptr() as usize + page * 4096;
                if let Some(p) = self.store.get_mut(off..off + 4096) {
                    p.fill(0);
                }
            }
        }
        true
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if !self.scrub() {
            return;
        }
        let b = Spare {
            store: core::mem::take(&mut self.store),
            ptr: self.ptr,
            touched: core::mem::take(&mut self.touched),
        };
        // `try_with`: during thread exit the slot may be gone already.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.is_none() {
                    *s = Some(b);
                }
            }
        });
    }
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
        Self {
            buf: Arc::new(Buf::new(size)),
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
        let off = (pa - self.base) as usize;
        let page = off / 4096;
        if let Some(w) = self.buf.touched.get(page / 64) {
            let bit = 1u64 << (page % 64);
            if w.load(Ordering::Relaxed) & bit == 0 {
                w.fetch_or(bit, Ordering::Relaxed);
            }
        }
        self.buf.ptr.wrapping_add(off)
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
