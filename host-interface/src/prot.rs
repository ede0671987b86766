//! Access permissions (`prot`) and memory types (`memtype`) of guest
//! mappings (ABI.md 1, "Fields"): the x5 register of GUEST_SHARE,
//! GUEST_DONATE and GUEST_MAP_DEVICE.

/// Bit 0: read.
pub const R: u64 = 1 << 0;
/// Bit 1: write.
pub const W: u64 = 1 << 1;
/// Bit 2: execute.
pub const X: u64 = 1 << 2;
/// Every defined `prot` bit.
pub const MASK: u64 = R | W | X;

/// Where GUEST_MAP_DEVICE carries the memory type in x5: bits `[9:8]`.
pub const MEMTYPE_SHIFT: u32 = 8;
/// Mask of the memory-type field in GUEST_MAP_DEVICE's x5.
pub const MEMTYPE_MASK: u64 = 0b11 << MEMTYPE_SHIFT;

/// A valid `prot`: always readable (ABI.md: no R is -EINVAL), optionally
/// writable and executable. Built only through [`Prot::from_bits`],
/// [`Prot::new`] or the constants, so it cannot hold an invalid value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prot {
    w: bool,
    x: bool,
}

impl Prot {
    /// Read only.
    pub const R: Prot = Prot::new(false, false);
    /// Read and write.
    pub const RW: Prot = Prot::new(true, false);
    /// Read and execute.
    pub const RX: Prot = Prot::new(false, true);
    /// Read, write and execute.
    pub const RWX: Prot = Prot::new(true, true);

    /// A readable permission, writable when `write`, executable when `exec`.
    pub const fn new(write: bool, exec: bool) -> Prot {
        Prot { w: write, x: exec }
    }

    /// Decodes `prot` bits: `None` when R is missing or any bit outside
    /// [`MASK`] is set.
    pub const fn from_bits(bits: u64) -> Option<Prot> {
        if bits & !MASK != 0 || bits & R == 0 {
            return None;
        }
        Some(Prot::new(bits & W != 0, bits & X != 0))
    }

    /// The wire bits.
    pub const fn bits(self) -> u64 {
        let mut bits = R;
        if self.w {
            bits |= W;
        }
        if self.x {
            bits |= X;
        }
        bits
    }

    /// Readable: always true for a valid `prot`.
    pub const fn r(self) -> bool {
        true
    }

    /// Writable.
    pub const fn w(self) -> bool {
        self.w
    }

    /// Executable.
    pub const fn x(self) -> bool {
        self.x
    }
}

wire_enum! {
    /// The memory type GUEST_MAP_DEVICE asks for (x5 bits `[9:8]`). Whether it
    /// is legal for the page is the core's decision (RULES.md, D1-D8).
    pub enum MemType: u64 {
        /// Device-nGnRE.
        Device = 0 => "DEVICE",
        /// Normal, non-cacheable.
        NormalNc = 1 => "NORMAL_NC",
        /// Normal, write-back cacheable.
        NormalWb = 2 => "NORMAL_WB",
    }
}

impl MemType {
    /// Whether the type is cacheable (only [`MemType::NormalWb`]).
    pub const fn is_cacheable(self) -> bool {
        matches!(self, MemType::NormalWb)
    }

    /// The memory-type field as it sits in GUEST_MAP_DEVICE's x5.
    pub const fn to_x5_bits(self) -> u64 {
        self.value() << MEMTYPE_SHIFT
    }
}

/// Splits GUEST_MAP_DEVICE's x5 into `prot` and memory type; `None` for
/// memtype 3, a bad `prot`, or any other set bit.
pub const fn decode_device_prot(x5: u64) -> Option<(Prot, MemType)> {
    let memtype = match MemType::from_value((x5 & MEMTYPE_MASK) >> MEMTYPE_SHIFT) {
        Some(memtype) => memtype,
        None => return None,
    };
    match Prot::from_bits(x5 & !MEMTYPE_MASK) {
        Some(prot) => Some((prot, memtype)),
        None => None,
    }
}

/// GUEST_MAP_DEVICE's x5 for `prot` and `memtype`.
pub const fn encode_device_prot(prot: Prot, memtype: MemType) -> u64 {
    prot.bits() | memtype.to_x5_bits()
}
