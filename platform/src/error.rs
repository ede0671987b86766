//! Errors of the platform description: device tree, boot manifest and
//! region list. Each names where the bad input is (a manifest line, a region
//! index, a memory range) so a boot failure can be reported precisely.

use core::fmt;

/// What is wrong with a flattened device tree blob (DTSpec v0.4, chapter 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// The blob is shorter than its header, or than the header's `totalsize`.
    Truncated,
    /// The header does not start with the FDT magic 0xd00dfeed.
    BadMagic,
    /// The header's version is older than 17, or its `last_comp_version`
    /// is newer than 17.
    UnsupportedVersion,
    /// The structure or strings block lies outside `totalsize` or is not
    /// 4-byte aligned.
    BadLayout,
    /// The structure block is ill-formed at this offset into it: unknown
    /// token, unbalanced nodes, a property outside any node, data running
    /// past the block, or no FDT_END.
    BadStructure {
        /// Byte offset into the structure block.
        offset: usize,
    },
    /// A node or property name is not NUL-terminated inside its block.
    BadString {
        /// Byte offset into the structure block of the token naming it.
        offset: usize,
    },
}

/// Where a piece of bad platform input came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the boot manifest (1-based).
    Manifest {
        /// Line number, counting from 1.
        line: usize,
    },
    /// An entry of the list given to [`crate::Platform::from_regions`].
    Region {
        /// Index into that list.
        index: usize,
    },
    /// A `reg` range of a device tree `/memory` node.
    Memory {
        /// The range's base address in bytes.
        base: u64,
    },
    /// An entry of the `hyp_reserved` list given to [`crate::Platform::new`].
    HypReserved {
        /// Index into that list.
        index: usize,
    },
}

/// Why the platform description could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The device tree blob itself is malformed.
    BadFdt(FdtError),
    /// The device tree has no usable `/memory` node (none with
    /// `device_type = "memory"`, or only empty or disabled ones).
    NoMemoryNode,
    /// The root's `#address-cells` or `#size-cells` is malformed or not 1 or 2.
    BadCells,
    /// A memory node has no `reg`, or its length is not a whole number of
    /// (address, size) pairs.
    BadMemoryReg,
    /// Once the hypervisor's and COHERENT carve-outs are taken out, no host
    /// RAM is left.
    NoHostRam,
    /// A manifest line does not have the form `keyword base size`.
    ManifestSyntax {
        /// Line number, counting from 1.
        line: usize,
    },
    /// A manifest line starts with a keyword that is not `coherent`, `mmio`,
    /// `mmio-uc` or `hyp`.
    UnknownKeyword {
        /// Line number, counting from 1.
        line: usize,
    },
    /// A manifest number is malformed or does not fit in 64 bits.
    BadNumber {
        /// Line number, counting from 1.
        line: usize,
    },
    /// A range has size zero.
    Empty {
        /// Where the range came from.
        at: Origin,
    },
    /// A manifest range's base or size is not a multiple of the page size.
    Unaligned {
        /// Where the range came from.
        at: Origin,
    },
    /// A range overlaps another one it may not overlap.
    Overlap {
        /// Where the range came from (for two manifest lines, the later one).
        at: Origin,
    },
    /// A range ends beyond the physical address space (or wraps around).
    OutsidePaSpace {
        /// Where the range came from.
        at: Origin,
    },
    /// The regions given to [`crate::Platform::from_regions`] are not sorted
    /// by base.
    Unsorted {
        /// Index of the first region that starts before its predecessor.
        index: usize,
    },
    /// A region's flags contradict its class: `uncached_ok` on a non-MMIO
    /// region, a HYP region marked assignable, or a RAM or COHERENT region
    /// not marked assignable.
    BadRegionFlags {
        /// Index of the region.
        index: usize,
    },
    /// The physical address size is outside 32..=48 bits.
    BadPaBits(u32),
    /// No usable GICv3 (`arm,gic-v3` with distributor and redistributor
    /// `reg`) or architected timer (`arm,armv8-timer` with four PPIs) node.
    NoGic,
}

impl PlatformError {
    /// The manifest line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::ManifestSyntax { line }
            | Self::UnknownKeyword { line }
            | Self::BadNumber { line } => Some(*line),
            Self::Empty { at }
            | Self::Unaligned { at }
            | Self::Overlap { at }
            | Self::OutsidePaSpace { at } => match at {
                Origin::Manifest { line } => Some(*line),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<FdtError> for PlatformError {
    fn from(e: FdtError) -> Self {
        Self::BadFdt(e)
    }
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "device tree blob is truncated"),
            Self::BadMagic => write!(f, "not a device tree blob (bad magic)"),
            Self::UnsupportedVersion => write!(f, "unsupported device tree version"),
            Self::BadLayout => write!(f, "device tree blocks lie outside the blob"),
            Self::BadStructure { offset } => {
                write!(f, "ill-formed device tree structure at offset {offset:#x}")
            }
            Self::BadString { offset } => {
                write!(f, "unterminated device tree name at offset {offset:#x}")
            }
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest { line } => write!(f, "manifest line {line}"),
            Self::Region { index } => write!(f, "region {index}"),
            Self::Memory { base } => write!(f, "memory range at {base:#x}"),
            Self::HypReserved { index } => write!(f, "hypervisor range {index}"),
        }
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFdt(e) => write!(f, "{e}"),
            Self::NoMemoryNode => write!(f, "device tree has no usable /memory node"),
            Self::BadCells => write!(f, "unsupported #address-cells or #size-cells"),
            Self::BadMemoryReg => write!(f, "malformed reg in a /memory node"),
            Self::NoHostRam => write!(f, "no host RAM left after carve-outs"),
            Self::ManifestSyntax { line } => {
                write!(f, "manifest line {line}: expected `keyword base size`")
            }
            Self::UnknownKeyword { line } => write!(f, "manifest line {line}: unknown keyword"),
            Self::BadNumber { line } => write!(f, "manifest line {line}: bad number"),
            Self::Empty { at } => write!(f, "{at}: empty range"),
            Self::Unaligned { at } => write!(f, "{at}: not page aligned"),
            Self::Overlap { at } => write!(f, "{at}: overlaps another range"),
            Self::OutsidePaSpace { at } => write!(f, "{at}: outside the physical address space"),
            Self::Unsorted { index } => write!(f, "region {index}: regions not sorted"),
            Self::NoGic => write!(
                f,
                "device tree has no usable GICv3 or architected timer node"
            ),
            Self::BadRegionFlags { index } => {
                write!(f, "region {index}: flags contradict its class")
            }
            Self::BadPaBits(bits) => write!(f, "unsupported physical address size {bits}"),
        }
    }
}
