//! Owner annotations stored in invalid entries of the host's stage-2.
//!
//! The host stage-2 is an identity map filled lazily on host faults, so an
//! invalid entry with no annotation means "host owned, not faulted in yet".
//! A page the host may not touch carries its owner in the invalid descriptor
//! (pagetables stores it in bits [11:2]); the host fault handler reads it and
//! refuses the access.

/// Who owns a page the host has no mapping of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAnnotation {
    /// Plain unmapped: host owned, mapped on first touch.
    None,
    /// Owned by the hypervisor (VM metadata and stage-2 pool pages).
    Hyp,
    /// Owned by nobody: released by VM_DESTROY, waiting for RECLAIM.
    Reclaimable,
    /// Owned by the guest in VM slot `n`.
    Guest(usize),
}

const HYP: u16 = 1;
const RECLAIMABLE: u16 = 2;
const GUEST_BASE: u16 = 3;

impl HostAnnotation {
    /// Encoding for the invalid descriptor.
    pub fn encode(self) -> u16 {
        match self {
            Self::None => 0,
            Self::Hyp => HYP,
            Self::Reclaimable => RECLAIMABLE,
            // Slots are bounded by MAX_VMS, far below the 10-bit field.
            Self::Guest(slot) => GUEST_BASE + slot as u16,
        }
    }

    /// Decoding of an invalid descriptor's annotation.
    pub fn decode(bits: u16) -> Self {
        match bits {
            0 => Self::None,
            HYP => Self::Hyp,
            RECLAIMABLE => Self::Reclaimable,
            n => Self::Guest(usize::from(n - GUEST_BASE)),
        }
    }
}

/// Annotation of a guest stage-2 invalid entry registered through MMIO_GUARD.
pub const GUEST_MMIO_GUARD: u16 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for a in [
            HostAnnotation::None,
            HostAnnotation::Hyp,
            HostAnnotation::Reclaimable,
            HostAnnotation::Guest(0),
            HostAnnotation::Guest(31),
        ] {
            assert_eq!(HostAnnotation::decode(a.encode()), a);
        }
    }
}
