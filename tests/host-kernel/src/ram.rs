//! Free host RAM for the bench and fuzz modes: aligned runs of pages taken
//! from the bottom or the top of the free ranges, each page at most once.

use alloc::vec::Vec;

/// Free RAM as sorted pfn ranges `[first, end)`.
pub struct RamPool {
    ranges: Vec<(u64, u64)>,
}

impl RamPool {
    /// A pool of the pages `free` (sorted pfn ranges, as
    /// [`crate::machine::free_pages`] gives them).
    pub fn new(free: &[(u64, u64)]) -> RamPool {
        RamPool {
            ranges: free.to_vec(),
        }
    }

    /// Pages left in total.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|(first, end)| end - first).sum()
    }

    /// `pages` pages whose first pfn is a multiple of `align` (a power of
    /// two), from the lowest free range that holds them, as low as possible.
    pub fn take_low(&mut self, pages: u64, align: u64) -> Option<u64> {
        let mask = align.checked_sub(1)?;
        let (i, first) = self.ranges.iter().enumerate().find_map(|(i, &(s, e))| {
            let first = s.checked_add(mask)? & !mask;
            (first.checked_add(pages)? <= e).then_some((i, first))
        })?;
        self.cut(i, first, pages);
        Some(first)
    }

    /// `pages` pages whose first pfn is a multiple of `align` (a power of
    /// two), from the highest free range that holds them, as high as
    /// possible.
    pub fn take_high(&mut self, pages: u64, align: u64) -> Option<u64> {
        let mask = align.checked_sub(1)?;
        let (i, first) = self
            .ranges
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, &(s, e))| {
                let first = e.checked_sub(pages)? & !mask;
                (first >= s).then_some((i, first))
            })?;
        self.cut(i, first, pages);
        Some(first)
    }

    /// Remove `[first, first + pages)` from range `i`, which holds it.
    fn cut(&mut self, i: usize, first: u64, pages: u64) {
        let (s, e) = self.ranges.remove(i);
        // Inserted at `i` in reverse, so `below` ends up first.
        for piece in [(first + pages, e), (s, first)] {
            if piece.0 < piece.1 {
                self.ranges.insert(i, piece);
            }
        }
    }
}
