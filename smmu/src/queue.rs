//! Queue index arithmetic (SMMUv3 spec 3.5 "Command and Event queues"). A
//! PROD or CONS value holds the index in its low `log2` bits and a wrap
//! flag in bit `log2`; the queue is empty when both are equal and full when
//! the indices are equal but the wrap flags differ. Values read from the
//! hardware are masked first: the SMMU (or a device that rewrote its
//! registers) cannot push an index out of the queue.

/// Index arithmetic for one queue of `1 << log2` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2: u32,
}

impl QueueIndex {
    /// A queue of `1 << log2` entries (`log2` at most 19, as the
    /// architecture's LOG2SIZE fields allow).
    pub const fn new(log2: u32) -> Self {
        Self {
            log2: if log2 > 19 { 19 } else { log2 },
        }
    }
    /// Log2 of the number of entries.
    pub const fn log2(self) -> u32 {
        self.log2
    }
    /// Number of entries.
    pub const fn entries(self) -> u32 {
        1 << self.log2
    }
    /// The index and wrap bits of a raw register value.
    pub const fn clean(self, raw: u32) -> u32 {
        raw & ((2 << self.log2) - 1)
    }
    /// The slot a PROD/CONS value points at.
    pub const fn slot(self, v: u32) -> usize {
        (v & ((1 << self.log2) - 1)) as usize
    }
    /// The value after `v`: the next slot, flipping the wrap bit at the end.
    pub const fn next(self, v: u32) -> u32 {
        self.clean(v.wrapping_add(1))
    }
    /// Whether the queue holds nothing.
    pub const fn is_empty(self, prod: u32, cons: u32) -> bool {
        self.clean(prod) == self.clean(cons)
    }
    /// Whether the queue has no free slot.
    pub const fn is_full(self, prod: u32, cons: u32) -> bool {
        let (p, c) = (self.clean(prod), self.clean(cons));
        p != c && self.slot(p) == self.slot(c)
    }
    /// Entries between `cons` and `prod`.
    pub const fn used(self, prod: u32, cons: u32) -> u32 {
        self.clean(
            self.clean(prod)
                .wrapping_sub(self.clean(cons))
                .wrapping_add(2 << self.log2),
        )
    }
    /// Whether the consumer has passed the entry a producer wrote at value
    /// `target`: `cons` lies 1 to `entries` slots past it. Used for
    /// CMD_SYNC, which is complete once CONS has moved beyond its slot.
    pub const fn consumed(self, target: u32, cons: u32) -> bool {
        let ahead = self.clean(
            self.clean(cons)
                .wrapping_sub(self.clean(target))
                .wrapping_add(2 << self.log2),
        );
        ahead >= 1 && ahead <= self.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_full_and_wrap() {
        let q = QueueIndex::new(2); // 4 entries
        assert!(q.is_empty(0, 0));
        let mut p = 0;
        for _ in 0..4 {
            assert!(!q.is_full(p, 0));
            p = q.next(p);
        }
        assert_eq!(p, 0b100, "index 0, wrap set");
        assert!(q.is_full(p, 0));
        assert!(!q.is_empty(p, 0));
        assert_eq!(q.used(p, 0), 4);
        assert_eq!(q.used(q.next(p), 2), 3);
        assert!(q.is_empty(p, p));
        assert_eq!(q.next(0b111), 0, "wraps back to index 0, wrap clear");
        assert_eq!(q.slot(0b110), 2);
    }

    #[test]
    fn hostile_register_values_are_masked() {
        let q = QueueIndex::new(3);
        assert_eq!(q.clean(0xffff_ffff), 0xf);
        assert!(q.slot(0xffff_ffff) < q.entries() as usize);
        assert_eq!(QueueIndex::new(40).log2(), 19);
    }

    #[test]
    fn sync_consumed() {
        let q = QueueIndex::new(2);
        // A sync written at slot 1 (value 1): cons at 1 means not done.
        assert!(!q.consumed(1, 1));
        assert!(!q.consumed(1, 0));
        assert!(q.consumed(1, 2));
        assert!(q.consumed(1, 3));
        // Across the wrap: a sync at slot 3 (value 3), cons wrapped to 0b100.
        assert!(q.consumed(3, 0b100));
        assert!(!q.consumed(3, 3));
        // A whole queue later is still past it.
        assert!(q.consumed(1, 5));
    }
}
