//! Per-page metadata: two bytes for every tracked page (RAM, COHERENT and
//! assignable MMIO), indexed densely through the platform description.
//!
//! Ownership and sharing state live in the stage-2 entries themselves; this
//! array only holds what a page-table entry cannot: how many guest mappings
//! borrow a host page, and whether a page shared with the hypervisor is pinned
//! as a vCPU run page.

use alloc::vec::Vec;
use platform::Platform;

/// Largest number of guest mappings that may borrow one host page.
pub const MAX_SHARE_COUNT: u16 = 0x7fff;
const PINNED: u16 = 0x8000;

/// The metadata array.
pub struct PageMeta {
    entries: Vec<u16>,
}

impl PageMeta {
    /// Metadata for every tracked page of `platform`, all zero.
    pub fn new(platform: &Platform) -> Self {
        let n = usize::try_from(platform.tracked_pages()).unwrap_or(0);
        Self {
            entries: alloc::vec![0; n],
        }
    }

    /// Bytes of metadata held.
    pub fn bytes(&self) -> usize {
        self.entries.len() * core::mem::size_of::<u16>()
    }

    fn get(&self, index: Option<u64>) -> u16 {
        index
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get(i).copied())
            .unwrap_or(0)
    }

    fn update(&mut self, index: Option<u64>, f: impl FnOnce(u16) -> u16) {
        if let Some(e) = index
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get_mut(i))
        {
            *e = f(*e);
        }
    }

    /// Guest mappings borrowing the page.
    pub fn share_count(&self, index: Option<u64>) -> u16 {
        self.get(index) & !PINNED
    }

    /// Whether the page is a vCPU's run page.
    pub fn pinned(&self, index: Option<u64>) -> bool {
        self.get(index) & PINNED != 0
    }

    /// One more guest mapping borrows the page. The caller checked the limit.
    pub fn share_inc(&mut self, index: Option<u64>) {
        self.update(index, |e| {
            (e & PINNED) | ((e & !PINNED).saturating_add(1) & !PINNED)
        });
    }

    /// One guest mapping fewer; returns the remaining count.
    pub fn share_dec(&mut self, index: Option<u64>) -> u16 {
        self.update(index, |e| (e & PINNED) | (e & !PINNED).saturating_sub(1));
        self.share_count(index)
    }

    /// Pin or unpin a run page.
    pub fn set_pinned(&mut self, index: Option<u64>, pinned: bool) {
        self.update(index, |e| if pinned { e | PINNED } else { e & !PINNED });
    }
}
