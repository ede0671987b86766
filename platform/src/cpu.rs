//! CPU features the hypervisor's memory-type policy depends on, decoded from
//! the ID registers (Arm ARM, D23.2), and the CPU models of QEMU's `virt`
//! machine as the simulator sees them.

/// The ID registers read on each CPU at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRegs {
    /// ID_AA64MMFR0_EL1.
    pub mmfr0: u64,
    /// ID_AA64MMFR1_EL1.
    pub mmfr1: u64,
    /// ID_AA64MMFR2_EL1.
    pub mmfr2: u64,
    /// ID_AA64PFR1_EL1.
    pub pfr1: u64,
    /// CTR_EL0.
    pub ctr: u64,
}

/// HYP_FEATURES bit 0: stage-2 forced write-back (FEAT_S2FWB).
pub const FEATURE_FWB: u64 = 1 << 0;
/// HYP_FEATURES bit 1: no I-cache invalidation needed for coherence (CTR_EL0.DIC).
pub const FEATURE_DIC: u64 = 1 << 1;
/// HYP_FEATURES bit 2: no D-cache clean needed for coherence (CTR_EL0.IDC).
pub const FEATURE_IDC: u64 = 1 << 2;
/// HYP_FEATURES bit 3: MTE with tags in memory (ID_AA64PFR1_EL1.MTE >= 2).
pub const FEATURE_MTE: u64 = 1 << 3;
/// HYP_FEATURES bit 4: COHERENT memory may be mapped cacheable (FWB and DIC).
pub const FEATURE_CACHEABLE_DEVICE: u64 = 1 << 4;

/// The largest physical address size used: 48 bits (no FEAT_LPA2 tables).
pub const MAX_PA_BITS: u32 = 48;

/// A 4-bit ID register field starting at bit `shift`.
const fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

const MMFR0_PARANGE: u32 = 0;
const MMFR1_VMIDBITS: u32 = 4;
const MMFR2_FWB: u32 = 40;
const PFR1_MTE: u32 = 8;
const CTR_IDC: u32 = 28;
const CTR_DIC: u32 = 29;

/// Features of one CPU, or of a system (those every CPU has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// FEAT_S2FWB: ID_AA64MMFR2_EL1.FWB != 0.
    pub fwb: bool,
    /// CTR_EL0.DIC == 1.
    pub dic: bool,
    /// CTR_EL0.IDC == 1.
    pub idc: bool,
    /// ID_AA64PFR1_EL1.MTE >= 2 (tags in memory, not instructions only).
    pub mte: bool,
    /// Physical address size from ID_AA64MMFR0_EL1.PARange, capped at 48.
    pub pa_bits: u32,
    /// VMID size, 8 or 16, from ID_AA64MMFR1_EL1.VMIDBits.
    pub vmid_bits: u32,
}

impl CpuFeatures {
    /// Decode one CPU's ID registers.
    pub fn from_id_regs(r: &IdRegs) -> CpuFeatures {
        let pa_bits = match field(r.mmfr0, MMFR0_PARANGE) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            // 48, 52, 56 bits, or a future larger encoding.
            _ => MAX_PA_BITS,
        };
        let vmid_bits = match field(r.mmfr1, MMFR1_VMIDBITS) {
            2 => 16,
            // 0 is 8 bits; other values are reserved.
            _ => 8,
        };
        CpuFeatures {
            fwb: field(r.mmfr2, MMFR2_FWB) != 0,
            dic: (r.ctr >> CTR_DIC) & 1 == 1,
            idc: (r.ctr >> CTR_IDC) & 1 == 1,
            mte: field(r.pfr1, PFR1_MTE) >= 2,
            pa_bits,
            vmid_bits,
        }
    }

    /// The features both `self` and `other` have: a system's features are
    /// those every CPU has.
    pub fn common(&self, other: &CpuFeatures) -> CpuFeatures {
        CpuFeatures {
            fwb: self.fwb && other.fwb,
            dic: self.dic && other.dic,
            idc: self.idc && other.idc,
            mte: self.mte && other.mte,
            pa_bits: self.pa_bits.min(other.pa_bits),
            vmid_bits: self.vmid_bits.min(other.vmid_bits),
        }
    }

    /// COHERENT memory may be mapped cacheable into guests (RULES.md D3).
    pub fn cacheable_device(&self) -> bool {
        self.fwb && self.dic
    }

    /// The feature bits HYP_FEATURES returns in x2 (ABI.md).
    pub fn hyp_feature_bits(&self) -> u64 {
        let bit = |on: bool, b: u64| if on { b } else { 0 };
        bit(self.fwb, FEATURE_FWB)
            | bit(self.dic, FEATURE_DIC)
            | bit(self.idc, FEATURE_IDC)
            | bit(self.mte, FEATURE_MTE)
            | bit(self.cacheable_device(), FEATURE_CACHEABLE_DEVICE)
    }
}

/// One QEMU CPU model: the ID register values QEMU gives it.
struct QemuModel {
    name: &'static str,
    regs: IdRegs,
}

/// The CPU models of QEMU 10.0's `virt` machine (TCG) that the project runs.
///
/// Values are those QEMU sets up for each model: `target/arm/cpu64.c`
/// (`cortex-a57`, also the base of `max`) and `target/arm/tcg/cpu64.c`
/// (the others, and the `max` additions). Only the fields decoded by
/// [`CpuFeatures::from_id_regs`] are relied on. `pfr1` is the value with
/// `mte=on`; without it QEMU lowers the MTE field to 1 (instructions only,
/// no tag memory), see [`qemu_id_regs`]. The `virt` machine sizes its memory
/// map from PARange but does not change the register.
const QEMU_MODELS: &[QemuModel] = &[
    QemuModel {
        // PARange 4 (44 bits); MMFR1, MMFR2 and PFR1 left 0: 8-bit VMIDs,
        // no FWB, no MTE. CTR without DIC and IDC.
        name: "cortex-a57",
        regs: IdRegs {
            mmfr0: 0x0000_0000_0000_1124,
            mmfr1: 0,
            mmfr2: 0,
            pfr1: 0,
            ctr: 0x8444_c004,
        },
    },
    QemuModel {
        // PARange 5 (48 bits), VMID16, no FWB, no MTE, no DIC/IDC.
        name: "neoverse-n1",
        regs: IdRegs {
            mmfr0: 0x0000_0000_0010_1125,
            mmfr1: 0x0000_0000_1021_2122,
            mmfr2: 0x0000_0000_0000_1011,
            pfr1: 0x0000_0000_0000_0020,
            ctr: 0x8444_c004,
        },
    },
    QemuModel {
        // PARange 2 (40 bits), VMID16, FWB, IDC without DIC, MTE field 2.
        name: "cortex-a710",
        regs: IdRegs {
            mmfr0: 0x0000_0222_0010_1122,
            mmfr1: 0x0000_0000_1021_2122,
            mmfr2: 0x1221_0111_1010_1011,
            pfr1: 0x0000_0000_0000_0221,
            ctr: 0x0000_0004_9444_c004,
        },
    },
    QemuModel {
        // PARange 5 (48 bits), VMID16, FWB, DIC and IDC, no MTE.
        name: "neoverse-v1",
        regs: IdRegs {
            mmfr0: 0x0000_0000_0010_1125,
            mmfr1: 0x0000_0000_1021_2122,
            mmfr2: 0x0220_0111_0210_1011,
            pfr1: 0x0000_0000_0000_0020,
            ctr: 0xb444_c004,
        },
    },
    QemuModel {
        // PARange 5 (48 bits), VMID16, FWB, DIC and IDC, MTE field 2.
        name: "neoverse-n2",
        regs: IdRegs {
            mmfr0: 0x0000_0222_0010_1125,
            mmfr1: 0x0000_0000_1021_2122,
            mmfr2: 0x1221_0111_1210_1011,
            pfr1: 0x0000_0000_0000_0221,
            ctr: 0x0000_0004_b444_c004,
        },
    },
    QemuModel {
        // cortex-a57 plus QEMU's `max` additions (and the LPA2 granule
        // fields): PARange 6 (52 bits, used as 48), VMID16, FWB, DIC and
        // IDC, MTE field 3 (FEAT_MTE3).
        name: "max",
        regs: IdRegs {
            mmfr0: 0x2100_0323_1020_1126,
            mmfr1: 0x0110_1120_1031_2122,
            mmfr2: 0x1221_0111_1201_1011,
            pfr1: 0x0000_1010_0200_0321,
            ctr: 0xb444_c004,
        },
    },
];

const QEMU_MODEL_NAMES: &[&str] = &[
    "cortex-a57",
    "neoverse-n1",
    "cortex-a710",
    "neoverse-v1",
    "neoverse-n2",
    "max",
];

/// Names accepted by [`qemu_cpu`] and [`qemu_id_regs`], as given to
/// QEMU's `-cpu` (`max` is run as `max,pauth-impdef=on`).
pub fn qemu_cpu_models() -> &'static [&'static str] {
    QEMU_MODEL_NAMES
}

/// The ID registers EL2 reads on `model` under QEMU 10.0's `virt` machine;
/// `mte_on`: the machine was started with `mte=on` (tag memory present),
/// otherwise QEMU reports MTE as instructions only (field at most 1).
pub fn qemu_id_regs(model: &str, mte_on: bool) -> Option<IdRegs> {
    let mut regs = QEMU_MODELS.iter().find(|m| m.name == model)?.regs;
    if !mte_on && field(regs.pfr1, PFR1_MTE) > 1 {
        regs.pfr1 = (regs.pfr1 & !(0xf << PFR1_MTE)) | (1 << PFR1_MTE);
    }
    Some(regs)
}

/// The features of `model` under QEMU 10.0's `virt` machine, decoded from
/// [`qemu_id_regs`].
pub fn qemu_cpu(model: &str, mte_on: bool) -> Option<CpuFeatures> {
    qemu_id_regs(model, mte_on).map(|r| CpuFeatures::from_id_regs(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(fwb: bool, dic: bool, idc: bool, mte: bool, pa: u32, vmid: u32) -> CpuFeatures {
        CpuFeatures {
            fwb,
            dic,
            idc,
            mte,
            pa_bits: pa,
            vmid_bits: vmid,
        }
    }

    #[test]
    fn model_list_matches_table() {
        let names: alloc::vec::Vec<_> = QEMU_MODELS.iter().map(|m| m.name).collect();
        assert_eq!(names, qemu_cpu_models());
        assert_eq!(qemu_cpu("cortex-a53", false), None);
        assert_eq!(qemu_cpu("", true), None);
    }

    #[test]
    fn qemu_models() {
        let expect = [
            ("cortex-a57", feats(false, false, false, false, 44, 8), None),
            (
                "neoverse-n1",
                feats(false, false, false, false, 48, 16),
                None,
            ),
            (
                "cortex-a710",
                feats(true, false, true, false, 40, 16),
                Some(true),
            ),
            ("neoverse-v1", feats(true, true, true, false, 48, 16), None),
            (
                "neoverse-n2",
                feats(true, true, true, false, 48, 16),
                Some(true),
            ),
            ("max", feats(true, true, true, false, 48, 16), Some(true)),
        ];
        for (name, without_mte, mte_with_tags) in expect {
            assert_eq!(qemu_cpu(name, false), Some(without_mte), "{name}");
            let with = CpuFeatures {
                mte: mte_with_tags.unwrap_or(false),
                ..without_mte
            };
            assert_eq!(qemu_cpu(name, true), Some(with), "{name} mte=on");
        }
    }

    #[test]
    fn mte_field_without_tag_memory() {
        // QEMU without tag memory reports MTE = 1 where the model has MTE.
        for name in ["cortex-a710", "neoverse-n2", "max"] {
            let r = qemu_id_regs(name, false).unwrap();
            assert_eq!(field(r.pfr1, PFR1_MTE), 1, "{name}");
            assert!(field(qemu_id_regs(name, true).unwrap().pfr1, PFR1_MTE) >= 2);
            // Other fields are untouched.
            assert_eq!(
                r.pfr1 & !(0xf << 8),
                qemu_id_regs(name, true).unwrap().pfr1 & !(0xf << 8)
            );
        }
        for name in ["cortex-a57", "neoverse-n1", "neoverse-v1"] {
            assert_eq!(qemu_id_regs(name, false), qemu_id_regs(name, true));
        }
    }

    #[test]
    fn feature_bits() {
        let all = qemu_cpu("max", true).unwrap();
        assert_eq!(all.hyp_feature_bits(), 0x1f);
        assert!(all.cacheable_device());
        let a710 = qemu_cpu("cortex-a710", true).unwrap();
        assert_eq!(
            a710.hyp_feature_bits(),
            FEATURE_FWB | FEATURE_IDC | FEATURE_MTE
        );
        assert!(!a710.cacheable_device());
        let v1 = qemu_cpu("neoverse-v1", false).unwrap();
        assert_eq!(
            v1.hyp_feature_bits(),
            FEATURE_FWB | FEATURE_DIC | FEATURE_IDC | FEATURE_CACHEABLE_DEVICE
        );
        assert_eq!(qemu_cpu("cortex-a57", true).unwrap().hyp_feature_bits(), 0);
        // DIC without FWB is not enough for cacheable device memory.
        let dic_only = feats(false, true, true, false, 48, 16);
        assert_eq!(dic_only.hyp_feature_bits(), FEATURE_DIC | FEATURE_IDC);
    }

    #[test]
    fn common_is_the_weakest() {
        let max = qemu_cpu("max", true).unwrap();
        let a57 = qemu_cpu("cortex-a57", false).unwrap();
        assert_eq!(max.common(&a57), a57);
        assert_eq!(a57.common(&max), a57);
        assert_eq!(max.common(&max), max);
        let a710 = qemu_cpu("cortex-a710", true).unwrap();
        let v1 = qemu_cpu("neoverse-v1", false).unwrap();
        // a710 lacks DIC, v1 lacks MTE; the smaller PA size wins.
        assert_eq!(a710.common(&v1), feats(true, false, true, false, 40, 16));
        assert!(!a710.common(&v1).cacheable_device());
        let n2 = qemu_cpu("neoverse-n2", true).unwrap();
        assert_eq!(max.common(&n2), n2);
        // Commutative and associative over every pair and triple of models.
        let all: alloc::vec::Vec<_> = qemu_cpu_models()
            .iter()
            .flat_map(|m| [qemu_cpu(m, false).unwrap(), qemu_cpu(m, true).unwrap()])
            .collect();
        for a in &all {
            for b in &all {
                assert_eq!(a.common(b), b.common(a));
                for c in &all {
                    assert_eq!(a.common(b).common(c), a.common(&b.common(c)));
                }
            }
        }
    }

    #[test]
    fn decode_edges() {
        let zero = IdRegs {
            mmfr0: 0,
            mmfr1: 0,
            mmfr2: 0,
            pfr1: 0,
            ctr: 0,
        };
        assert_eq!(
            CpuFeatures::from_id_regs(&zero),
            feats(false, false, false, false, 32, 8)
        );
        let pa = |parange: u64| {
            CpuFeatures::from_id_regs(&IdRegs {
                mmfr0: 0xffff_ffff_ffff_fff0 | parange,
                ..zero
            })
            .pa_bits
        };
        let expected = [
            32, 36, 40, 42, 44, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
        ];
        for (parange, bits) in expected.into_iter().enumerate() {
            assert_eq!(pa(parange as u64), bits);
        }
        let vmid = |v: u64| {
            CpuFeatures::from_id_regs(&IdRegs {
                mmfr1: v << 4,
                ..zero
            })
            .vmid_bits
        };
        assert_eq!(vmid(0), 8);
        assert_eq!(vmid(2), 16);
        assert_eq!(vmid(1), 8);
        assert_eq!(vmid(0xf), 8);
        let mte = |v: u64| {
            CpuFeatures::from_id_regs(&IdRegs {
                pfr1: v << 8,
                ..zero
            })
            .mte
        };
        assert!(!mte(0) && !mte(1) && mte(2) && mte(3));
        let f = CpuFeatures::from_id_regs(&IdRegs {
            mmfr2: 2 << 40,
            ctr: 3 << 28,
            ..zero
        });
        assert!(f.fwb && f.dic && f.idc);
        // Neighbouring bits do not leak in.
        let f = CpuFeatures::from_id_regs(&IdRegs {
            mmfr2: !(0xf << 40),
            ctr: !(3 << 28),
            pfr1: !(0xe << 8),
            ..zero
        });
        assert!(!f.fwb && !f.dic && !f.idc && !f.mte);
    }
}
