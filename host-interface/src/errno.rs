//! Errors of host calls (ABI.md 3): Linux errno values, returned negated in
//! x1.

wire_enum! {
    /// A host-call error. The discriminant is the positive Linux errno; the
    /// wire form (x1) is its negation, see [`Errno::to_x1`]. ABI.md 3 says
    /// when each applies and 3.1 in which order they are checked.
    pub enum Errno: i64 {
        /// A page is not in the state the transition needs.
        EPERM = 1 => "EPERM",
        /// No such VM or vCPU; nothing mapped at that gfn.
        ENOENT = 2 => "ENOENT",
        /// Execute permission asked for a non-cacheable memory type (D4).
        ENOEXEC = 8 => "ENOEXEC",
        /// The hypervisor's pool for that VM is exhausted.
        ENOMEM = 12 => "ENOMEM",
        /// Cacheable mapping of COHERENT memory without FWB and DIC (D3).
        EFAULT = 14 => "EFAULT",
        /// The page is pinned, a share count would overflow, or a vCPU runs.
        EBUSY = 16 => "EBUSY",
        /// The gfn is already mapped.
        EEXIST = 17 => "EEXIST",
        /// Malformed arguments, a disallowed memory type, a range that leaves
        /// its class or the address space.
        EINVAL = 22 => "EINVAL",
    }
}

impl Errno {
    /// The register value of this error: `-errno` as two's complement.
    pub const fn to_x1(self) -> u64 {
        (self as i64).wrapping_neg() as u64
    }

    /// The error whose wire form is `x1`, if `x1` is one of ours.
    pub const fn from_x1(x1: u64) -> Option<Self> {
        // Two's-complement negation of the register gives the positive errno;
        // a value that is not `-errno` for a known errno maps to nothing.
        // A value above i64::MAX reads as a negative number here, which is
        // no errno either.
        Self::from_value(x1.wrapping_neg() as i64)
    }
}
