//! Stream table entries (SMMUv3 spec 5.2 "Stream Table Entry"): 64 bytes,
//! eight little-endian doublewords. The hypervisor writes only two kinds:
//! abort (every stream it has not configured) and stage-2 translation with
//! stage 1 bypassed (Config = 0b110), so no host-controlled context
//! descriptor is ever read.

/// Doublewords in one STE.
pub const STE_WORDS: usize = 8;

/// STE.V.
const V: u64 = 1;
/// STE.Config (bits \[3:1\]): abort.
const CONFIG_ABORT: u64 = 0b000 << 1;
/// STE.Config: stage 1 bypass, stage 2 translate.
const CONFIG_S2: u64 = 0b110 << 1;

/// What a stage-2 STE points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Config {
    /// VMID tagging the stream's TLB entries.
    pub vmid: u16,
    /// Input (IPA) size in bits: S2T0SZ = 64 - ipa_bits.
    pub ipa_bits: u32,
    /// Start level encoding, as VTCR_EL2.SL0 for a 4 KiB granule.
    pub sl0: u64,
    /// Output size encoding (S2PS), as VTCR_EL2.PS.
    pub ps: u64,
    /// Physical address of the root table (aligned to its size).
    pub root_pa: u64,
}

/// An STE that aborts every transaction of its stream, without recording an
/// event (V = 1, Config = abort).
pub const fn abort() -> [u64; STE_WORDS] {
    [V | CONFIG_ABORT, 0, 0, 0, 0, 0, 0, 0]
}

/// An STE that translates through the stage-2 tables of `c` and records
/// its faults in the event queue (S2R).
pub fn stage2(c: &Stage2Config) -> [u64; STE_WORDS] {
    let dw0 = V | CONFIG_S2;
    // SHCFG = 0b01: use the incoming shareability (stage 1 is bypassed).
    let dw1 = 0b01 << 44;
    let dw2 = u64::from(c.vmid)
        | ((64 - u64::from(c.ipa_bits)) & 0x3f) << 32 // S2T0SZ
        | (c.sl0 & 3) << 38 // S2SL0
        | 0b01 << 40 // S2IR0: write-back, read/write-allocate
        | 0b01 << 42 // S2OR0
        | 0b11 << 44 // S2SH0: inner shareable
        // S2TG = 0b00: 4 KiB
        | (c.ps & 7) << 48 // S2PS
        | 1 << 51 // S2AA64
        // S2ENDI = 0 little-endian, S2AFFD = 0 (the tables set AF),
        // S2PTW = 0, S2HD = S2HA = 0, S2S = 0 (terminate, no stall)
        | 1 << 58; // S2R: record faults
    let dw3 = c.root_pa & (((1 << 52) - 1) & !0xf); // S2TTB[51:4]
    [dw0, dw1, dw2, dw3, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_is_valid_and_aborts() {
        let s = abort();
        assert_eq!(s[0] & 1, 1);
        assert_eq!((s[0] >> 1) & 7, 0);
        assert!(s[1..].iter().all(|&w| w == 0));
    }

    #[test]
    fn stage2_fields() {
        let s = stage2(&Stage2Config {
            vmid: 0x1234,
            ipa_bits: 40,
            sl0: 0b01,
            ps: 4,
            root_pa: 0x4380_2000,
        });
        assert_eq!(s[0] & 0xf, 0b1101);
        assert_eq!(s[2] & 0xffff, 0x1234);
        assert_eq!((s[2] >> 32) & 0x3f, 24);
        assert_eq!((s[2] >> 38) & 3, 1);
        assert_eq!((s[2] >> 46) & 3, 0, "4 KiB granule");
        assert_eq!((s[2] >> 48) & 7, 4);
        assert_eq!((s[2] >> 51) & 1, 1, "AArch64 tables");
        assert_eq!((s[2] >> 58) & 1, 1, "faults recorded");
        assert_eq!((s[2] >> 55) & 3, 0, "no hardware AF/dirty updates");
        assert_eq!((s[2] >> 57) & 1, 0, "no stalls");
        assert_eq!(s[3], 0x4380_2000);
        assert!(s[4..].iter().all(|&w| w == 0));
    }
}
