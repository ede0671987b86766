//! What a guest reads in the CPU's ID registers (HCR_EL2.TID3 traps them).
//!
//! A feature whose state the world switch does not carry between worlds is
//! trapped for guests (RULES.md S2, S3), and a guest that believed the CPU
//! had it would die on its first use. So the guest's view hides it:
//! - SVE and SME (CPTR_EL2.TZ/TSM trap them);
//! - MTE unless the VM was created with the MTE flag (HCR_EL2.ATA clear);
//! - the activity monitors (CPTR_EL2.TAM), RAS error records
//!   (HCR_EL2.TERR), LORegions (HCR_EL2.TLOR), SCXTNUM (HCR_EL2.EnSCXT
//!   clear), the PMU (MDCR_EL2.TPM), and the registers of newer features
//!   that fine-grained traps keep from guests (ID_AA64MMFR3_EL1).
//!
//! Everything else reads as the hardware has it. Unallocated encodings of
//! the ID space read as zero, as the architecture defines them.

/// Which ID register: `CRm` and `op2` of `S3_0_C0_<CRm>_<op2>`.
pub type IdReg = (u8, u8);

/// ID_AA64PFR0_EL1.
pub const ID_AA64PFR0: IdReg = (4, 0);
/// ID_AA64PFR1_EL1.
pub const ID_AA64PFR1: IdReg = (4, 1);
/// ID_AA64ZFR0_EL1 (SVE).
pub const ID_AA64ZFR0: IdReg = (4, 4);
/// ID_AA64SMFR0_EL1 (SME).
pub const ID_AA64SMFR0: IdReg = (4, 5);
/// ID_AA64DFR0_EL1.
pub const ID_AA64DFR0: IdReg = (5, 0);
/// ID_AA64MMFR1_EL1.
pub const ID_AA64MMFR1: IdReg = (7, 1);
/// ID_AA64MMFR3_EL1.
pub const ID_AA64MMFR3: IdReg = (7, 3);

/// A 4-bit field at `shift`.
const fn field(shift: u32) -> u64 {
    0xf << shift
}

/// The 4-bit fields at `shifts`, as one mask (their union).
const fn fields(shifts: &[u32]) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < shifts.len() {
        mask |= field(shifts[i]);
        i += 1;
    }
    mask
}

/// ID_AA64PFR0_EL1's hidden fields: RAS, SVE, AMU, and CSV2 (put back
/// capped at 1).
const PFR0_HIDDEN: u64 = fields(&[28, 32, 44, 56]);
/// ID_AA64PFR1_EL1's hidden fields for a VM with MTE: SME and RAS_frac.
const PFR1_HIDDEN_MTE: u64 = fields(&[12, 24]);
/// ... and without MTE: also MTE, MTE_frac and MTEX.
const PFR1_HIDDEN: u64 = fields(&[8, 12, 24, 40, 52]);
/// ID_AA64DFR0_EL1's hidden fields: PMUVer, PMSVer, TraceBuffer, BRBE.
const DFR0_HIDDEN: u64 = fields(&[8, 32, 44, 52]);

/// Whether `(crm, op2)` is in the ID space TID3 traps: op0 3, op1 0,
/// CRn 0, CRm 1..=7.
pub fn is_id_space(op0: u64, op1: u64, crn: u64, crm: u64) -> bool {
    op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm)
}

/// The value a guest reads from ID register `reg`, given the hardware's
/// value `hw`. `mte` says the VM was created with the MTE flag.
pub fn guest_view(reg: IdReg, hw: u64, mte: bool) -> u64 {
    match reg {
        ID_AA64PFR0 => {
            // RAS [31:28], SVE [35:32] and AMU [47:44] hidden; CSV2 [59:56]
            // at most 1: SCXTNUM_ELx are trapped.
            let csv2 = ((hw >> 56) & 0xf).min(1) << 56;
            hw & !PFR0_HIDDEN | csv2
        }
        ID_AA64PFR1 => {
            // SME [27:24] and RAS_frac [15:12]; without the VM's MTE flag
            // also MTE [11:8], MTE_frac [43:40] and MTEX [55:52].
            hw & !if mte { PFR1_HIDDEN_MTE } else { PFR1_HIDDEN }
        }
        ID_AA64ZFR0 | ID_AA64SMFR0 | ID_AA64MMFR3 => 0,
        // PMUVer [11:8]: the PMU is the host's; PMSVer [35:32] (SPE),
        // TraceBuffer [47:44], BRBE [55:52]: their controls are not
        // switched.
        ID_AA64DFR0 => hw & !DFR0_HIDDEN,
        // LO [19:16]: LORegions trapped.
        ID_AA64MMFR1 => hw & !field(16),
        _ => hw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU max's values (10.0), roughly: every field set.
    const ALL: u64 = u64::MAX;

    #[test]
    fn hidden_fields() {
        let pfr0 = guest_view(ID_AA64PFR0, 0x1201_1011_1111_2222, false);
        assert_eq!((pfr0 >> 32) & 0xf, 0, "SVE");
        assert_eq!((pfr0 >> 44) & 0xf, 0, "AMU");
        assert_eq!((pfr0 >> 28) & 0xf, 0, "RAS");
        assert_eq!((pfr0 >> 56) & 0xf, 1, "CSV2 capped at 1");
        assert_eq!(pfr0 & 0xffff, 0x2222, "EL0..EL3 kept");
        assert_eq!(guest_view(ID_AA64PFR0, 0, false), 0, "CSV2 0 stays 0");

        let pfr1 = guest_view(ID_AA64PFR1, ALL, false);
        assert_eq!(pfr1, ALL & !0x00f0_0f00_0f00_ff00, "SME, RAS_frac, MTE*");
        let pfr1 = guest_view(ID_AA64PFR1, ALL, true);
        assert_eq!(pfr1, ALL & !0x0f00_f000, "SME, RAS_frac; MTE kept");
        let pfr1 = guest_view(ID_AA64PFR1, 0x0300, true);
        assert_eq!((pfr1 >> 8) & 0xf, 3, "MTE with the flag");

        assert_eq!(guest_view(ID_AA64ZFR0, ALL, true), 0);
        assert_eq!(guest_view(ID_AA64SMFR0, ALL, true), 0);
        assert_eq!(guest_view(ID_AA64MMFR3, ALL, true), 0);
        let dfr0 = guest_view(ID_AA64DFR0, ALL, true);
        assert_eq!(dfr0, ALL & !0x00f0_f00f_0000_0f00, "PMU, SPE, TRBE, BRBE");
        let mmfr1 = guest_view(ID_AA64MMFR1, ALL, true);
        assert_eq!((mmfr1 >> 16) & 0xf, 0, "LO");
        assert_eq!(mmfr1 & 0xffff, 0xffff);
        // Others as the hardware has them.
        for reg in [(6, 0), (6, 1), (7, 0), (7, 2), (1, 0), (3, 0)] {
            assert_eq!(guest_view(reg, 0x1234_5678, false), 0x1234_5678);
        }
    }

    #[test]
    fn fields_is_the_union() {
        assert_eq!(fields(&[]), 0);
        assert_eq!(fields(&[8]), 0xf00);
        assert_eq!(fields(&[8, 8]), 0xf00, "a field named twice");
        assert_eq!(fields(&[0, 60]), 0xf000_0000_0000_000f);
    }

    #[test]
    fn id_space() {
        assert!(is_id_space(3, 0, 0, 4));
        assert!(is_id_space(3, 0, 0, 1));
        assert!(is_id_space(3, 0, 0, 7));
        assert!(!is_id_space(3, 0, 0, 0), "MIDR and friends: not TID3");
        assert!(!is_id_space(3, 1, 0, 4));
        assert!(!is_id_space(3, 0, 1, 4));
        assert!(!is_id_space(2, 0, 0, 4));
    }
}
