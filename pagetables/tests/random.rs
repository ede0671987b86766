//! Randomised operations against a per-page model: contents, table counts
//! (`*_tables_needed` equal to the pages actually taken), NoMem leaving
//! memory bit-for-bit unchanged, and destroy returning every page once.

mod common;

use std::collections::BTreeSet;

/// A walk's visitor.
type Visit<'a> = &'a mut dyn FnMut(u64, u64, Entry) -> bool;

use common::*;
use pagetables::{Entry, Error, Leaf, MemType, PageState, Perms, Stage2};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const POOL: u64 = 3000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum M {
    Inv(u16),
    Map(u64, Leaf),
}

struct World {
    mem: TestMem,
    s2: Stage2<TestMem>,
    fwb: bool,
    /// First IPA of the model window.
    lo: u64,
    model: Vec<M>,
    owned: BTreeSet<u64>,
    rng: Rng,
    stats: [usize; 4],
}

fn normalise(mut l: Leaf, fwb: bool) -> Leaf {
    l.perms.x &= l.memtype.is_cacheable();
    if l.memtype == MemType::Stage1 && !fwb {
        l.memtype = MemType::NormalWb;
    }
    l
}

impl World {
    fn new(ipa_bits: u32, pa_bits: u32, fwb: bool, lo: u64, pages: usize, seed: u64) -> Self {
        let (mem, s2) = setup_pa(ipa_bits, pa_bits, fwb, POOL);
        let roots = s2.geometry().root_pages as u64;
        let owned = (0..roots + POOL).map(TestMem::page).collect();
        Self {
            mem,
            s2,
            fwb,
            lo,
            model: vec![M::Inv(0); pages],
            owned,
            rng: Rng::new(seed),
            stats: [0; 4],
        }
    }

    fn hi(&self) -> u64 {
        self.lo + self.model.len() as u64 * 4096
    }

    fn random_leaf(&mut self) -> Leaf {
        let memtype = [
            MemType::NormalWb,
            MemType::Stage1,
            MemType::NormalNc,
            MemType::Device,
        ][self.rng.below(4) as usize];
        let b = self.rng.below(8);
        let state = [
            PageState::Owned,
            PageState::SharedOwned,
            PageState::SharedBorrowed,
        ][self.rng.below(3) as usize];
        Leaf {
            perms: Perms {
                r: b & 1 != 0,
                w: b & 2 != 0,
                x: b & 4 != 0,
            },
            memtype,
            state,
        }
    }

    /// A random range inside the window: mostly small, sometimes block
    /// aligned, sometimes 1 GiB.
    fn random_range(&mut self) -> (u64, u64) {
        let total = self.model.len() as u64;
        match self.rng.below(10) {
            0 => {
                // Aligned 2 MiB multiples.
                let first = self.lo.div_ceil(MIB2) * MIB2;
                let blocks = (self.hi() - first) / MIB2;
                let b = self.rng.below(blocks);
                let n = 1 + self.rng.below(3.min(blocks - b));
                (first + b * MIB2, n * 512)
            }
            1 => {
                let g = self.lo.div_ceil(GIB) * GIB;
                if g + GIB <= self.hi() {
                    (g, 1 << 18)
                } else {
                    (self.lo, 1)
                }
            }
            2 => {
                // Around a 2 MiB or 1 GiB boundary.
                let align = if self.rng.chance(50) { MIB2 } else { GIB };
                let first = self.lo.div_ceil(align) * align;
                if first >= self.hi() {
                    return (self.lo, 1);
                }
                let k = (self.hi() - first) / align;
                let line = first + align * self.rng.below(k.max(1));
                let before = 1 + self.rng.below(600);
                let after = 1 + self.rng.below(600);
                let a = line.saturating_sub(before * 4096).max(self.lo);
                let b = (line + after * 4096).min(self.hi());
                (a, (b - a) / 4096)
            }
            _ => {
                let max = if self.rng.chance(20) { 1100 } else { 8 };
                let n = 1 + self.rng.below(max.min(total));
                let start = self.rng.below(total - n + 1);
                (self.lo + start * 4096, n)
            }
        }
    }

    fn random_pa(&mut self, ipa: u64) -> u64 {
        match self.rng.below(4) {
            0 | 1 => ipa + 4 * GIB,
            2 => ipa + 8 * GIB,
            _ => ipa + 4 * GIB + 4096 * (1 + self.rng.below(511)),
        }
    }

    fn check_model(&self) {
        let n = self.model.len() as u64;
        let mut seen = 0;
        self.s2
            .walk(self.lo, n, &mut |a, cnt, e| {
                if let Entry::Mapped { level, leaf, .. } = e {
                    // D6: no non-cacheable blocks.
                    assert!(level == 3 || leaf.memtype.is_cacheable());
                }
                for i in 0..cnt {
                    let page = a + i * 4096;
                    let got = match e {
                        Entry::Invalid { annotation } => M::Inv(annotation),
                        Entry::Mapped { pa, leaf, .. } => M::Map(pa + i * 4096, leaf),
                    };
                    let want = self.model[((page - self.lo) / 4096) as usize];
                    assert_eq!(got, want, "page {page:#x}");
                }
                seen += cnt;
                true
            })
            .unwrap();
        assert_eq!(seen, n);
        // The raw walker gives every page the same entry, in the same order,
        // leaving out the empty ones when asked.
        for skip_empty in [false, true] {
            let pages = |walk: &mut dyn FnMut(Visit)| {
                let mut v = Vec::new();
                walk(&mut |a, cnt, e| {
                    for i in 0..cnt {
                        let e = match e {
                            Entry::Mapped { pa, leaf, level } => Entry::Mapped {
                                pa: pa + i * 4096,
                                leaf,
                                level,
                            },
                            inv => inv,
                        };
                        if !(skip_empty && e == (Entry::Invalid { annotation: 0 })) {
                            v.push((a + i * 4096, e));
                        }
                    }
                    true
                });
                v
            };
            let by_walk = pages(&mut |f| self.s2.walk(self.lo, n, f).unwrap());
            let by_raw = pages(&mut |f| self.s2.walk_raw(self.lo, n, skip_empty, f).unwrap());
            assert_eq!(by_raw, by_walk, "skip_empty {skip_empty}");
        }
    }

    fn step(&mut self) {
        let (ipa, nr) = self.random_range();
        let unmap = self.rng.chance(40);
        let (leaf, pa, allow, ann) = if unmap {
            let ann = [0, 0, 1, 5, 1023][self.rng.below(5) as usize];
            (None, 0, true, ann)
        } else {
            let l = self.random_leaf();
            let pa = self.random_pa(ipa);
            (Some(l), pa, self.rng.chance(70), 0)
        };
        let exact = match leaf {
            Some(l) => self.s2.map_tables_needed(ipa, pa, nr, l, allow),
            None => self.s2.set_invalid_tables_needed(ipa, nr, ann),
        };
        // The caller-side estimate is a bound wherever it is documented to be.
        let estimate = match leaf {
            None => {
                assert_eq!(
                    self.s2.tables_needed(ipa, nr, false).max(exact),
                    self.s2.tables_needed(ipa, nr, false)
                );
                self.s2.tables_needed(ipa, nr, true)
            }
            Some(l) => {
                let blocks = allow && l.memtype.is_cacheable();
                assert!(self.s2.tables_needed(ipa, nr, false) >= exact);
                if blocks && (pa - ipa) % GIB != 0 {
                    usize::MAX
                } else {
                    self.s2.tables_needed(ipa, nr, blocks)
                }
            }
        };
        assert!(estimate >= exact, "estimate {estimate} < exact {exact}");

        // Sometimes: starve the pool and check nothing changes.
        if exact > 0 && self.rng.chance(15) {
            let mut aside = vec![];
            while self.s2.pool_len() >= exact {
                aside.push(self.s2.pool_take().unwrap());
            }
            let before = self.mem.snapshot();
            let tables_before = self.s2.table_pages();
            let mut mnt = Rec::new();
            let r = match leaf {
                Some(l) => self.s2.map(ipa, pa, nr, l, allow, &mut mnt),
                None => self.s2.set_invalid(ipa, nr, ann, &mut mnt),
            };
            assert_eq!(
                r,
                Err(Error::NoMem {
                    needed: exact,
                    available: exact - 1
                })
            );
            assert!(self.mem.snapshot() == before, "NoMem changed memory");
            assert!(mnt.ev.is_empty());
            assert_eq!(
                (self.s2.pool_len(), self.s2.table_pages()),
                (exact - 1, tables_before)
            );
            for p in aside {
                self.s2.pool_add(p);
            }
            self.stats[3] += 1;
        }

        let before = all_tables(&self.mem, &self.s2);
        let pool_before = self.s2.pool_len();
        let mut mnt = Rec::new();
        match leaf {
            Some(l) => self.s2.map(ipa, pa, nr, l, allow, &mut mnt).unwrap(),
            None => self.s2.set_invalid(ipa, nr, ann, &mut mnt).unwrap(),
        }
        let after = all_tables(&self.mem, &self.s2);
        let allocated = after.difference(&before).count();
        let freed = before.difference(&after).count();
        assert_eq!(
            allocated, exact,
            "tables allocated vs counted, ipa {ipa:#x} nr {nr} {leaf:?}"
        );
        if estimate != usize::MAX && freed == 0 && exact != estimate {
            self.stats[2] += 1;
        }
        assert_eq!(self.s2.table_pages(), after.len());
        assert_eq!(self.s2.pool_len() + allocated, pool_before + freed);
        assert!(mnt.vmid.iter().all(|&v| v == 7));
        // Every TLBI is followed by a DSB before returning.
        if let Some(last_tlbi) = mnt
            .ev
            .iter()
            .rposition(|e| matches!(e, Ev::Ipa(..) | Ev::Vmid(_)))
        {
            assert!(mnt.ev[last_tlbi + 1..].contains(&Ev::Dsb));
            assert!(last_tlbi > 0 && mnt.ev[..last_tlbi].contains(&Ev::Dsb));
        }
        assert!(!mnt
            .ev
            .iter()
            .any(|e| matches!(e, Ev::Dcache(..) | Ev::Icache)));

        for i in 0..nr {
            let m = &mut self.model[((ipa - self.lo) / 4096 + i) as usize];
            *m = match leaf {
                Some(l) => M::Map(pa + i * 4096, normalise(l, self.fwb)),
                None => M::Inv(ann),
            };
        }
        self.stats[usize::from(unmap)] += 1;
        // Occasionally take a pool page for "metadata".
        if self.rng.chance(3) {
            if let Some(p) = self.s2.pool_take() {
                self.owned.remove(&p);
            }
        }
    }

    /// What `walk_raw` reports over the window.
    fn raw_runs(&self) -> Vec<(u64, u64, Entry)> {
        let mut v = Vec::new();
        self.s2
            .walk_raw(self.lo, self.model.len() as u64, true, &mut |a, cnt, e| {
                v.push((a, cnt, e));
                true
            })
            .unwrap();
        v
    }

    fn run(mut self, steps: usize) {
        let mut last = (self.s2.generation(), self.raw_runs());
        for s in 0..steps {
            self.step();
            // A checker may keep a walk while the generation stays put
            // (`hyp::invariants::check_cached`): the tables must then be
            // unchanged.
            let now = (self.s2.generation(), self.raw_runs());
            if now.0 == last.0 {
                assert_eq!(
                    now.1, last.1,
                    "step {s}: tables changed, generation did not"
                );
            }
            last = now;
            if s % 8 == 0 || s + 1 == steps {
                self.check_model();
            }
        }
        assert!(
            self.stats[0] > 0 && self.stats[1] > 0 && self.stats[3] > 0,
            "{:?}",
            self.stats
        );
        let mut got = vec![];
        let s2 = self.s2;
        s2.destroy(&mut |p| got.push(p));
        let set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "a page returned twice");
        assert_eq!(set, self.owned);
    }
}

#[test]
fn random_ops_level1_root() {
    for seed in 1..=3 {
        // 1 GiB + 16 MiB around the 1 GiB line, 39-bit IPA (root level 1).
        World::new(
            39,
            48,
            seed % 2 == 0,
            GIB - 8 * MIB2,
            (GIB / 4096 + 4096) as usize,
            seed * 7919,
        )
        .run(200);
    }
}

#[test]
fn random_ops_level0_root() {
    for seed in 1..=2 {
        // Across the 512 GiB line of a level-0 root.
        World::new(
            48,
            48,
            seed % 2 == 1,
            512 * GIB - GIB - 8 * MIB2,
            (GIB / 4096 + 8192) as usize,
            seed * 104729,
        )
        .run(200);
    }
}

#[test]
fn random_small_window_many_ops() {
    for seed in 1..=6 {
        World::new(40, 48, seed % 2 == 0, 3 * MIB2 - 0x5000, 2048, seed * 31337).run(600);
    }
}

#[test]
fn random_ops_concatenated_root() {
    for (seed, ipa_bits) in [(1u64, 40), (2, 41), (3, 42)] {
        // Across the 512 GiB line between the first two pages of a
        // concatenated level-1 root (40-bit PA: no level-0 start).
        let w = World::new(
            ipa_bits,
            40,
            seed % 2 == 0,
            512 * GIB - GIB - 8 * MIB2,
            (2 * GIB / 4096 + 8192) as usize,
            seed * 65537,
        );
        assert_eq!(
            (w.s2.root_level(), w.s2.geometry().root_pages),
            (1, 1 << (ipa_bits - 39))
        );
        w.run(200);
    }
}
