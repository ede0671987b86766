//! The stage-2 descriptor format (Arm ARM D8.3, VMSAv8-64 stage 2, 4 KiB
//! granule): bit positions, the MemAttr encodings with and without FWB, and
//! the translation between descriptors and [`Leaf`]/[`Entry`].

use crate::{Entry, Leaf, MemType, PageState, Perms};

/// Bits of a page (valid leaf) or table address: OA\[47:12\].
pub(crate) const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
/// Size of the smallest mapping.
pub(crate) const PAGE_SIZE: u64 = 4096;
/// Largest output address a descriptor can hold (48-bit OA).
pub(crate) const OA_LIMIT: u64 = 1 << 48;
/// The last lookup level (pages).
pub(crate) const LEAF_LEVEL: u8 = 3;

pub(crate) const VALID: u64 = 1 << 0;
/// Table descriptor at levels 0-2, page descriptor at level 3.
pub(crate) const TABLE_OR_PAGE: u64 = 1 << 1;
const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
/// XN\[1:0\] at \[54:53\]; 0b10 = not executable at EL1 nor EL0.
const XN_FIELD: u64 = 0b11 << 53;
const XN_NONE: u64 = 0b10 << 53;
const SW_SHIFT: u32 = 55;
const SW_MASK: u64 = 0b11 << SW_SHIFT;
const ANNOTATION_SHIFT: u32 = 2;
const ANNOTATION_MASK: u64 = 0x3ff << ANNOTATION_SHIFT;

/// Bits whose change on a live valid leaf needs TLB maintenance but no
/// break-before-make: the permissions.
pub(crate) const PERM_BITS: u64 = S2AP_R | S2AP_W | XN_FIELD;

/// Size of the region one descriptor at `level` covers.
pub(crate) const fn granule(level: u8) -> u64 {
    PAGE_SIZE << (9 * (LEAF_LEVEL - level) as u32)
}

/// Index of the descriptor translating `ipa` in a table at `level`.
pub(crate) const fn index(ipa: u64, level: u8) -> usize {
    ((ipa >> (12 + 9 * (LEAF_LEVEL - level) as u32)) & 511) as usize
}

/// Whether `desc` at `level` points to a next-level table.
pub(crate) const fn is_table(desc: u64, level: u8) -> bool {
    level < LEAF_LEVEL && desc & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE
}

pub(crate) const fn is_valid(desc: u64) -> bool {
    desc & VALID != 0
}

/// The attribute bits of `desc` (everything but the output address), with
/// the page/block distinction removed.
pub(crate) const fn attrs(desc: u64) -> u64 {
    desc & !OA_MASK & !TABLE_OR_PAGE
}

/// The 4-bit MemAttr field value for `memtype` under the given FWB setting
/// (RULES.md D7).
pub fn memattr_bits(memtype: MemType, fwb: bool) -> u64 {
    match (memtype, fwb) {
        (MemType::Stage1, true) => 0b0111,
        (MemType::NormalWb, true) => 0b0110,
        // Without FWB "stage 1 decides" is the combination with write-back:
        // the weaker of the two stages wins.
        (MemType::Stage1 | MemType::NormalWb, false) => 0b1111,
        (MemType::NormalNc, _) => 0b0101,
        (MemType::Device, _) => 0b0001,
    }
}

/// The memory type a 4-bit MemAttr field value encodes, or `None` for an
/// encoding this crate never writes.
pub fn decode_memattr(bits: u64, fwb: bool) -> Option<MemType> {
    match (bits, fwb) {
        (0b0111, true) => Some(MemType::Stage1),
        (0b0110, true) => Some(MemType::NormalWb),
        (0b1111, false) => Some(MemType::NormalWb),
        (0b0101, _) => Some(MemType::NormalNc),
        (0b0001, _) => Some(MemType::Device),
        _ => None,
    }
}

/// Attribute bits (no output address, no page bit) of a valid leaf.
pub(crate) fn leaf_attrs(leaf: Leaf, fwb: bool) -> u64 {
    let mut bits = VALID | AF | SH_INNER | (memattr_bits(leaf.memtype, fwb) << MEMATTR_SHIFT);
    if leaf.perms.r {
        bits |= S2AP_R;
    }
    if leaf.perms.w {
        bits |= S2AP_W;
    }
    if !leaf.perms.x || !leaf.memtype.is_cacheable() {
        bits |= XN_NONE;
    }
    let state = match leaf.state {
        PageState::Owned => 0b00,
        PageState::SharedOwned => 0b01,
        PageState::SharedBorrowed => 0b10,
    };
    bits | (state << SW_SHIFT)
}

/// Attribute bits of an invalid descriptor carrying `annotation` (<= 1023).
pub(crate) const fn invalid_attrs(annotation: u16) -> u64 {
    ((annotation as u64) << ANNOTATION_SHIFT) & ANNOTATION_MASK
}

/// The leaf a valid descriptor encodes. Encodings this crate never writes
/// decode conservatively: an unknown MemAttr as Device, software state 0b11
/// as SharedBorrowed.
pub(crate) fn decode_leaf(desc: u64, fwb: bool) -> Leaf {
    let memtype =
        decode_memattr((desc & MEMATTR_MASK) >> MEMATTR_SHIFT, fwb).unwrap_or(MemType::Device);
    let state = match (desc & SW_MASK) >> SW_SHIFT {
        0b00 => PageState::Owned,
        0b01 => PageState::SharedOwned,
        _ => PageState::SharedBorrowed,
    };
    Leaf {
        perms: Perms {
            r: desc & S2AP_R != 0,
            w: desc & S2AP_W != 0,
            x: desc & XN_FIELD == 0,
        },
        memtype,
        state,
    }
}

/// The entry for the page at `ipa` that a non-table descriptor at `level`
/// encodes.
pub(crate) fn decode_entry(desc: u64, level: u8, ipa: u64, fwb: bool) -> Entry {
    if !is_valid(desc) {
        return Entry::Invalid {
            annotation: ((desc & ANNOTATION_MASK) >> ANNOTATION_SHIFT) as u16,
        };
    }
    let offset = ipa & (granule(level) - 1) & !(PAGE_SIZE - 1);
    Entry::Mapped {
        pa: (desc & OA_MASK) + offset,
        leaf: decode_leaf(desc, fwb),
        level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_TYPES: [MemType; 4] = [
        MemType::Stage1,
        MemType::NormalWb,
        MemType::NormalNc,
        MemType::Device,
    ];

    #[test]
    fn memattr_round_trip() {
        for fwb in [false, true] {
            for t in ALL_TYPES {
                let back = decode_memattr(memattr_bits(t, fwb), fwb);
                let expect = if t == MemType::Stage1 && !fwb {
                    MemType::NormalWb
                } else {
                    t
                };
                assert_eq!(back, Some(expect), "{t:?} fwb={fwb}");
            }
        }
        assert_eq!(decode_memattr(0b0111, false), None);
        assert_eq!(decode_memattr(0b1111, true), None);
        assert_eq!(decode_memattr(0b0000, true), None);
    }

    #[test]
    fn leaf_round_trip() {
        for fwb in [false, true] {
            for t in ALL_TYPES {
                for bits in 0..8u8 {
                    for state in [
                        PageState::Owned,
                        PageState::SharedOwned,
                        PageState::SharedBorrowed,
                    ] {
                        let perms = Perms {
                            r: bits & 1 != 0,
                            w: bits & 2 != 0,
                            x: bits & 4 != 0,
                        };
                        let leaf = Leaf {
                            perms,
                            memtype: t,
                            state,
                        };
                        let desc = 0x1234_5000 | leaf_attrs(leaf, fwb);
                        let Entry::Mapped {
                            pa,
                            leaf: got,
                            level,
                        } = decode_entry(desc | TABLE_OR_PAGE, 3, 0x7000, fwb)
                        else {
                            panic!("not mapped");
                        };
                        assert_eq!((pa, level), (0x1234_5000, 3));
                        let mut want = leaf;
                        want.perms.x &= t.is_cacheable();
                        if t == MemType::Stage1 && !fwb {
                            want.memtype = MemType::NormalWb;
                        }
                        assert_eq!(got, want);
                        // Valid leaves: AF, inner shareable, XN as 0b10 or 0b00.
                        assert_ne!(desc & AF, 0);
                        assert_eq!(desc & SH_INNER, SH_INNER);
                        assert!(matches!((desc >> 53) & 3, 0b00 | 0b10));
                    }
                }
            }
        }
    }

    #[test]
    fn block_entry_reports_page_address() {
        let leaf = Leaf {
            perms: Perms {
                r: true,
                w: true,
                x: true,
            },
            memtype: MemType::NormalWb,
            state: PageState::Owned,
        };
        let desc = 0x8020_0000 | leaf_attrs(leaf, true);
        let e = decode_entry(desc, 2, 0x4012_3000, true);
        assert_eq!(
            e,
            Entry::Mapped {
                pa: 0x8032_3000,
                leaf,
                level: 2
            }
        );
    }

    #[test]
    fn annotations() {
        for a in [0u16, 1, 0x155, 1023] {
            assert_eq!(
                decode_entry(invalid_attrs(a), 1, 0, false),
                Entry::Invalid { annotation: a }
            );
            assert_eq!(invalid_attrs(a) & (VALID | TABLE_OR_PAGE), 0);
        }
    }
}
