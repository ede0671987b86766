//! Commands (SMMUv3 spec 4 "Commands"): 16 bytes, two doublewords, opcode
//! in bits \[7:0\]. Only the ones the hypervisor issues.

/// A command the hypervisor issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// CMD_CFGI_STE: forget the cached STE of one stream.
    CfgiSte {
        /// StreamID.
        sid: u32,
    },
    /// CMD_CFGI_ALL: forget every cached STE and context descriptor.
    CfgiAll,
    /// CMD_TLBI_S2_IPA: forget stage-2 translations of one 4 KiB IPA.
    TlbiS2Ipa {
        /// VMID of the translations.
        vmid: u16,
        /// IPA (the low 12 bits are ignored).
        ipa: u64,
    },
    /// CMD_TLBI_S12_VMALL: forget every translation of one VMID.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_NSNH_ALL: forget every non-secure, non-hypervisor
    /// translation.
    TlbiNsnhAll,
    /// CMD_SYNC without a signal: complete when the consumer index passes
    /// it, after every earlier command has taken effect.
    Sync,
}

/// CMD_CFGI_STE opcode.
pub const OP_CFGI_STE: u8 = 0x03;
/// CMD_CFGI_ALL opcode.
pub const OP_CFGI_ALL: u8 = 0x04;
/// CMD_TLBI_S2_IPA opcode.
pub const OP_TLBI_S2_IPA: u8 = 0x2A;
/// CMD_TLBI_S12_VMALL opcode.
pub const OP_TLBI_S12_VMALL: u8 = 0x28;
/// CMD_TLBI_NSNH_ALL opcode.
pub const OP_TLBI_NSNH_ALL: u8 = 0x30;
/// CMD_SYNC opcode.
pub const OP_SYNC: u8 = 0x46;

impl Command {
    /// The command's two doublewords.
    pub fn encode(self) -> [u64; 2] {
        match self {
            Command::CfgiSte { sid } => [u64::from(OP_CFGI_STE) | u64::from(sid) << 32, 1],
            // Range = 31: all StreamIDs.
            Command::CfgiAll => [u64::from(OP_CFGI_ALL), 31],
            Command::TlbiS2Ipa { vmid, ipa } => [
                // NUM = SCALE = 0, TG = 0: one page, no range.
                u64::from(OP_TLBI_S2_IPA) | u64::from(vmid) << 32,
                // Leaf = 0 (walk caches too); TTL = 0 (any level).
                ipa & (((1 << 52) - 1) & !0xfff),
            ],
            Command::TlbiS12Vmall { vmid } => {
                [u64::from(OP_TLBI_S12_VMALL) | u64::from(vmid) << 32, 0]
            }
            Command::TlbiNsnhAll => [u64::from(OP_TLBI_NSNH_ALL), 0],
            // CS = 0b00 (SIG_NONE), MSH = 0b11 (inner shareable).
            Command::Sync => [u64::from(OP_SYNC) | 0b11 << 22, 0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(
            Command::CfgiSte { sid: 8 }.encode(),
            [0x0000_0008_0000_0003, 1]
        );
        assert_eq!(Command::CfgiAll.encode(), [0x04, 31]);
        assert_eq!(
            Command::TlbiS2Ipa {
                vmid: 0x2,
                ipa: 0x4512_3abc
            }
            .encode(),
            [0x0000_0002_0000_002A, 0x4512_3000]
        );
        assert_eq!(
            Command::TlbiS12Vmall { vmid: 0xffff }.encode(),
            [0x0000_ffff_0000_0028, 0]
        );
        assert_eq!(Command::TlbiNsnhAll.encode(), [0x30, 0]);
        let s = Command::Sync.encode();
        assert_eq!(s[0] & 0xff, 0x46);
        assert_eq!((s[0] >> 12) & 3, 0, "no interrupt, no event: polled");
        assert_eq!(s[1], 0);
    }

    #[test]
    fn ipa_above_52_bits_is_dropped() {
        let [_, d1] = Command::TlbiS2Ipa {
            vmid: 0,
            ipa: u64::MAX,
        }
        .encode();
        assert_eq!(d1, 0x000f_ffff_ffff_f000);
    }
}
