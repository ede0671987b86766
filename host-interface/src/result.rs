//! What a host call returns (ABI.md 1, "Return convention"): x0..x4.

use crate::{DecodeError, Errno};

/// The registers x0..x4 a host call returns. x0 = 0 for a known call, -1
/// (SMCCC NOT_SUPPORTED) for an unknown one; x1 = 0 or `-errno`; x2..x4 the
/// call's outputs, 0 where it has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostResult {
    /// x0..x4.
    pub regs: [u64; 5],
}

impl HostResult {
    /// Success with outputs x2..x4.
    pub const fn ok(x2: u64, x3: u64, x4: u64) -> Self {
        HostResult {
            regs: [0, 0, x2, x3, x4],
        }
    }

    /// Failure with `error` in x1.
    pub const fn err(error: Errno) -> Self {
        HostResult {
            regs: [0, error.to_x1(), 0, 0, 0],
        }
    }

    /// Unknown function ID: x0 = -1, everything else 0.
    pub const fn not_supported() -> Self {
        HostResult {
            regs: [u64::MAX, 0, 0, 0, 0],
        }
    }

    /// The result for registers that did not decode: NOT_SUPPORTED or
    /// -EINVAL.
    pub const fn from_decode_error(error: DecodeError) -> Self {
        match error {
            DecodeError::NotSupported => Self::not_supported(),
            DecodeError::Invalid => Self::err(Errno::EINVAL),
        }
    }

    /// Whether the call was known and succeeded.
    pub const fn is_ok(&self) -> bool {
        matches!(self.regs, [0, 0, ..])
    }

    /// Whether the function ID was unknown.
    pub const fn is_not_supported(&self) -> bool {
        matches!(self.regs, [u64::MAX, ..])
    }

    /// The error of a known call that failed; `None` on success, on
    /// NOT_SUPPORTED, or when x1 is not a known errno.
    pub const fn errno(&self) -> Option<Errno> {
        match self.regs {
            [0, x1, ..] => Errno::from_x1(x1),
            _ => None,
        }
    }

    /// How many of x0..x4 the call `function_id` writes back to the caller
    /// (ABI.md, top): x0 only for an unknown ID; x0..x4 for the calls whose
    /// row names an x4 output (HYP_FEATURES, PAGE_QUERY); x0..x3 for every
    /// other call. Registers beyond these keep the caller's values (SMCCC).
    pub fn written(&self, function_id: u64) -> usize {
        if self.is_not_supported() {
            1
        } else if function_id == u64::from(crate::HostCallId::HypFeatures.id())
            || function_id == u64::from(crate::HostCallId::PageQuery.id())
        {
            5
        } else {
            4
        }
    }

    /// Write the result into the caller's registers `x` (x0, x1, ...),
    /// only those [`Self::written`] names.
    pub fn write_back(&self, function_id: u64, x: &mut [u64]) {
        let n = self.written(function_id).min(x.len());
        x[..n].copy_from_slice(&self.regs[..n]);
    }

    /// The outputs x2..x4.
    pub const fn outputs(&self) -> [u64; 3] {
        let [_, _, x2, x3, x4] = self.regs;
        [x2, x3, x4]
    }
}

impl From<DecodeError> for HostResult {
    fn from(error: DecodeError) -> Self {
        Self::from_decode_error(error)
    }
}

impl From<Errno> for HostResult {
    fn from(error: Errno) -> Self {
        Self::err(error)
    }
}
