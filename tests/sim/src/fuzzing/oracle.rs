//! What the fuzz targets check after every step.
//!
//! - I1–I4: [`hyp::invariants::check`], which walks the real stage-2
//!   tables (the walker the model-based test uses too).
//! - "A failed call changed nothing": a [`Snapshot`] of everything the
//!   host can observe through the tables and the pools, taken before each
//!   call and compared after a call that failed.
//! - I5: [`scrubbed`], after every successful RECLAIM.

use host_interface::PAGE_SIZE;
use pagetables::{Entry, Leaf, PhysMem};

use crate::{tracked_ranges, SimHyp};

/// I1–I4 over every tracked page and every guest stage-2.
pub fn invariants(hv: &SimHyp) -> Result<(), String> {
    hyp::invariants::check(hv, &tracked_ranges(hv.platform()))
}

/// I1–I4 over the tracked pages in `scope` and every guest stage-2.
pub fn invariants_in(hv: &SimHyp, scope: &Scope) -> Result<(), String> {
    hyp::invariants::check(hv, &scope.ranges)
}

/// The host pages an input has named so far, as 2 MiB-aligned windows
/// clipped to tracked memory. Walking all of tracked memory after every
/// step costs milliseconds once the host has faulted blocks in (the
/// checker looks at each page); pages no argument named cannot have
/// changed, so the targets check these after every step and everything
/// at the end.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    tracked: Vec<(u64, u64)>,
    /// Sorted, disjoint (first pfn, count).
    pub ranges: Vec<(u64, u64)>,
}

/// Pages per 2 MiB window.
const WINDOW: u64 = 512;

impl Scope {
    /// The first window of each tracked region (where the simulator sets
    /// pages aside for scenarios and guest images).
    pub fn new(hv: &SimHyp) -> Scope {
        let tracked = tracked_ranges(hv.platform());
        let mut s = Scope {
            tracked: tracked.clone(),
            ranges: Vec::new(),
        };
        for (start, _) in tracked {
            s.add(start, 2 * WINDOW);
        }
        s
    }

    /// Adds the windows holding `[pfn, pfn + nr)` (`nr` capped at 1024).
    pub fn add(&mut self, pfn: u64, nr: u64) {
        let first = pfn & !(WINDOW - 1);
        let Some(end) = pfn.checked_add(nr.clamp(1, 2 * WINDOW)) else {
            return;
        };
        let end = end.div_ceil(WINDOW).saturating_mul(WINDOW);
        let mut ranges = self.ranges.clone();
        for &(s, n) in &self.tracked {
            let (lo, hi) = (first.max(s), end.min(s + n));
            if lo < hi {
                ranges.push((lo, hi - lo));
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, n) in ranges {
            match merged.last_mut() {
                Some((ls, ln)) if s <= *ls + *ln => *ln = (*ln).max(s + n - *ls),
                _ => merged.push((s, n)),
            }
        }
        self.ranges = merged;
    }
}

/// One run of identical translation: `count` pages from `ipa`, mapped to
/// consecutive output pages with one leaf, or invalid with one annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Mapped {
        ipa: u64,
        count: u64,
        pa: u64,
        leaf: Leaf,
    },
    Invalid {
        ipa: u64,
        count: u64,
        annotation: u16,
    },
}

/// The observable state of the core: every translation of the host's
/// tracked memory and of every VM (normalised, so that how many
/// descriptors express it does not matter), the pools, the per-page
/// metadata of the pages a call named, and the VMs that exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    host: Vec<Run>,
    host_pool: usize,
    host_tables: usize,
    /// (handle, protected, pool pages, table pages, translation).
    vms: Vec<(u64, bool, usize, usize, Vec<Run>)>,
    /// (pfn, share count, pinned) of the pages asked about.
    meta: Vec<(u64, u16, bool)>,
}

fn push(runs: &mut Vec<Run>, ipa: u64, count: u64, e: Entry) {
    let next = match e {
        Entry::Mapped { pa, leaf, .. } => Run::Mapped {
            ipa,
            count,
            pa,
            leaf,
        },
        Entry::Invalid { annotation } => Run::Invalid {
            ipa,
            count,
            annotation,
        },
    };
    if let Some(last) = runs.last_mut() {
        match (last, next) {
            (
                Run::Mapped {
                    ipa: i0,
                    count: c0,
                    pa: p0,
                    leaf: l0,
                },
                Run::Mapped {
                    ipa,
                    count,
                    pa,
                    leaf,
                },
            ) if *i0 + *c0 * PAGE_SIZE == ipa && *p0 + *c0 * PAGE_SIZE == pa && *l0 == leaf => {
                *c0 += count;
                return;
            }
            (
                Run::Invalid {
                    ipa: i0,
                    count: c0,
                    annotation: a0,
                },
                Run::Invalid {
                    ipa,
                    count,
                    annotation,
                },
            ) if *i0 + *c0 * PAGE_SIZE == ipa && *a0 == annotation => {
                *c0 += count;
                return;
            }
            _ => {}
        }
    }
    runs.push(next);
}

fn translation<P: PhysMem>(s2: &pagetables::Stage2<P>, ranges: &[(u64, u64)]) -> Vec<Run> {
    let mut runs = Vec::new();
    for &(start, n) in ranges {
        let _ = s2.walk(start * PAGE_SIZE, n, &mut |ipa, cnt, e| {
            push(&mut runs, ipa, cnt, e);
            true
        });
    }
    runs
}

impl Snapshot {
    /// The state now: the host's translation of the pages in `scope`,
    /// every VM's whole, and the metadata of `pfns`.
    pub fn take(hv: &SimHyp, scope: &Scope, pfns: &[u64]) -> Snapshot {
        let host = translation(hv.host_stage2(), &scope.ranges);
        let ipa_pages = 1u64 << (host_interface::GUEST_IPA_BITS - 12);
        let vms = hv
            .vms()
            .map(|(_, vm)| {
                (
                    vm.handle(),
                    vm.protected(),
                    vm.stage2().pool_len(),
                    vm.stage2().table_pages(),
                    translation(vm.stage2(), &[(0, ipa_pages)]),
                )
            })
            .collect();
        let meta = pfns
            .iter()
            .map(|&p| {
                let (count, pinned) = hv.page_meta(p);
                (p, count, pinned)
            })
            .collect();
        Snapshot {
            host,
            host_pool: hv.host_stage2().pool_len(),
            host_tables: hv.host_stage2().table_pages(),
            vms,
            meta,
        }
    }

    /// `Err` naming the first difference from `after`.
    pub fn unchanged(&self, after: &Snapshot) -> Result<(), String> {
        if self.host_pool != after.host_pool || self.host_tables != after.host_tables {
            return Err(format!(
                "host pool {} -> {}, host tables {} -> {}",
                self.host_pool, after.host_pool, self.host_tables, after.host_tables
            ));
        }
        if self.meta != after.meta {
            return Err(format!("page metadata {:?} -> {:?}", self.meta, after.meta));
        }
        if self.vms.len() != after.vms.len() {
            return Err(format!("{} VMs -> {}", self.vms.len(), after.vms.len()));
        }
        for (a, b) in self.vms.iter().zip(&after.vms) {
            if a.0 != b.0 || a.1 != b.1 || a.2 != b.2 || a.3 != b.3 {
                return Err(format!(
                    "VM {} (pool {}, tables {}) -> VM {} (pool {}, tables {})",
                    a.0, a.2, a.3, b.0, b.2, b.3
                ));
            }
            if a.4 != b.4 {
                return Err(format!(
                    "VM {}'s stage-2 changed: {}",
                    a.0,
                    diff(&a.4, &b.4)
                ));
            }
        }
        if self.host != after.host {
            return Err(format!(
                "the host's stage-2 changed: {}",
                diff(&self.host, &after.host)
            ));
        }
        Ok(())
    }
}

fn diff(a: &[Run], b: &[Run]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "first difference at run {at}: {:?} -> {:?}",
        a.get(at),
        b.get(at)
    )
}

/// I5 after RECLAIM: each of the `nr` pages from `pfn` reads as zeros.
pub fn scrubbed<P: PhysMem>(phys: &P, pfn: u64, nr: u64) -> Result<(), String> {
    for p in pfn..pfn.saturating_add(nr) {
        for w in 0..PAGE_SIZE / 8 {
            let v = hyp::phys::read_u64(phys, p * PAGE_SIZE + w * 8);
            if v != 0 {
                return Err(format!(
                    "I5: page {p:#x} reclaimed but word {w} is {v:#x}, not scrubbed"
                ));
            }
        }
    }
    Ok(())
}
