//! Where the EL2 image keeps its CPUs' stacks: sized at boot from the
//! device tree's CPU count, in the hypervisor's own memory between the
//! image and the heap, so a 4-CPU board pays for 4 stacks, not for the
//! limit. CPU 0 boots on a stack inside the image; CPUs 1.. get one slot
//! each here: an unmapped guard page, then the stack above it, so an
//! overflow faults instead of running into the neighbour.
//!
//! Plain arithmetic, tested on the development machine; the image maps the
//! stacks ([`CpuArea::stack`]) and leaves the guards unmapped.

/// Most CPUs the image takes. What limits it is the room between the image
/// and the heap ([`CpuArea::plan`] checks it): about 16 MiB less the
/// image, 36 KiB per CPU, a little over 400 CPUs; 256 keeps a margin.
pub const MAX_CPUS: usize = 256;
/// Usable stack per CPU.
pub const STACK_SIZE: u64 = 32 * 1024;
/// The unmapped page below each stack.
pub const GUARD_SIZE: u64 = 4096;
/// One CPU's share of the area: guard page, then stack.
pub const SLOT_SIZE: u64 = STACK_SIZE + GUARD_SIZE;

/// Why the CPUs of a device tree do not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuAreaError {
    /// No CPU at all.
    NoCpus,
    /// More than [`MAX_CPUS`].
    TooMany,
    /// The stacks do not fit in the room given.
    NoRoom,
}

impl CpuAreaError {
    /// The boot error the image prints.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoCpus => "no CPU in the device tree",
            Self::TooMany => "more CPUs in the device tree than the hypervisor supports (256)",
            Self::NoRoom => "no room for the CPUs' stacks between the image and the heap",
        }
    }
}

/// The stacks of CPUs 1..cpus, one [`SLOT_SIZE`] slot each from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuArea {
    start: u64,
    cpus: usize,
}

impl CpuArea {
    /// Place the stacks of `cpus` CPUs (the boot CPU's is elsewhere) in
    /// `[start, end)`, from `start` rounded up to a page.
    pub fn plan(cpus: usize, start: u64, end: u64) -> Result<Self, CpuAreaError> {
        if cpus == 0 {
            return Err(CpuAreaError::NoCpus);
        }
        if cpus > MAX_CPUS {
            return Err(CpuAreaError::TooMany);
        }
        let start = start
            .checked_next_multiple_of(GUARD_SIZE)
            .ok_or(CpuAreaError::NoRoom)?;
        let need = (cpus as u64 - 1) * SLOT_SIZE;
        match start.checked_add(need) {
            Some(e) if e <= end => Ok(Self { start, cpus }),
            _ => Err(CpuAreaError::NoRoom),
        }
    }

    /// Number of CPUs.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// What `secondary_entry` computes a stack top from: CPU `i`'s stack
    /// (1 <= i < cpus) ends at `stacks_base() + i * SLOT_SIZE`.
    pub fn stacks_base(&self) -> u64 {
        self.start
    }

    /// First byte after the area.
    pub fn end(&self) -> u64 {
        self.start + (self.cpus as u64 - 1) * SLOT_SIZE
    }

    /// CPU `i`'s guard page, `[lo, hi)`; `None` for CPU 0 and beyond the
    /// count.
    pub fn guard(&self, i: usize) -> Option<(u64, u64)> {
        let lo = self.slot(i)?;
        Some((lo, lo + GUARD_SIZE))
    }

    /// CPU `i`'s stack, `[lo, hi)` (the stack grows down from `hi`);
    /// `None` for CPU 0 and beyond the count.
    pub fn stack(&self, i: usize) -> Option<(u64, u64)> {
        let lo = self.slot(i)?;
        Some((lo + GUARD_SIZE, lo + SLOT_SIZE))
    }

    fn slot(&self, i: usize) -> Option<u64> {
        (1..self.cpus)
            .contains(&i)
            .then(|| self.start + (i as u64 - 1) * SLOT_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_with_a_guard_below_each_stack() {
        let a = CpuArea::plan(4, 0x4020_0123, 0x4100_0000).unwrap();
        assert_eq!(a.stacks_base(), 0x4020_1000);
        assert_eq!((a.stack(0), a.guard(0)), (None, None));
        assert_eq!(a.guard(1), Some((0x4020_1000, 0x4020_2000)));
        assert_eq!(a.stack(1), Some((0x4020_2000, 0x4020_a000)));
        assert_eq!(a.guard(2), Some((0x4020_a000, 0x4020_b000)));
        for i in 1..4 {
            let (lo, hi) = a.stack(i).unwrap();
            // The top secondary_entry computes, and the guard right below.
            assert_eq!(hi, a.stacks_base() + i as u64 * SLOT_SIZE);
            assert_eq!(hi - lo, STACK_SIZE);
            assert_eq!(a.guard(i).unwrap().1, lo);
        }
        assert_eq!(a.stack(4), None);
        assert_eq!(a.cpus(), 4);
        assert_eq!(a.end(), a.stack(3).unwrap().1);
        // Three stacks for four CPUs, not MAX_CPUS.
        assert_eq!(a.end() - a.stacks_base(), 3 * SLOT_SIZE);
    }

    #[test]
    fn one_cpu_needs_no_room() {
        let a = CpuArea::plan(1, 0x5000, 0x5000).unwrap();
        assert_eq!((a.end(), a.stack(1)), (0x5000, None));
    }

    #[test]
    fn the_limit_and_the_room_are_checked() {
        let room = (MAX_CPUS as u64 - 1) * SLOT_SIZE;
        assert!(CpuArea::plan(MAX_CPUS, 0, room).is_ok());
        assert_eq!(
            CpuArea::plan(MAX_CPUS, 0, room - 1),
            Err(CpuAreaError::NoRoom)
        );
        assert_eq!(
            CpuArea::plan(MAX_CPUS + 1, 0, u64::MAX),
            Err(CpuAreaError::TooMany)
        );
        assert_eq!(CpuArea::plan(0, 0, u64::MAX), Err(CpuAreaError::NoCpus));
        assert_eq!(
            CpuArea::plan(2, u64::MAX - 10, u64::MAX),
            Err(CpuAreaError::NoRoom)
        );
        assert_eq!(
            CpuArea::plan(3, u64::MAX - 0x1fff, u64::MAX),
            Err(CpuAreaError::NoRoom)
        );
        // 64 CPUs fit in what the QEMU image leaves before its heap.
        assert!(CpuArea::plan(64, 0x4030_0000, 0x4100_0000).is_ok());
        assert!(CpuAreaError::TooMany.message().contains("256"));
    }
}
