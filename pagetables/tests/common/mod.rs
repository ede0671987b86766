//! Test fakes: physical memory over a heap buffer, recording maintenance,
//! and a raw table reader independent of the crate's own.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeSet;
use std::rc::Rc;

use pagetables::{Maintenance, PhysMem, Stage2};

/// Physical address of the first byte of the buffer.
pub const BASE: u64 = 0x4000_0000;
/// Size of the simulated memory holding table and pool pages.
pub const SIZE: u64 = 64 << 20;

struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `TestMem::new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// PhysMem over a 64 MiB heap buffer at physical `BASE`.
#[derive(Clone)]
pub struct TestMem(Rc<Buf>);

impl TestMem {
    pub fn new() -> Self {
        let layout = Layout::from_size_align(SIZE as usize, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self(Rc::new(Buf { ptr, layout }))
    }

    pub fn read(&self, pa: u64) -> u64 {
        assert!(pa.is_multiple_of(8));
        // SAFETY: in-bounds (phys_to_virt checks), aligned.
        unsafe { self.phys_to_virt(pa).cast::<u64>().read_volatile() }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        // SAFETY: the buffer is SIZE bytes; no writer runs during the copy.
        unsafe { std::slice::from_raw_parts(self.0.ptr, SIZE as usize) }.to_vec()
    }

    /// Page `i` of the buffer.
    pub fn page(i: u64) -> u64 {
        BASE + i * 4096
    }
}

impl PhysMem for TestMem {
    fn phys_to_virt(&self, pa: u64) -> *mut u8 {
        assert!(
            (BASE..BASE + SIZE).contains(&pa),
            "pa {pa:#x} outside test memory"
        );
        self.0.ptr.wrapping_add((pa - BASE) as usize)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Dsb,
    Ipa(u64, u8),
    Vmid(u16),
    Dcache(u64, u64),
    Icache,
}

/// Records maintenance; optionally snapshots one descriptor (by physical
/// address) at every TLBI.
pub struct Rec {
    pub ev: Vec<Ev>,
    pub vmid: Vec<u16>,
    pub watch: Option<(TestMem, u64)>,
    pub seen: Vec<u64>,
}

impl Rec {
    pub fn new() -> Self {
        Self {
            ev: vec![],
            vmid: vec![],
            watch: None,
            seen: vec![],
        }
    }
    pub fn watching(mem: &TestMem, desc_pa: u64) -> Self {
        Self {
            watch: Some((mem.clone(), desc_pa)),
            ..Self::new()
        }
    }
    fn snap(&mut self) {
        if let Some((m, pa)) = &self.watch {
            self.seen.push(m.read(*pa));
        }
    }
    pub fn take(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.ev)
    }
}

impl Maintenance for Rec {
    fn tlbi_ipa(&mut self, vmid: u16, ipa: u64, level: u8) {
        self.vmid.push(vmid);
        self.ev.push(Ev::Ipa(ipa, level));
        self.snap();
    }
    fn tlbi_vmid(&mut self, vmid: u16) {
        self.vmid.push(vmid);
        self.ev.push(Ev::Vmid(vmid));
        self.snap();
    }
    fn dsb(&mut self) {
        self.ev.push(Ev::Dsb);
    }
    fn dcache_clean_inval_poc(&mut self, pa: u64, len: u64) {
        self.ev.push(Ev::Dcache(pa, len));
    }
    fn icache_inval_pou(&mut self) {
        self.ev.push(Ev::Icache);
    }
}

/// A stage-2 on a CPU with a 48-bit PA space (no root concatenation) whose
/// root is buffer page 0 and whose pool holds pages 1..=pool.
pub fn setup(ipa_bits: u32, fwb: bool, pool: u64) -> (TestMem, Stage2<TestMem>) {
    setup_pa(ipa_bits, 48, fwb, pool)
}

/// A stage-2 on a CPU with `pa_bits` whose root is buffer pages
/// `0..root_pages` (the buffer is 64 KiB aligned) and whose pool holds the
/// `pool` pages after them.
pub fn setup_pa(ipa_bits: u32, pa_bits: u32, fwb: bool, pool: u64) -> (TestMem, Stage2<TestMem>) {
    let mem = TestMem::new();
    let mut s2 = Stage2::new(mem.clone(), TestMem::page(0), ipa_bits, pa_bits, fwb, 7);
    let roots = s2.geometry().root_pages as u64;
    for i in roots..roots + pool {
        s2.pool_add(TestMem::page(i));
    }
    (mem, s2)
}

pub const OA: u64 = 0x0000_ffff_ffff_f000;

pub fn gran(level: u8) -> u64 {
    4096 << (9 * (3 - level as u32))
}

/// Every table page reachable from the root, read straight from memory.
pub fn tables(mem: &TestMem, root: u64, root_level: u8) -> BTreeSet<u64> {
    fn rec(mem: &TestMem, t: u64, level: u8, out: &mut BTreeSet<u64>) {
        assert!(out.insert(t), "table {t:#x} reachable twice");
        if level == 3 {
            return;
        }
        for i in 0..512 {
            let d = mem.read(t + i * 8);
            if d & 3 == 3 {
                rec(mem, d & OA, level + 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    rec(mem, root, root_level, &mut out);
    out
}

/// Every table page reachable from the (possibly concatenated) root of
/// `s2`, root pages included, read straight from memory.
pub fn all_tables(mem: &TestMem, s2: &Stage2<TestMem>) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for k in 0..s2.geometry().root_pages as u64 {
        for t in tables(mem, s2.root_pa() + k * 4096, s2.root_level()) {
            assert!(out.insert(t), "table {t:#x} reachable twice");
        }
    }
    out
}

/// Physical address of the descriptor translating `ipa` at `level`
/// (following table descriptors from the root). A concatenated root is one
/// table of `512 * root_pages` entries.
pub fn desc_pa(mem: &TestMem, s2: &Stage2<TestMem>, ipa: u64, level: u8) -> u64 {
    let mut l = s2.root_level();
    let mut t = s2.root_pa() + ipa / gran(l) / 512 * 4096;
    loop {
        let idx = (ipa / gran(l)) % 512;
        if l == level {
            return t + idx * 8;
        }
        let d = mem.read(t + idx * 8);
        assert_eq!(d & 3, 3, "no table at level {l} for {ipa:#x}");
        t = d & OA;
        l += 1;
    }
}

/// Deterministic xorshift PRNG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
