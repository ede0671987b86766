//! I1–I4 and S1's DMA view of RULES.md, checked by walking the stage-2 tables themselves (not
//! by asking the core what it believes). Tests call [`check`] after every
//! step; it is plain code so the EL2 image could run it in a debug build.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pagetables::{Entry, Maintenance, MemType, PageState, PhysMem};
use platform::MemClass;

use crate::owner::HostAnnotation;
use crate::Hypervisor;

/// Who maps a page, and how.
#[derive(Clone, Copy, Debug)]
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

/// Check I1–I4 over every tracked page and every guest mapping.
/// `pages` limits the host-side scan to these pfn ranges (start, count);
/// guest stage-2s are always walked whole.
pub fn check<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
) -> Result<(), String> {
    let mut uses: BTreeMap<u64, Vec<Use>> = BTreeMap::new();
    let mut host_annot: BTreeMap<u64, HostAnnotation> = BTreeMap::new();
    for &(start, n) in pages {
        let _ = hv.host_stage2().walk(start << 12, n, &mut |ipa, cnt, e| {
            // Unannotated invalid runs are host owned, not faulted in: only
            // mappings and pages someone else owns are recorded.
            if e == (Entry::Invalid { annotation: 0 }) {
                return true;
            }
            for k in 0..cnt {
                let pfn = (ipa >> 12) + k;
                match e {
                    Entry::Mapped { pa, leaf, .. } => {
                        if pa + k * 4096 != pfn << 12 {
                            host_annot.insert(pfn, HostAnnotation::None);
                        }
                        uses.entry(pfn).or_default().push(Use {
                            space: HOST,
                            state: leaf.state,
                            memtype: leaf.memtype,
                        });
                    }
                    Entry::Invalid { annotation } => {
                        host_annot.insert(pfn, HostAnnotation::decode(annotation));
                    }
                }
            }
            true
        });
    }
    for (slot, vm) in hv.vms() {
        let ipa_pages = 1u64 << (host_interface::GUEST_IPA_BITS - 12);
        let _ = vm.stage2().walk(0, ipa_pages, &mut |_, cnt, e| {
            if let Entry::Mapped { pa, leaf, .. } = e {
                for k in 0..cnt {
                    uses.entry((pa >> 12) + k).or_default().push(Use {
                        space: slot,
                        state: leaf.state,
                        memtype: leaf.memtype,
                    });
                }
            }
            true
        });
    }
    let in_scope = |pfn: u64| pages.iter().any(|&(s, n)| pfn >= s && pfn < s + n);
    for (&pfn, us) in &uses {
        let (class, _) = hv.platform().classify(pfn);
        // I3: HYP pages are mapped in no stage-2.
        if class == MemClass::Hyp {
            return Err(format!("I3: HYP page {pfn:#x} mapped: {us:?}"));
        }
        if matches!(host_annot.get(&pfn), Some(HostAnnotation::None))
            && us.iter().any(|u| u.space == HOST)
        {
            return Err(format!("host maps {pfn:#x} at another output address"));
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
        let host_owns_unmapped =
            in_scope(pfn) && matches!(host_annot.get(&pfn), None | Some(HostAnnotation::None));
        if owners.len() > 1 {
            return Err(format!(
                "I1: page {pfn:#x} has {} owners: {us:?}",
                owners.len()
            ));
        }
        if owners.is_empty() && borrowers > 0 && in_scope(pfn) && !host_owns_unmapped {
            // The owner must then be the host with no mapping: impossible,
            // since a shared page is mapped SHARED_OWNED by its owner.
            return Err(format!(
                "I2: borrowed page {pfn:#x} has no owner mapping: {us:?}"
            ));
        }
        if let Some(o) = owners.first() {
            let shared = o.state == PageState::SharedOwned;
            let (count, _) = hv.page_meta(pfn);
            // I2: SHARED_OWNED exactly when someone borrows it (the
            // hypervisor borrows host pages with count 0 and holds no
            // stage-2 mapping of them).
            let hyp_borrow = o.space == HOST && shared && count == 0 && class == MemClass::Ram;
            if shared && borrowers == 0 && !hyp_borrow {
                return Err(format!(
                    "I2: {pfn:#x} SHARED_OWNED with no borrower: {us:?}"
                ));
            }
            if !shared && borrowers > 0 {
                return Err(format!("I2: {pfn:#x} OWNED but borrowed: {us:?}"));
            }
            if o.space == HOST && shared && count as usize != borrowers && count != 0 {
                return Err(format!(
                    "share count {count} of {pfn:#x} but {borrowers} borrowers"
                ));
            }
            // I3: a guest-owned page is mapped elsewhere only if shared.
            if o.space != HOST && !shared && us.len() > 1 {
                return Err(format!("I3: guest page {pfn:#x} mapped elsewhere: {us:?}"));
            }
        }
        // A guest-owned page (host annotation names a guest) is in that
        // guest's table and nowhere else unless shared.
        if let Some(HostAnnotation::Guest(slot)) = host_annot.get(&pfn) {
            if !us.iter().any(|u| u.space == *slot) {
                return Err(format!(
                    "I1: {pfn:#x} annotated for VM slot {slot} which does not map it"
                ));
            }
        }
        if matches!(
            host_annot.get(&pfn),
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
                cacheable(u.memtype) != cacheable(first)
                    || (!cacheable(first) && u.memtype != first)
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
            && us.iter().any(|u| {
                u.space == HOST && u.state == PageState::Owned && u.memtype != MemType::Device
            })
        {
            return Err(format!("D7: host-private MMIO {pfn:#x} not Device: {us:?}"));
        }
    }
    check_dma_view(hv, pages)
}

/// S1: the DMA view maps exactly the RAM and COHERENT pages the host may
/// reach, each at its own address. Both tables are walked run by run: a
/// host entry that is valid, or invalid without an annotation, is the
/// host's (`Hypervisor::host_may_dma`).
fn check_dma_view<P: PhysMem, M: Maintenance>(
    hv: &Hypervisor<P, M>,
    pages: &[(u64, u64)],
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
            let _ = hv
                .host_stage2()
                .walk(lo << 12, hi - lo, &mut |ipa, cnt, e| {
                    let host = match e {
                        Entry::Mapped { .. } => true,
                        Entry::Invalid { annotation } => annotation == 0,
                    };
                    let _ = view.stage2().walk(ipa, cnt, &mut |vipa, vcnt, ve| {
                        let ok = match ve {
                            Entry::Mapped { pa, .. } => host && pa == vipa,
                            Entry::Invalid { .. } => !host,
                        };
                        if !ok {
                            err = Some(format!(
                                "S1: DMA view {ve:?} for {:?} pages {:#x}+{vcnt}, host entry {e:?}",
                                r.class,
                                vipa >> 12
                            ));
                        }
                        ok
                    });
                    err.is_none()
                });
            if let Some(e) = err.take() {
                return Err(e);
            }
        }
    }
    Ok(())
}
