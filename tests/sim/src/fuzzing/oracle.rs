//! What the fuzz targets check after every step.
//!
//! - I1–I4: [`hyp::invariants::check`], which walks the real stage-2
//!   tables (the walker the model-based test uses too).
//! - "A failed call changed nothing": a [`Snapshot`] of the frames the
//!   call named (the host's and every VM's entries, the page metadata),
//!   the pools and the maintenance issued, taken before each call and
//!   compared after a call that failed.
//! - I5: [`scrubbed`], after every successful RECLAIM.

use host_interface::PAGE_SIZE;
use pagetables::{Entry, PhysMem};

use crate::{tracked_ranges, CountingMaintenance, SimHyp, SimPhys};

/// I1–I4 over every tracked page and every guest stage-2.
pub fn invariants(hv: &SimHyp) -> Result<(), String> {
    hv.phys()
        .reading(|| hyp::invariants::check(hv, &tracked_ranges(hv.platform())))
}

/// I1–I4 over the tracked pages in `scope` and every guest stage-2,
/// walking again only the guest stage-2s written since the last call
/// ([`hyp::invariants::check_cached`]; [`invariants`] walks everything).
pub fn invariants_in(hv: &SimHyp, scope: &mut Scope) -> Result<(), String> {
    hv.phys()
        .reading(|| hyp::invariants::check_cached(hv, &scope.ranges, &mut scope.walks))
}

/// The host pages an input has named so far, as 2 MiB-aligned windows
/// clipped to tracked memory. Walking all of tracked memory after every
/// step costs milliseconds once the host has faulted blocks in (the
/// checker looks at each page); pages no argument named cannot have
/// changed, so the targets check these after every step and everything
/// at the end. A guest changes the host's entries only for pages it was
/// given, so the frames of a guest image the machine allocated at a boot
/// are added too.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    tracked: Vec<(u64, u64)>,
    /// Sorted, disjoint (first pfn, count).
    pub ranges: Vec<(u64, u64)>,
    /// The guest stage-2s as last walked.
    walks: hyp::invariants::WalkCache,
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
            walks: Default::default(),
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

/// What a host call can change that the host or a test can observe,
/// around the frames the call named: a failed call must leave all of it as
/// it was. Walking every table before and after each call would cost more
/// than the call (a VM's 40-bit IPA space alone is a thousand descriptors
/// at the top level), so this looks up the named frames, and counts what
/// any other write would have needed: table pages from a pool, TLB or
/// cache maintenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    host_pool: usize,
    host_tables: usize,
    maintenance: CountingMaintenance,
    /// (handle, protected, pool pages, table pages).
    vms: Vec<(u64, bool, usize, usize)>,
    /// (frame, the host's entry, share count, pinned).
    host: Vec<(u64, Entry, u16, bool)>,
    /// (handle, frame, the VM's entry).
    guest: Vec<(u64, u64, Entry)>,
}

/// The frames a call's registers name: each register x1..x6 taken as a
/// first frame, with the next register as a count (at most 16 frames).
pub fn named_frames(regs: &[u64; 7]) -> Vec<u64> {
    let mut frames = Vec::new();
    for k in 1..7 {
        let n = regs.get(k + 1).copied().unwrap_or(1).clamp(1, 16);
        for i in 0..n {
            let f = regs[k].wrapping_add(i);
            if !frames.contains(&f) {
                frames.push(f);
            }
        }
    }
    frames
}

impl Snapshot {
    /// The state now, around `frames`.
    pub fn take(hv: &mut SimHyp, frames: &[u64]) -> Snapshot {
        let phys = hv.phys().clone();
        phys.reading(|| Self::take_reading(hv, frames))
    }

    fn take_reading(hv: &mut SimHyp, frames: &[u64]) -> Snapshot {
        let maintenance = hv.maintenance().counts();
        let pa_pages = hv.platform().pa_pages();
        let ipa_pages = 1u64 << (host_interface::GUEST_IPA_BITS - 12);
        let host = frames
            .iter()
            .filter(|&&f| f < pa_pages)
            .map(|&f| {
                let (count, pinned) = hv.page_meta(f);
                (f, hv.host_stage2().lookup(f * PAGE_SIZE), count, pinned)
            })
            .collect();
        let mut vms = Vec::new();
        let mut guest = Vec::new();
        for (_, vm) in hv.vms() {
            vms.push((
                vm.handle(),
                vm.protected(),
                vm.stage2().pool_len(),
                vm.stage2().table_pages(),
            ));
            for &f in frames.iter().filter(|&&f| f < ipa_pages) {
                guest.push((vm.handle(), f, vm.stage2().lookup(f * PAGE_SIZE)));
            }
        }
        let (host_pool, host_tables) = {
            let s2 = hv.host_stage2();
            (s2.pool_len(), s2.table_pages())
        };
        Snapshot {
            host_pool,
            host_tables,
            maintenance,
            vms,
            host,
            guest,
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
        if self.maintenance != after.maintenance {
            return Err(format!(
                "maintenance {:?} -> {:?}",
                self.maintenance, after.maintenance
            ));
        }
        if self.vms != after.vms {
            return Err(format!("VMs {:?} -> {:?}", self.vms, after.vms));
        }
        for (a, b) in self.host.iter().zip(&after.host) {
            if a != b {
                return Err(format!("the host's frame {:#x}: {a:?} -> {b:?}", a.0));
            }
        }
        for (a, b) in self.guest.iter().zip(&after.guest) {
            if a != b {
                return Err(format!("VM {} frame {:#x}: {a:?} -> {b:?}", a.0, a.1));
            }
        }
        Ok(())
    }
}

/// I5 after RECLAIM: each of the `nr` pages from `pfn` reads as zeros.
pub fn scrubbed(phys: &SimPhys, pfn: u64, nr: u64) -> Result<(), String> {
    phys.reading(|| scrubbed_reading(phys, pfn, nr))
}

fn scrubbed_reading<P: PhysMem>(phys: &P, pfn: u64, nr: u64) -> Result<(), String> {
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
