//! VM_CREATE `flags` bits (ABI.md 1, "Fields"), passed in x1.

/// The VM is protected: its memory comes from GUEST_DONATE and the host
/// loses access (ABI.md 2.1).
pub const PROTECTED: u64 = 1 << 0;
/// The VM uses memory tagging (-EINVAL on hardware without MTE, checked by
/// the core, which knows the hardware).
pub const MTE: u64 = 1 << 1;
/// Every defined bit; any other set bit is -EINVAL.
pub const MASK: u64 = PROTECTED | MTE;
