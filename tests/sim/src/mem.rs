//! Simulated physical memory of the QEMU `virt` board: one zeroed buffer
//! covering all of RAM (the operating system commits pages lazily), and a
//! sparse store for MMIO registers.
//!
//! A board's RAM is recycled: when the last handle to it goes, the pages
//! it touched are zeroed and the buffer is kept (a few per thread) for the
//! next board of the same size. The fuzz targets build a board per input,
//! and faulting its pages in afresh from the operating system, then
//! unmapping them, cost more than the rest of building it.
//!
//! A board built by [`SimPhys::for_board`] leaves more: the pages its
//! build wrote (the host pool's free list, the DMA view's tables, a
//! thousand-odd pages) stay as the build left them, unless touched after
//! it ([`SimPhys::built`]). The next board of the same key is built on
//! that buffer: the build writes every word it reads, and writes the same
//! values to the same pages, so it leaves the memory exactly as on zeroed
//! RAM (`tests/recycle.rs` compares the two, page for page), and only the
//! pages touched after the build cost a zeroing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pagetables::PhysMem;

/// The pages a board's build left non-zero, and which build it was.
struct Baseline {
    /// What was built ([`SimPhys::for_board`]).
    key: String,
    /// The pages the build touched, one bit each.
    pages: Vec<u64>,
}

/// A buffer's state apart from the memory itself.
struct Track {
    /// The memory when the buffer was handed out, outside `touched`:
    /// zero, except for a baseline's pages, each of which holds what its
    /// build wrote, or zeros.
    baseline: Option<Baseline>,
    /// The key the board was built for, if any.
    key: Option<String>,
    /// Whether the buffer holds the baseline of `key` (the same build is
    /// being made again).
    rebuilding: bool,
    /// Pages written through pointers handed out before
    /// [`SimPhys::built`] (a table's root): zeroed whether touched later
    /// or not.
    always: Vec<usize>,
}

struct Buf {
    /// Backing store, zeroed by the allocator lazily (calloc-style), with a
    /// page of slack so `ptr` can be page aligned.
    store: Vec<u8>,
    ptr: *mut u8,
    /// One bit per page handed out by `phys_to_virt` since the buffer was
    /// handed out (or since [`SimPhys::built`]): the pages that may differ
    /// from what `track` says the memory holds.
    touched: Vec<AtomicU64>,
    track: Mutex<Track>,
    /// Set while only reads happen ([`SimPhys::reading`]): pages handed
    /// out then are not marked touched.
    reading: AtomicBool,
}

/// Pages beyond which a dropped buffer is given back to the operating
/// system rather than zeroed and kept.
const RECYCLE_LIMIT: usize = 16384;

/// Buffers kept per thread: one per board the fuzz targets build (one per
/// CPU model).
const SPARES: usize = 4;

/// A buffer from a dropped board, zeroed but for its baseline: a
/// [`Buf`]'s parts, without its `Drop`.
struct Spare {
    store: Vec<u8>,
    ptr: *mut u8,
    touched: Vec<AtomicU64>,
    baseline: Option<Baseline>,
}

thread_local! {
    /// Buffers from dropped boards, for the next ones.
    static SPARE: RefCell<Vec<Spare>> = const { RefCell::new(Vec::new()) };
}

/// Zeroes page `page` of `store`, whose first page starts at `start`.
fn zero_page(store: &mut [u8], start: usize, page: usize) {
    let off = start + page * 4096;
    if let Some(p) = store.get_mut(off..off + 4096) {
        p.fill(0);
    }
}

/// Calls `f` with the index of each bit set in `bits`.
fn each_bit(bits: &[u64], mut f: impl FnMut(usize)) {
    for (i, &w) in bits.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            f(i * 64 + w.trailing_zeros() as usize);
            w &= w - 1;
        }
    }
}

impl Buf {
    fn new(size: u64, key: Option<&str>) -> Buf {
        let pages = size.div_ceil(4096) as usize;
        let holds = |b: &Spare| key.is_some() && b.baseline.as_ref().map(|b| b.key.as_str()) == key;
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            let fits = |b: &Spare| b.store.len() == size as usize + 4096;
            // The buffer this board was built on last, else one holding
            // no other board's baseline. The others are kept for their
            // boards (a fresh buffer costs only the pages it touches),
            // unless there are as many as will be kept.
            let same = s.iter().position(|b| fits(b) && holds(b));
            let i = same.or_else(|| s.iter().position(|b| fits(b) && b.baseline.is_none()));
            let i = i.or_else(|| {
                (s.len() >= SPARES)
                    .then(|| s.iter().position(fits))
                    .flatten()
            });
            i.map(|i| s.swap_remove(i))
        });
        if let Some(mut b) = spare {
            let rebuilding = holds(&b);
            if !rebuilding {
                // Another board's baseline: zero it.
                if let Some(base) = b.baseline.take() {
                    let start = b.ptr as usize - b.store.as_ptr() as usize;
                    each_bit(&base.pages, |page| zero_page(&mut b.store, start, page));
                }
            }
            return Buf {
                store: b.store,
                ptr: b.ptr,
                touched: b.touched,
                track: Mutex::new(Track {
                    baseline: b.baseline,
                    key: key.map(String::from),
                    rebuilding,
                    always: Vec::new(),
                }),
                reading: AtomicBool::new(false),
            };
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
            track: Mutex::new(Track {
                baseline: None,
                key: key.map(String::from),
                rebuilding: false,
                always: Vec::new(),
            }),
            reading: AtomicBool::new(false),
        }
    }

    /// The build is over: see [`SimPhys::built`].
    fn built(&self, always: Vec<usize>) {
        let mut track = self.track.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = track.key.clone() else {
            // Not a board to be rebuilt: its pages are zeroed when it goes.
            return;
        };
        let bits: Vec<u64> = self
            .touched
            .iter()
            .map(|w| w.swap(0, Ordering::Relaxed))
            .collect();
        track.always = always;
        if track.rebuilding {
            // The same build on the memory it left: it touched the same
            // pages (and wrote the same values, which `tests/recycle.rs`
            // checks).
            debug_assert!(
                track.baseline.as_ref().is_some_and(|b| b.pages == bits),
                "a rebuilt board touched other pages than its first build"
            );
        } else {
            track.baseline = Some(Baseline { key, pages: bits });
        }
    }

    /// Zeroes the pages touched since the buffer was handed out (or
    /// built); false when there are too many to be worth it.
    fn put_back(&mut self) -> bool {
        let n: u32 = self
            .touched
            .iter_mut()
            .map(|w| w.get_mut().count_ones())
            .sum();
        if n as usize > RECYCLE_LIMIT {
            return false;
        }
        let start = self.ptr as usize - self.store.as_ptr() as usize;
        let track = self.track.get_mut().unwrap_or_else(|e| e.into_inner());
        for &page in &track.always {
            zero_page(&mut self.store, start, page);
        }
        for (i, w) in self.touched.iter_mut().enumerate() {
            let mut bits = core::mem::take(w.get_mut());
            while bits != 0 {
                zero_page(
                    &mut self.store,
                    start,
                    i * 64 + bits.trailing_zeros() as usize,
                );
                bits &= bits - 1;
            }
        }
        true
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if !self.put_back() {
            return;
        }
        let track = self.track.get_mut().unwrap_or_else(|e| e.into_inner());
        let b = Spare {
            store: core::mem::take(&mut self.store),
            ptr: self.ptr,
            touched: core::mem::take(&mut self.touched),
            baseline: track.baseline.take(),
        };
        // `try_with`: during thread exit the slot may be gone already.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARES {
                    s.push(b);
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
            buf: Arc::new(Buf::new(size, None)),
            base,
            size,
        }
    }

    /// RAM for a board that `key` describes completely: building the same
    /// key on zeroed RAM must write the same values to the same pages, and
    /// write every word before reading it. The RAM may hold what an
    /// earlier build of the same key wrote, which the build then writes
    /// again.
    pub fn for_board(base: u64, size: u64, key: &str) -> Self {
        Self {
            buf: Arc::new(Buf::new(size, Some(key))),
            base,
            size,
        }
    }

    /// The board is built: the pages touched so far are left as they are
    /// when the board goes, for the next board of the same key. `always`
    /// are the pages (physical frame numbers) the build kept pointers to
    /// (a stage-2's root tables, which aarch64-paging's `RootTable`
    /// holds), which later writes reach without marking them touched:
    /// they are zeroed anyway.
    pub fn built(&self, always: &[u64]) {
        let base = self.base >> 12;
        let pages = always
            .iter()
            .filter(|&&p| self.contains(p << 12))
            .map(|&p| (p - base) as usize)
            .collect();
        self.buf.built(pages);
    }

    /// Runs `f`, which only reads memory (an oracle walking the tables):
    /// the pages it reads are not marked touched, so they are not put
    /// back when the board goes.
    pub fn reading<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = self.buf.reading.swap(true, Ordering::Relaxed);
        let r = f();
        self.buf.reading.store(before, Ordering::Relaxed);
        r
    }

    /// The first page (physical frame number) whose contents differ from
    /// `other`'s, which must be the same size: what shows that a recycled
    /// board starts as a fresh one does. Reads every page.
    pub fn first_difference(&self, other: &SimPhys) -> Option<u64> {
        let pages = self.size.min(other.size) / 4096;
        (0..pages)
            .find(|&p| {
                let (a, b) = (self.page(p), other.page(p));
                a != b
            })
            .map(|p| (self.base >> 12) + p)
    }

    /// Page `page` of the buffer, copied.
    fn page(&self, page: u64) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        // SAFETY: `page` lies inside the buffer (`page * 4096 < size`),
        // and no one writes to it while the caller compares.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.buf.ptr.wrapping_add(page as usize * 4096),
                p.as_mut_ptr(),
                4096,
            );
        }
        p
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
        if self.buf.reading.load(Ordering::Relaxed) {
            return self.buf.ptr.wrapping_add(off);
        }
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
