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
        count_of(self.get(index))
    }

    /// Whether the page is a vCPU's run page.
    pub fn pinned(&self, index: Option<u64>) -> bool {
        pinned_of(self.get(index))
    }

    /// One more guest mapping borrows the page. The caller checked the
    /// limit; at [`MAX_SHARE_COUNT`] the count stays there.
    pub fn share_inc(&mut self, index: Option<u64>) {
        self.update(index, |e| {
            entry(pinned_of(e), count_of(e).saturating_add(1))
        });
    }

    /// One guest mapping fewer (none stays none); returns the remaining
    /// count.
    pub fn share_dec(&mut self, index: Option<u64>) -> u16 {
        self.update(index, |e| {
            entry(pinned_of(e), count_of(e).saturating_sub(1))
        });
        self.share_count(index)
    }

    /// Pin or unpin a run page.
    pub fn set_pinned(&mut self, index: Option<u64>, pinned: bool) {
        self.update(index, |e| entry(pinned, count_of(e)));
    }
}

/// The share count held in entry `e`.
fn count_of(e: u16) -> u16 {
    e & !PINNED
}

/// The pinned flag held in entry `e`.
fn pinned_of(e: u16) -> bool {
    e & PINNED != 0
}

/// The entry of a page with these flag and count (the count capped at
/// [`MAX_SHARE_COUNT`], so it never reaches the flag's bit).
fn entry(pinned: bool, count: u16) -> u16 {
    (if pinned { PINNED } else { 0 }) + count.min(MAX_SHARE_COUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pages: usize) -> PageMeta {
        PageMeta {
            entries: alloc::vec![0; pages],
        }
    }

    #[test]
    fn bytes_are_two_per_page() {
        assert_eq!(meta(0).bytes(), 0);
        assert_eq!(meta(3).bytes(), 6);
        assert_eq!(meta(4096).bytes(), 8192);
    }

    #[test]
    fn count_and_pin_are_kept_apart() {
        let mut m = meta(4);
        let p = Some(2);
        m.share_inc(p);
        m.share_inc(p);
        assert_eq!((m.share_count(p), m.pinned(p)), (2, false));
        m.set_pinned(p, true);
        assert_eq!((m.share_count(p), m.pinned(p)), (2, true));
        assert_eq!(m.entries[2], PINNED | 2);
        assert_eq!(m.share_dec(p), 1);
        assert!(m.pinned(p));
        m.set_pinned(p, false);
        assert_eq!((m.share_count(p), m.pinned(p)), (1, false));
        assert_eq!(m.share_dec(p), 0);
        assert_eq!(m.share_dec(p), 0, "none stays none");
        // The other pages saw nothing.
        assert_eq!(m.entries, [0, 0, 0, 0]);
        m.set_pinned(Some(0), true);
        assert_eq!((m.share_count(Some(0)), m.pinned(Some(0))), (0, true));
        assert_eq!(m.share_count(Some(1)), 0);
        assert!(!m.pinned(Some(1)));
    }

    #[test]
    fn the_count_stops_at_its_limit() {
        let mut m = meta(1);
        let p = Some(0);
        m.entries[0] = MAX_SHARE_COUNT - 1;
        m.share_inc(p);
        assert_eq!(m.share_count(p), MAX_SHARE_COUNT);
        m.share_inc(p);
        assert_eq!((m.share_count(p), m.pinned(p)), (MAX_SHARE_COUNT, false));
        m.set_pinned(p, true);
        m.share_inc(p);
        assert_eq!((m.share_count(p), m.pinned(p)), (MAX_SHARE_COUNT, true));
        assert_eq!(m.share_dec(p), MAX_SHARE_COUNT - 1);
        assert!(m.pinned(p));
    }

    #[test]
    fn untracked_pages_read_zero_and_take_no_update() {
        let mut m = meta(2);
        for p in [None, Some(2), Some(u64::MAX)] {
            m.share_inc(p);
            m.set_pinned(p, true);
            assert_eq!(m.share_count(p), 0);
            assert!(!m.pinned(p));
            assert_eq!(m.share_dec(p), 0);
        }
        assert_eq!(m.entries, [0, 0]);
    }
}
