//! Where a stage-2 walk starts: the start level and the number of
//! concatenated root tables (Arm ARM D8.2.x "Concatenated translation tables
//! at the initial lookup level", VTCR_EL2.SL0; 4 KiB granule, no LPA2).
//!
//! The architecture's constraints (pseudocode `AArch64.S2InvalidSL` and
//! `AArch64.S2InconsistentSL`, which QEMU enforces):
//!
//! - starting at level 0 is invalid when PAMax (ID_AA64MMFR0_EL1.PARange) is
//!   below 44 bits;
//! - with start level `L`, the IPA size must exceed what a single table at
//!   `L` resolves by 1 to 4 bits (`ipa_bits - (12 + 9 * (4 - L))` in 1..=13
//!   counting the level's own 9 bits), i.e. at most 16 tables of level `L`
//!   are concatenated. Level 1: 31..=43 bits, 2^(ipa_bits - 39) tables above
//!   39 bits. Level 0: 40..=48 bits, a single table.

use crate::desc::PAGE_SIZE;

/// Most root tables the architecture lets a stage-2 concatenate.
pub const MAX_ROOT_PAGES: usize = 16;

/// Smallest PAMax (bits) with which a stage-2 may start at level 0.
const LEVEL0_MIN_PA_BITS: u32 = 44;

/// IPA bits a single level-1 table resolves (512 x 1 GiB).
const LEVEL1_TABLE_BITS: u32 = 39;

/// Start level and concatenated root tables of a stage-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootGeometry {
    /// Initial lookup level (0 or 1).
    pub start_level: u8,
    /// Number of physically contiguous root tables (1, 2, 4, 8 or 16),
    /// concatenated into one root of `root_pages` pages.
    pub root_pages: usize,
}

impl RootGeometry {
    /// VTCR_EL2.SL0 encoding for this start level (4 KiB granule: level 0 ->
    /// 0b10, 1 -> 0b01, 2 -> 0b00).
    pub fn vtcr_sl0(&self) -> u64 {
        match self.start_level {
            0 => 0b10,
            1 => 0b01,
            _ => 0b00,
        }
    }

    /// Required alignment of the root in bytes (`root_pages * 4096`): the
    /// concatenated root must be aligned to its own size.
    pub fn root_align(&self) -> u64 {
        self.root_pages as u64 * PAGE_SIZE
    }
}

/// The IPA size a [`Stage2`](crate::Stage2) of `ipa_bits` really gets on a
/// CPU with `pa_bits`: clamped into 32..=48, and to at most 43 when level 0
/// is not allowed (`pa_bits < 44`; 16 concatenated level-1 tables is the
/// most the architecture allows). An IPA space wider than PAMax faults
/// anyway (CONSTRAINED UNPREDICTABLE; QEMU faults), so the second clamp only
/// matters for a misconfigured caller.
pub(crate) fn effective_ipa_bits(ipa_bits: u32, pa_bits: u32) -> u32 {
    let ipa_bits = ipa_bits.clamp(32, 48);
    if pa_bits < LEVEL0_MIN_PA_BITS {
        ipa_bits.min(LEVEL1_TABLE_BITS + MAX_ROOT_PAGES.trailing_zeros())
    } else {
        ipa_bits
    }
}

/// Start level and number of concatenated root pages for a stage-2 of
/// `ipa_bits` on a CPU with `pa_bits`.
///
/// Up to 39 bits: level 1, one table. Above: level 0 (one table) when PAMax
/// allows it (`pa_bits >= 44`), else level 1 with 2^(ipa_bits - 39)
/// concatenated tables (40 -> 2, 41 -> 4, 42 -> 8; 43 -> 16). `ipa_bits` is
/// first clamped as [`Stage2::new`](crate::Stage2::new) does (32..=48; at
/// most 43 without level 0).
pub fn stage2_root_geometry(ipa_bits: u32, pa_bits: u32) -> RootGeometry {
    let ipa_bits = effective_ipa_bits(ipa_bits, pa_bits);
    if ipa_bits <= LEVEL1_TABLE_BITS {
        RootGeometry {
            start_level: 1,
            root_pages: 1,
        }
    } else if pa_bits >= LEVEL0_MIN_PA_BITS {
        RootGeometry {
            start_level: 0,
            root_pages: 1,
        }
    } else {
        RootGeometry {
            start_level: 1,
            root_pages: 1 << (ipa_bits - LEVEL1_TABLE_BITS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_is_architecturally_valid() {
        for pa in [32, 36, 40, 42, 44, 48, 52] {
            for ipa in 0..=64 {
                let g = stage2_root_geometry(ipa, pa);
                let bits = effective_ipa_bits(ipa, pa);
                assert!(g.start_level <= 1);
                // S2InvalidSL.
                assert!(g.start_level > 0 || pa >= 44, "ipa {ipa} pa {pa}");
                // S2InconsistentSL: 1..=4 bits above one table, at most 16.
                let one_table = 12 + 9 * (4 - u32::from(g.start_level));
                let extra = bits as i64 - one_table as i64 + 9;
                assert!((1..=13).contains(&extra), "ipa {ipa} pa {pa}");
                // Concatenation exactly covers the IPA space.
                let covered = g.root_pages as u64 * (1u64 << one_table);
                assert!(covered >= 1 << bits);
                assert!(g.root_pages == 1 || covered == 1 << bits);
                assert!(g.root_pages.is_power_of_two() && g.root_pages <= MAX_ROOT_PAGES);
                assert_eq!(g.root_align(), g.root_pages as u64 * 4096);
            }
        }
    }

    #[test]
    fn the_ipa_space_is_clamped_to_43_bits_only_below_44_pa_bits() {
        // From 44 PA bits level 0 is allowed: the IPA size stays.
        assert_eq!(effective_ipa_bits(48, 44), 48);
        assert_eq!(effective_ipa_bits(44, 44), 44);
        // Below, 16 concatenated level-1 tables reach 43 bits at most.
        assert_eq!(effective_ipa_bits(48, 43), 43);
        assert_eq!(effective_ipa_bits(40, 40), 40);
        // Always within 32..=48.
        assert_eq!(effective_ipa_bits(20, 48), 32);
        assert_eq!(effective_ipa_bits(60, 52), 48);
    }
}
