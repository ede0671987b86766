//! Unit tests of the whole ABI surface: ID tables, decode/encode, results and
//! the run page.

extern crate std;

use std::vec::Vec;

use crate::prot::{self, MEMTYPE_MASK};
use crate::*;

/// A typical PARange for the tests (48-bit PA space).
const PA_BITS: u32 = 48;
const PA_FRAMES: u64 = 1 << (PA_BITS - PAGE_SHIFT);
const IPA_FRAMES: u64 = 1 << (GUEST_IPA_BITS - PAGE_SHIFT);

fn decode(regs: [u64; 7]) -> Result<HostCall, DecodeError> {
    HostCall::decode(&regs, PA_BITS)
}

/// One valid call of every kind, with the largest legal `nr`.
fn sample_calls() -> Vec<HostCall> {
    let prot = Prot::RW;
    std::vec![
        HostCall::HypVersion,
        HostCall::HypFeatures,
        HostCall::PageQuery { pfn: 0x1234 },
        HostCall::ShareHyp { pfn: 0x100, nr: 1 },
        HostCall::UnshareHyp { pfn: 0x100, nr: 2 },
        HostCall::VmCreate {
            flags: vm_flags::PROTECTED | vm_flags::MTE,
            pfn: 0x200,
            nr: 16,
        },
        HostCall::VmTopup {
            handle: 1,
            pfn: 0x300,
            nr: 512,
        },
        HostCall::VcpuCreate {
            handle: 1,
            run_pfn: 0x400,
        },
        HostCall::VcpuRun { handle: 1, vcpu: 0 },
        HostCall::VmDestroy { handle: 7 },
        HostCall::Reclaim { pfn: 0x500, nr: 3 },
        HostCall::GuestShare {
            handle: 2,
            pfn: 0x600,
            gfn: 0x80,
            nr: 4,
            prot,
        },
        HostCall::GuestUnshare {
            handle: 2,
            gfn: 0x80,
            nr: 4,
        },
        HostCall::GuestDonate {
            handle: 2,
            pfn: 0x700,
            gfn: 0x90,
            nr: 5,
            prot: Prot::RWX,
        },
        HostCall::GuestMapDevice {
            handle: 2,
            pfn: 0x9_0000,
            gfn: 0x1000,
            nr: 1,
            prot: Prot::R,
            memtype: MemType::NormalNc,
        },
        HostCall::GuestUnmapDevice {
            handle: 2,
            gfn: 0x1000,
            nr: 1,
        },
    ]
}

/// Index (into x0..x6) of the register that holds `nr`, if the call has one.
fn nr_reg(id: HostCallId) -> Option<usize> {
    match id {
        HostCallId::ShareHyp | HostCallId::UnshareHyp | HostCallId::Reclaim => Some(2),
        HostCallId::VmCreate | HostCallId::VmTopup => Some(3),
        HostCallId::GuestUnshare | HostCallId::GuestUnmapDevice => Some(3),
        HostCallId::GuestShare | HostCallId::GuestDonate | HostCallId::GuestMapDevice => Some(4),
        _ => None,
    }
}

/// Index of the register holding the (first) pfn, if any.
fn pfn_reg(id: HostCallId) -> Option<usize> {
    match id {
        HostCallId::PageQuery
        | HostCallId::ShareHyp
        | HostCallId::UnshareHyp
        | HostCallId::Reclaim => Some(1),
        HostCallId::VmCreate
        | HostCallId::VmTopup
        | HostCallId::VcpuCreate
        | HostCallId::GuestShare
        | HostCallId::GuestDonate
        | HostCallId::GuestMapDevice => Some(2),
        _ => None,
    }
}

/// Index of the register holding the gfn, if any.
fn gfn_reg(id: HostCallId) -> Option<usize> {
    match id {
        HostCallId::GuestUnshare | HostCallId::GuestUnmapDevice => Some(2),
        HostCallId::GuestShare | HostCallId::GuestDonate | HostCallId::GuestMapDevice => Some(3),
        _ => None,
    }
}

/// Number of argument registers (x1..) a call uses.
fn used_args(id: HostCallId) -> usize {
    match id {
        HostCallId::HypVersion | HostCallId::HypFeatures => 0,
        HostCallId::PageQuery | HostCallId::VmDestroy => 1,
        HostCallId::ShareHyp
        | HostCallId::UnshareHyp
        | HostCallId::Reclaim
        | HostCallId::VcpuCreate
        | HostCallId::VcpuRun => 2,
        HostCallId::VmCreate
        | HostCallId::VmTopup
        | HostCallId::GuestUnshare
        | HostCallId::GuestUnmapDevice => 3,
        HostCallId::GuestShare | HostCallId::GuestDonate | HostCallId::GuestMapDevice => 5,
    }
}

#[test]
fn host_call_ids_round_trip() {
    assert_eq!(HostCallId::ALL.len(), 16);
    for id in HostCallId::ALL {
        assert_eq!(HostCallId::from_id(u64::from(id.id())), Some(id));
        assert_eq!(HostCallId::from_name(id.name()), Some(id));
        assert!(is_host_call_range(u64::from(id.id())));
        assert_eq!(id.id(), id as u32);
    }
    assert_eq!(HostCallId::HypVersion.id(), HOST_CALL_BASE);
    assert_eq!(HostCallId::GuestMapDevice.name(), "GUEST_MAP_DEVICE");
    assert_eq!(HostCallId::ShareHyp.id(), 0xC600_0110);
    assert_eq!(HostCallId::GuestUnmapDevice.id(), 0xC600_0134);
    assert_eq!(HostCallId::from_name("share_hyp"), None);
    assert_eq!(HostCallId::from_id(0xC600_01FF), None);
    assert_eq!(HostCallId::from_id(0x1_C600_0100), None);
}

#[test]
fn host_call_range() {
    assert!(is_host_call_range(0xC600_0100));
    assert!(is_host_call_range(0xC600_01FF));
    assert!(!is_host_call_range(0xC600_00FF));
    assert!(!is_host_call_range(0xC600_0200));
    assert!(!is_host_call_range(0xC600_0003));
    assert!(!is_host_call_range(0xFFFF_FFFF_C600_0100));
}

#[test]
fn guest_call_ids_round_trip() {
    for call in GuestCallId::ALL {
        assert_eq!(GuestCallId::from_id(u64::from(call.id())), Some(call));
        assert_eq!(GuestCallId::from_name(call.name()), Some(call));
        assert!(!is_host_call_range(u64::from(call.id())));
        if let Some(alias) = call.smc32_alias() {
            assert_eq!(GuestCallId::from_id(u64::from(alias)), Some(call));
            assert_ne!(alias, call.id());
        }
        if call.is_psci() && !call.name().starts_with("PSCI_") {
            let prefixed = std::format!("PSCI_{}", call.name());
            assert_eq!(GuestCallId::from_name(&prefixed), Some(call));
        }
    }
    let mut names: Vec<_> = GuestCallId::ALL.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), GuestCallId::ALL.len());

    assert_eq!(GuestCallId::PsciCpuOn.id(), 0xC400_0003);
    assert_eq!(GuestCallId::PsciCpuOff.id(), 0x8400_0002);
    assert_eq!(GuestCallId::from_id(0xC400_0002), None);
    assert_eq!(GuestCallId::from_id(0x1_8000_0000), None);
    assert_eq!(GuestCallId::from_name("PSCI_PSCI_VERSION"), None);
    assert_eq!(GuestCallId::from_name("PSCI_MEM_SHARE"), None);
    assert_eq!(
        GuestCallId::from_name("PSCI_SYSTEM_OFF"),
        Some(GuestCallId::PsciSystemOff)
    );
}

#[test]
fn guest_constants() {
    assert_eq!(KVM_FEATURES_BITMAP, 0b1001_1101);
    assert_eq!(SMCCC_INVALID_PARAMETER, u64::MAX - 2);
    assert_eq!(psci::DISABLED, (-8i64) as u64);
    assert_eq!(psci::NOT_SUPPORTED, SMCCC_NOT_SUPPORTED);
    assert_eq!(PSCI_VERSION_1_1, 0x10001);
}

#[test]
fn errno_round_trip() {
    for e in Errno::ALL {
        assert_eq!(Errno::from_x1(e.to_x1()), Some(e));
        assert_eq!(Errno::from_name(e.name()), Some(e));
        assert_eq!(e.to_x1() as i64, -e.value());
    }
    assert_eq!(Errno::EINVAL.to_x1(), (-22i64) as u64);
    for x1 in [
        0,
        1,
        22,
        u64::MAX - 2,
        1 << 63,
        (1 << 63) + 1,
        i64::MAX as u64,
    ] {
        assert_eq!(Errno::from_x1(x1), None, "{x1:#x}");
    }
}

#[test]
fn other_enums_round_trip() {
    for e in ExitReason::ALL {
        assert_eq!(ExitReason::from_u64(e as u64), Some(e));
        assert_eq!(ExitReason::from_name(e.name()), Some(e));
    }
    assert_eq!(ExitReason::from_u64(0), None);
    assert_eq!(ExitReason::from_u64(8), None);
    assert_eq!(ExitReason::MemFault.name(), "MEM_FAULT");
    for o in Owner::ALL {
        assert_eq!(Owner::from_value(o.value()), Some(o));
        assert_eq!(Owner::from_name(o.name()), Some(o));
    }
    for s in HostState::ALL {
        assert_eq!(HostState::from_value(s.value()), Some(s));
        assert_eq!(HostState::from_name(s.name()), Some(s));
    }
    for c in MemClassCode::ALL {
        assert_eq!(MemClassCode::from_value(c.value()), Some(c));
        assert_eq!(MemClassCode::from_name(c.name()), Some(c));
    }
    for m in MemType::ALL {
        assert_eq!(MemType::from_value(m.value()), Some(m));
        assert_eq!(MemType::from_name(m.name()), Some(m));
    }
    assert_eq!(MemType::from_value(3), None);
    for (bit, name) in features::ALL {
        assert_eq!(features::from_name(name), Some(bit));
        assert_eq!(features::name(bit), Some(name));
    }
    assert_eq!(features::from_name("FWB"), None);
    assert_eq!(features::MASK, 0x1F);
}

#[test]
fn prot_bits() {
    for bits in 0..=0xFFu64 {
        let prot = Prot::from_bits(bits);
        let valid = bits & prot::R != 0 && bits & !prot::MASK == 0;
        assert_eq!(prot.is_some(), valid, "{bits:#x}");
        if let Some(prot) = prot {
            assert_eq!(prot.bits(), bits);
            assert!(prot.r());
            assert_eq!(prot.w(), bits & prot::W != 0);
            assert_eq!(prot.x(), bits & prot::X != 0);
        }
    }
    assert_eq!(Prot::from_bits(1 << 63), None);
    assert_eq!(MEMTYPE_MASK, 0x300);
}

#[test]
fn results() {
    let ok = HostResult::ok(1, 2, 3);
    assert!(ok.is_ok());
    assert_eq!(ok.regs, [0, 0, 1, 2, 3]);
    assert_eq!(ok.errno(), None);
    let err = HostResult::err(Errno::EBUSY);
    assert!(!err.is_ok());
    assert_eq!(err.errno(), Some(Errno::EBUSY));
    assert_eq!(err.regs, [0, (-16i64) as u64, 0, 0, 0]);
    let ns = HostResult::not_supported();
    assert!(ns.is_not_supported() && !ns.is_ok());
    assert_eq!(ns.errno(), None);
    assert_eq!(HostResult::from(DecodeError::NotSupported), ns);
    assert_eq!(
        HostResult::from(DecodeError::Invalid),
        HostResult::err(Errno::EINVAL)
    );
}

#[test]
fn encode_decode_round_trip() {
    for call in sample_calls() {
        let regs = call.encode();
        assert_eq!(regs[0], u64::from(call.id().id()));
        assert_eq!(decode(regs), Ok(call), "{call:?}");
    }
    // Every kind is covered.
    let mut ids: Vec<_> = sample_calls().iter().map(|c| c.id().id()).collect();
    ids.dedup();
    assert_eq!(ids.len(), HostCallId::ALL.len());
}

#[test]
fn unused_registers_must_be_zero() {
    for call in sample_calls() {
        let id = call.id();
        let regs = call.encode();
        for reg in (1 + used_args(id))..7 {
            for value in [1, 1 << 63, u64::MAX] {
                let mut bad = regs;
                bad[reg] = value;
                assert_eq!(decode(bad), Err(DecodeError::Invalid), "{id:?} x{reg}");
            }
        }
    }
}

#[test]
fn page_counts() {
    for call in sample_calls() {
        let id = call.id();
        let Some(reg) = nr_reg(id) else { continue };
        let mut regs = call.encode();
        for (nr, ok) in [
            (0, false),
            (1, true),
            (512, true),
            (513, false),
            (u64::MAX, false),
        ] {
            regs[reg] = nr;
            assert_eq!(decode(regs).is_ok(), ok, "{id:?} nr={nr}");
        }
    }
}

#[test]
fn pfn_range_limits() {
    for call in sample_calls() {
        let id = call.id();
        let Some(reg) = pfn_reg(id) else { continue };
        let mut regs = call.encode();
        let nr = nr_reg(id).map_or(1, |r| regs[r]);
        for (pfn, ok) in [
            (PA_FRAMES - nr, true),
            (PA_FRAMES - nr + 1, false),
            (PA_FRAMES, false),
            (u64::MAX, false),
            (u64::MAX - nr + 1, false),
            (0, true),
        ] {
            regs[reg] = pfn;
            assert_eq!(decode(regs).is_ok(), ok, "{id:?} pfn={pfn:#x}");
        }
    }
}

#[test]
fn pfn_range_follows_pa_bits() {
    let at = |pa_bits: u32, pfn: u64| HostCall::PageQuery { pfn }.encode_decode(pa_bits);
    assert!(at(40, (1 << 28) - 1));
    assert!(!at(40, 1 << 28));
    assert!(at(52, (1 << 40) - 1));
    assert!(!at(52, 1 << 40));
    assert!(at(64, (1 << 52) - 1));
    assert!(!at(64, 1 << 52));
    assert!(!at(100, u64::MAX));
    assert!(!at(0, 0));
    assert!(!at(11, 0));
    assert!(at(12, 0));
    assert!(!at(12, 1));
}

impl HostCall {
    /// Whether this call survives encode then decode at `pa_bits`.
    fn encode_decode(self, pa_bits: u32) -> bool {
        HostCall::decode(&self.encode(), pa_bits) == Ok(self)
    }
}

#[test]
fn gfn_range_limits() {
    for call in sample_calls() {
        let id = call.id();
        let Some(reg) = gfn_reg(id) else { continue };
        let mut regs = call.encode();
        let nr = nr_reg(id).map_or(1, |r| regs[r]);
        for (gfn, ok) in [
            (IPA_FRAMES - nr, true),
            (IPA_FRAMES - nr + 1, false),
            (IPA_FRAMES, false),
            (u64::MAX, false),
            (0, true),
        ] {
            regs[reg] = gfn;
            assert_eq!(decode(regs).is_ok(), ok, "{id:?} gfn={gfn:#x}");
        }
    }
}

#[test]
fn prot_and_memtype_registers() {
    for call in sample_calls() {
        let id = call.id();
        if !matches!(
            id,
            HostCallId::GuestShare | HostCallId::GuestDonate | HostCallId::GuestMapDevice
        ) {
            continue;
        }
        let device = id == HostCallId::GuestMapDevice;
        let mut regs = call.encode();
        for bit in 0..64 {
            regs[5] = prot::R | (1 << bit);
            let known = bit < 3 || (device && (bit == 8 || bit == 9));
            // Bits 8 and 9 together are memtype 3, tested below.
            assert_eq!(decode(regs).is_ok(), known, "{id:?} bit {bit}");
        }
        regs[5] = prot::W | prot::X;
        assert_eq!(decode(regs), Err(DecodeError::Invalid));
        regs[5] = 0;
        assert_eq!(decode(regs), Err(DecodeError::Invalid));
        if device {
            for (memtype, expected) in [
                (0, Some(MemType::Device)),
                (1, Some(MemType::NormalNc)),
                (2, Some(MemType::NormalWb)),
                (3, None),
            ] {
                regs[5] = prot::R | prot::X | (memtype << MEMTYPE_SHIFT);
                match decode(regs) {
                    Ok(HostCall::GuestMapDevice {
                        memtype: got, prot, ..
                    }) => {
                        assert_eq!(Some(got), expected);
                        assert_eq!(prot, Prot::RX);
                    }
                    other => {
                        assert_eq!(expected, None);
                        assert_eq!(other, Err(DecodeError::Invalid));
                    }
                }
            }
            // memtype alone, without R, is still a bad prot.
            regs[5] = 2 << MEMTYPE_SHIFT;
            assert_eq!(decode(regs), Err(DecodeError::Invalid));
        }
    }
}

#[test]
fn vm_create_flags() {
    let mut regs = HostCall::VmCreate {
        flags: 0,
        pfn: 0x100,
        nr: 4,
    }
    .encode();
    for flags in [0, vm_flags::PROTECTED, vm_flags::MTE, vm_flags::MASK] {
        regs[1] = flags;
        assert!(decode(regs).is_ok());
    }
    for bit in 2..64 {
        regs[1] = 1 << bit;
        assert_eq!(decode(regs), Err(DecodeError::Invalid));
    }
}

#[test]
fn handles_pass_through() {
    for handle in [0, 1, u64::MAX] {
        let call = HostCall::VcpuRun {
            handle,
            vcpu: u64::MAX,
        };
        assert_eq!(decode(call.encode()), Ok(call));
        let call = HostCall::VmDestroy { handle };
        assert_eq!(decode(call.encode()), Ok(call));
    }
}

#[test]
fn not_supported_ids() {
    let mut ids: Vec<u64> = std::vec![
        0,
        u64::MAX,
        0xC600_01FF,
        0xC600_0103,
        0xC600_0135,
        0xC600_00FF,
        0xC600_0003,
        0xC600_0002,
        0x8400_0000,
        0x8000_0000,
    ];
    for id in HostCallId::ALL {
        ids.push(u64::from(id.id()) | (1 << 32));
        ids.push(u64::from(id.id()) | (1 << 63));
    }
    ids.extend(GuestCallId::ALL.iter().map(|c| u64::from(c.id())));
    for id in ids {
        // Invalid arguments do not matter: the ID is checked first.
        for args in [[0; 6], [u64::MAX; 6]] {
            let mut regs = [id; 7];
            regs[1..].copy_from_slice(&args);
            assert_eq!(decode(regs), Err(DecodeError::NotSupported), "{id:#x}");
        }
    }
}

/// Deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Values near every boundary decode cares about.
const EDGES: [u64; 16] = [
    0,
    1,
    2,
    7,
    0x300,
    511,
    512,
    513,
    (1 << 28) - 1,
    1 << 28,
    (1 << 36) - 1,
    1 << 36,
    1 << 48,
    u64::MAX - 511,
    u64::MAX - 1,
    u64::MAX,
];

#[test]
fn decode_never_panics_and_is_canonical() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0u32;
    for round in 0..100_000u32 {
        let mut regs = [0u64; 7];
        for reg in regs.iter_mut() {
            let pick = rng.next();
            *reg = match pick % 4 {
                0 => 0,
                1 => EDGES[(pick >> 8) as usize % EDGES.len()],
                2 => (pick >> 8) % 1024,
                _ => rng.next(),
            };
        }
        // Mostly known IDs, so the argument checks get exercised; half the
        // time a valid call with one or two registers changed, so that the
        // boundaries between valid and invalid are crossed often.
        let pick = rng.next();
        if pick & 1 == 0 {
            let calls = sample_calls();
            let base = calls[(pick >> 8) as usize % calls.len()].encode();
            let keep = rng.next();
            for (reg, (new, old)) in regs.iter_mut().zip(base).enumerate() {
                if reg == 0 || (keep >> reg) & 3 != 0 {
                    *new = old;
                }
            }
        } else if pick % 16 == 1 {
            regs[0] = rng.next();
        } else {
            regs[0] = u64::from(HostCallId::ALL[(pick >> 8) as usize % HostCallId::ALL.len()].id());
        }
        let pa_bits = [0, 11, 12, 32, 40, 44, 48, 52, 64, 65, u32::MAX][round as usize % 11];
        if let Ok(call) = HostCall::decode(&regs, pa_bits) {
            decoded += 1;
            assert_eq!(call.encode(), regs, "{call:?}");
            assert_eq!(u64::from(call.id().id()), regs[0]);
        }
    }
    // The generator reaches valid calls too, not only rejections.
    assert!(decoded > 10_000, "{decoded}");
}

#[test]
fn decode_edge_registers() {
    for id in HostCallId::ALL {
        for a in EDGES {
            for b in EDGES {
                for pa_bits in [0, 12, 48, 64, 1000] {
                    let regs = [u64::from(id.id()), a, b, a, b, a & 7, 0];
                    let _ = HostCall::decode(&regs, pa_bits);
                    let regs = [u64::from(id.id()), a, b, b, a, a | b, 0];
                    let _ = HostCall::decode(&regs, pa_bits);
                }
            }
        }
    }
}

#[test]
fn run_page_layout() {
    use zerocopy::{FromBytes, IntoBytes};

    let mut page = RunPage::default();
    assert!(page.as_bytes().iter().all(|&b| b == 0));
    page.inject_irq = IrqRequest::encode(27).unwrap_or_default();
    page.hvc_results[3] = 0xAB;
    let bytes = page.as_bytes();
    assert_eq!(bytes.len(), 4096);
    assert_eq!(bytes[168..176], (inject_irq::VALID | 27).to_ne_bytes());
    assert_eq!(bytes[152..160], 0xABu64.to_ne_bytes());
    let back = RunPage::read_from_bytes(bytes);
    assert_eq!(back.as_ref(), Ok(&page));
}

#[test]
fn irq_requests() {
    assert_eq!(IrqRequest::decode(0), IrqRequest::None);
    assert_eq!(
        IrqRequest::decode(27),
        IrqRequest::Malformed,
        "no VALID bit"
    );
    assert_eq!(IrqRequest::decode(inject_irq::VALID), IrqRequest::Inject(0));
    assert_eq!(
        IrqRequest::decode(inject_irq::VALID | 1019),
        IrqRequest::Inject(1019)
    );
    for special in 1020..=1023 {
        assert_eq!(
            IrqRequest::decode(inject_irq::VALID | special),
            IrqRequest::Malformed
        );
    }
    assert_eq!(
        IrqRequest::decode(inject_irq::VALID | 1024),
        IrqRequest::Malformed
    );
    assert_eq!(
        IrqRequest::decode(inject_irq::VALID | 1 << 32),
        IrqRequest::Malformed
    );
    assert_eq!(IrqRequest::decode(u64::MAX), IrqRequest::Malformed);
    assert_eq!(IrqRequest::encode(1020), None);
    assert_eq!(IrqRequest::encode(1024), None);
    for intid in [0, 1, 27, 1019] {
        let raw = IrqRequest::encode(intid).unwrap_or_default();
        assert_eq!(IrqRequest::decode(raw), IrqRequest::Inject(intid));
    }
}

#[test]
fn frame_helpers() {
    assert_eq!(frames_in(0), 0);
    assert_eq!(frames_in(12), 1);
    assert_eq!(frames_in(40), 1 << 28);
    assert_eq!(frames_in(64), 1 << 52);
    assert_eq!(frames_in(u32::MAX), 1 << 52);
    assert!(frame_range_fits(0, 0, 0));
    assert!(!frame_range_fits(u64::MAX, 1, 64));
    assert!(frame_range_fits((1 << 28) - 512, 512, 40));
    assert!(!frame_range_fits((1 << 28) - 511, 512, 40));
}
