//! I1–I4 and S1's DMA view of RULES.md, checked by walking the stage-2 tables themselves (not
//! by asking the core what it believes). Tests call [`check`] after every
//! step; it is plain code so the EL2 image could run it in a debug build.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pagetables::{Entry, Maintenance, MemType, PageState, PhysMem};
use platform::MemClass;

use crate::owner::HostAnnotation;
use crate::Hypervisor;

/// Who maps a page, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Use {
    /// usize::MAX = host, else VM slot.
    space: usize,
    state: PageState,
    memtype: MemType,
}

const HOST: usize = usize::MAX;

fn cacheable(m: MemType) -> bool {
    matches!(m, MemType::NormalWb | MemType::Stage1)
}

/// A run of pages `[start, start + n)` (pfns) with the same use.
#[derive(Clone, Copy, Debug)]
struct Run<T> {
    start: u64,
    n: u64,
    what: T,
}

impl<T> Run<T> {
    fn end(&self) -> u64 {
        self.start + self.n
    }
}

/// Check I1–I4 over every tracked page and every guest mapping.
/// `pages` limits the host-side scan to these pfn ranges (start, count;
/// sorted and disjoint); guest stage-2s are always walked whole.
///
/// The tables are read run by run (one descriptor at a time, a block
/// being one run), and the checks run once per stretch of pages over
/// which nothing changes: no run, scope range or platform region starts
/// or ends inside it. Everything a check looks at is then the same for
/// every page of the stretch, except the share count, which is read per
/// page where it matters.
pub fn check<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
) -> Result<(), String> {
    check_cached(hv, pages, &mut WalkCache::default())
}

/// A table's [`pagetables::Stage2::generation`].
type Generation = (u64, u64);

/// What [`check_cached`] keeps from one call to the next: the runs each
/// guest stage-2 gave when last walked and the host's runs over the pages
/// last checked, each with its table's generation
/// ([`pagetables::Stage2::generation`]) then, and the generations at the
/// last S1 check that passed.
#[derive(Clone, Debug, Default)]
pub struct WalkCache {
    /// (VM slot, generation, the runs the walk pushed).
    vms: Vec<(usize, Generation, Vec<Run<Use>>)>,
    /// The host's table as last read, over the pages then.
    host: Option<HostWalk>,
    /// The generations of the host's table and the DMA view when S1 last
    /// passed, over `host`'s pages.
    dma_passed: Option<(Generation, Option<Generation>)>,
}

/// [`check`], reading a table again only when its generation changed
/// since `cache` last saw it.
///
/// Why this checks exactly what [`check`] does: a table's walk depends on
/// nothing but the table's descriptors and what is asked (a guest's whole
/// IPA space and its slot; the host's table over `pages`). A guest's runs
/// never merge with another space's (a run's `Use` names its space).
/// `Stage2` counts every descriptor write made through it before making
/// it, and no two tables share an id, so an unchanged generation means
/// the walk would give the same runs again. The rules are then applied
/// afresh to the whole picture on every call: each changed table is
/// checked against the unchanged ones, with the share counts, the pins
/// and the regions read now. S1 is skipped only when its inputs are all
/// those of the last call, which passed: the host's walk kept (same
/// table, same pages) and the DMA view unwritten.
///
/// What the count cannot see is a raw write to a table page (corruption
/// not made through `Stage2`): that shows once the table is next written
/// through `Stage2`, or by [`check`], which reads everything (the fuzz
/// targets end every input with it).
pub fn check_cached<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
    cache: &mut WalkCache,
) -> Result<(), String> {
    // The host's entries in scope: its mappings, its annotations, and
    // for S1 whether each run is the host's to reach.
    let host_generation = hv.host_stage2().generation();
    // The last call's walk of the host's table, if the table and the
    // pages are the same (the walk reads nothing else).
    let kept = cache
        .host
        .take()
        .filter(|h| h.generation == host_generation && h.pages == pages);
    let reused = kept.is_some();
    let host = match kept {
        Some(h) => h,
        None => walk_host(hv, pages)?,
    };
    let mut uses = host.uses.clone();
    let annots = &host.annots;
    let host_reach = &host.reach;
    let mut seen = Vec::new();
    for (slot, vm) in hv.vms() {
        let generation = vm.stage2().generation();
        seen.push((slot, generation));
        if let Some((_, _, runs)) = cache
            .vms
            .iter()
            .find(|(s, g, _)| *s == slot && *g == generation)
        {
            uses.extend_from_slice(runs);
            continue;
        }
        let mut runs: Vec<Run<Use>> = Vec::new();
        let ipa_pages = 1u64 << (host_interface::GUEST_IPA_BITS - 12);
        let _ = vm.stage2().walk_raw(0, ipa_pages, true, &mut |_, cnt, e| {
            if let Entry::Mapped { pa, leaf, .. } = e {
                let what = Use {
                    space: slot,
                    state: leaf.state,
                    memtype: leaf.memtype,
                };
                // Pages mapped one by one to consecutive frames make one run.
                match runs.last_mut() {
                    Some(r) if r.what == what && r.end() == pa >> 12 => r.n += cnt,
                    _ => runs.push(Run {
                        start: pa >> 12,
                        n: cnt,
                        what,
                    }),
                }
            }
            true
        });
        uses.extend_from_slice(&runs);
        cache.vms.push((slot, generation, runs));
    }
    // Keep what the next call may use: the VMs' current tables.
    cache.vms.retain(|(s, g, _)| seen.contains(&(*s, *g)));

    // Every point where what a page sees can change.
    let mut bounds: Vec<u64> = Vec::with_capacity(2 * (uses.len() + annots.len() + pages.len()));
    for r in &uses {
        bounds.extend([r.start, r.end()]);
    }
    for a in annots {
        bounds.extend([a.start, a.end()]);
    }
    for &(s, n) in pages {
        bounds.extend([s, s + n]);
    }
    for r in hv.platform().regions() {
        bounds.extend([r.base_pfn, r.base_pfn + r.nr_pages]);
    }
    bounds.sort_unstable();
    bounds.dedup();
    uses.sort_by_key(|r| r.start);

    // Sweep: `active` holds the uses covering the current stretch.
    let mut active: Vec<Use> = Vec::new();
    let mut live: Vec<Run<Use>> = Vec::new();
    let mut next = 0;
    let mut ann = 0;
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        live.retain(|r| r.end() > lo);
        while next < uses.len() && uses[next].start <= lo {
            if uses[next].end() > lo {
                live.push(uses[next]);
            }
            next += 1;
        }
        while ann < annots.len() && annots[ann].end() <= lo {
            ann += 1;
        }
        let annot = annots.get(ann).filter(|a| a.start <= lo).map(|a| a.what);
        // A page annotated for a guest must be in its table even when no
        // table maps it.
        if live.is_empty() && !matches!(annot, Some(HostAnnotation::Guest(_))) {
            continue;
        }
        active.clear();
        active.extend(live.iter().map(|r| r.what));
        let in_scope = pages.iter().any(|&(s, n)| lo >= s && lo < s + n);
        check_stretch(hv, lo, hi, &active, annot, in_scope)?;
    }
    // S1 reads the DMA view, the host's runs over `pages` and the regions
    // (fixed): with the host's walk kept from the last call, which passed,
    // and the view unwritten since, it passes again.
    let dma_key = (
        host_generation,
        hv.dma_view().map(|v| v.stage2().generation()),
    );
    if !reused || cache.dma_passed != Some(dma_key) {
        check_dma_view(hv, pages, host_reach)?;
    }
    cache.dma_passed = Some(dma_key);
    cache.host = Some(host);
    Ok(())
}

/// The host's table over `pages`, run by run: its mappings, its
/// annotations, and for S1 whether each run is the host's to reach.
#[derive(Clone, Debug)]
struct HostWalk {
    generation: Generation,
    pages: Vec<(u64, u64)>,
    uses: Vec<Run<Use>>,
    annots: Vec<Run<HostAnnotation>>,
    reach: Vec<Run<bool>>,
}

fn walk_host<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
) -> Result<HostWalk, String> {
    let mut uses: Vec<Run<Use>> = Vec::new();
    let mut annots: Vec<Run<HostAnnotation>> = Vec::new();
    let mut host_reach: Vec<Run<bool>> = Vec::new();
    let mut err = None;
    for &(start, n) in pages {
        let _ = hv
            .host_stage2()
            .walk_raw(start << 12, n, false, &mut |ipa, cnt, e| {
                let pfn = ipa >> 12;
                match e {
                    Entry::Mapped { pa, leaf, .. } => {
                        if pa != ipa {
                            err = Some(format!("host maps {pfn:#x} at another output address"));
                            return false;
                        }
                        uses.push(Run {
                            start: pfn,
                            n: cnt,
                            what: Use {
                                space: HOST,
                                state: leaf.state,
                                memtype: leaf.memtype,
                            },
                        });
                    }
                    // Unannotated invalid runs are host owned, not faulted in.
                    Entry::Invalid { annotation: 0 } => {}
                    Entry::Invalid { annotation } => annots.push(Run {
                        start: pfn,
                        n: cnt,
                        what: HostAnnotation::decode(annotation),
                    }),
                }
                let reach = !matches!(e, Entry::Invalid { annotation } if annotation != 0);
                host_reach.push(Run {
                    start: pfn,
                    n: cnt,
                    what: reach,
                });
                true
            });
        if let Some(e) = err.take() {
            return Err(e);
        }
    }
    Ok(HostWalk {
        generation: hv.host_stage2().generation(),
        pages: pages.to_vec(),
        uses,
        annots,
        reach: host_reach,
    })
}

/// The checks of [`check`] for the pages `[lo, hi)`, which all have the
/// uses `us` (empty only where `annot` names a guest), the host annotation
/// `annot` and the same class and scope.
fn check_stretch<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    lo: u64,
    hi: u64,
    us: &[Use],
    annot: Option<HostAnnotation>,
    in_scope: bool,
) -> Result<(), String> {
    let pfn = lo;
    let (class, _) = hv.platform().classify(pfn);
    // I3: HYP pages are mapped in no stage-2.
    if class == MemClass::Hyp {
        return Err(format!("I3: HYP page {pfn:#x} mapped: {us:?}"));
    }
    // I1/I2: exactly one owner among the mappings, or an owner elsewhere.
    let owners: Vec<&Use> = us
        .iter()
        .filter(|u| matches!(u.state, PageState::Owned | PageState::SharedOwned))
        .collect();
    let borrowers = us
        .iter()
        .filter(|u| u.state == PageState::SharedBorrowed)
        .count();
    if owners.len() > 1 {
        return Err(format!(
            "I1: page {pfn:#x} has {} owners: {us:?}",
            owners.len()
        ));
    }
    if owners.is_empty() && borrowers > 0 && in_scope {
        // The owner must then be the host with no mapping (unmapped, or
        // annotated for someone else): impossible, since a shared page is
        // mapped SHARED_OWNED by its owner.
        return Err(format!(
            "I2: borrowed page {pfn:#x} has no owner mapping: {us:?}"
        ));
    }
    if let Some(o) = owners.first() {
        let shared = o.state == PageState::SharedOwned;
        if o.space == HOST && shared {
            for p in lo..hi {
                let (count, _) = hv.page_meta(p);
                // I2: SHARED_OWNED exactly when someone borrows it (the
                // hypervisor borrows host pages with count 0 and holds no
                // stage-2 mapping of them).
                let hyp_borrow = count == 0 && class == MemClass::Ram;
                if borrowers == 0 && !hyp_borrow {
                    return Err(format!("I2: {p:#x} SHARED_OWNED with no borrower: {us:?}"));
                }
                // Every guest borrowing of a host page is counted, so a
                // count of 0 with borrowers is wrong too.
                if count as usize != borrowers {
                    return Err(format!(
                        "share count {count} of {p:#x} but {borrowers} borrowers"
                    ));
                }
            }
        } else if shared && borrowers == 0 && in_scope {
            // A guest shares only with the host, whose table is read
            // over `pages` only: outside them its borrowing is unseen.
            return Err(format!(
                "I2: {pfn:#x} SHARED_OWNED with no borrower: {us:?}"
            ));
        }
        // Every use is an owner or a borrower, so this is also I3 for a
        // guest's page: mapped elsewhere only if shared.
        if !shared && borrowers > 0 {
            return Err(format!("I2: {pfn:#x} OWNED but borrowed: {us:?}"));
        }
    }
    // A guest-owned page (host annotation names a guest) is in that
    // guest's table and nowhere else unless shared.
    if let Some(HostAnnotation::Guest(slot)) = annot {
        if !us.iter().any(|u| u.space == slot) {
            return Err(format!(
                "I1: {pfn:#x} annotated for VM slot {slot} which does not map it"
            ));
        }
    }
    if matches!(
        annot,
        Some(HostAnnotation::Hyp | HostAnnotation::Reclaimable)
    ) {
        return Err(format!(
            "I3: hypervisor/reclaimable page {pfn:#x} mapped: {us:?}"
        ));
    }
    // I4: one memory type across all live mappings (Stage1 on the
    // host's private RAM is its own, unshared, mapping).
    if us.len() > 1 {
        let first = us[0].memtype;
        if us.iter().any(|u| {
            cacheable(u.memtype) != cacheable(first) || (!cacheable(first) && u.memtype != first)
        }) {
            return Err(format!(
                "I4: {pfn:#x} mapped with several memory types: {us:?}"
            ));
        }
        if us.iter().any(|u| u.memtype == MemType::Stage1) {
            return Err(format!(
                "I4: shared page {pfn:#x} left to stage 1's type: {us:?}"
            ));
        }
    }
    // Shared device pages: the host's entry follows the guest type (D7).
    if class == MemClass::Mmio
        && us
            .iter()
            .any(|u| u.space == HOST && u.state == PageState::Owned && u.memtype != MemType::Device)
    {
        return Err(format!("D7: host-private MMIO {pfn:#x} not Device: {us:?}"));
    }
    Ok(())
}

/// S1: the DMA view maps exactly the RAM and COHERENT pages the host may
/// reach, each at its own address. `host` is the host's table over
/// `pages`, run by run: a run that is valid, or invalid without an
/// annotation, is the host's (owned, shared or borrowed). The view is
/// walked once per range and matched against it.
fn check_dma_view<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
    host: &[Run<bool>],
) -> Result<(), String> {
    let Some(view) = hv.dma_view() else {
        return Ok(());
    };
    let mut err = None;
    for r in hv.platform().regions() {
        if !matches!(r.class, MemClass::Ram | MemClass::Coherent) {
            continue;
        }
        for &(start, n) in pages {
            let lo = start.max(r.base_pfn);
            let hi = (start + n).min(r.base_pfn + r.nr_pages);
            if lo >= hi {
                continue;
            }
            // The first host run that ends after `lo`.
            let mut h = host.partition_point(|x| x.end() <= lo);
            let _ = view.stage2().walk_raw(lo << 12, hi - lo, false, &mut |vipa, vcnt, ve| {
                let (vlo, vhi) = (vipa >> 12, (vipa >> 12) + vcnt);
                while let Some(x) = host.get(h).filter(|x| x.start < vhi) {
                    let reach = x.what;
                    let ok = match ve {
                        Entry::Mapped { pa, .. } => reach && pa == vipa,
                        Entry::Invalid { .. } => !reach,
                    };
                    if !ok {
                        err = Some(format!(
                            "S1: DMA view {ve:?} for {:?} pages {:#x}+{vcnt}, host reaches {reach} at {:#x}+{}",
                            r.class,
                            vlo,
                            x.start.max(vlo),
                            x.end().min(vhi) - x.start.max(vlo)
                        ));
                        return false;
                    }
                    if x.end() > vhi {
                        break;
                    }
                    h += 1;
                }
                true
            });
            if let Some(e) = err.take() {
                return Err(e);
            }
        }
    }
    Ok(())
}
