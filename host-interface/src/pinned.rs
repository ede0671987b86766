//! Values and small functions of the ABI pinned one by one, against the
//! mutants cargo-mutants showed surviving this crate's own tests (issue
//! 13): the PSCI codes, the run page's bits, VM_CREATE's MTE flag, the SMC32
//! aliases of PSCI calls, the cacheable memory type and how a host call's
//! result is written back.

use crate::{fault_flags, psci, vm_flags, Errno, GuestCallId, HostCallId, HostResult, MemType};

#[test]
fn psci_return_codes_are_the_specs_negative_values() {
    let codes = [
        (psci::SUCCESS, 0i64),
        (psci::NOT_SUPPORTED, -1),
        (psci::INVALID_PARAMETERS, -2),
        (psci::DENIED, -3),
        (psci::ALREADY_ON, -4),
        (psci::ON_PENDING, -5),
        (psci::INTERNAL_FAILURE, -6),
        (psci::NOT_PRESENT, -7),
        (psci::DISABLED, -8),
    ];
    for (code, want) in codes {
        assert_eq!(code as i64, want);
    }
    assert_eq!(psci::PSCI_VERSION_1_1, 1 << 16 | 1);
}

#[test]
fn run_page_fault_flags_and_vm_flags_are_distinct_single_bits() {
    assert_eq!(
        [
            fault_flags::WRITE,
            fault_flags::EXEC,
            fault_flags::SYNDROME_VALID
        ],
        [1, 2, 4]
    );
    assert_eq!([vm_flags::PROTECTED, vm_flags::MTE], [1, 2]);
    assert_eq!(vm_flags::MASK, 3);
}

#[test]
fn only_the_three_psci_calls_with_both_forms_have_smc32_aliases() {
    let aliased = [
        (GuestCallId::PsciCpuSuspend, 0x8400_0001),
        (GuestCallId::PsciCpuOn, 0x8400_0003),
        (GuestCallId::PsciAffinityInfo, 0x8400_0004),
    ];
    for (call, id) in aliased {
        assert_eq!(call.smc32_alias(), Some(id), "{call:?}");
    }
    for call in [
        GuestCallId::PsciVersion,
        GuestCallId::PsciCpuOff,
        GuestCallId::PsciSystemOff,
        GuestCallId::MemShare,
        GuestCallId::SmcccVersion,
    ] {
        assert_eq!(call.smc32_alias(), None, "{call:?}");
    }
}

#[test]
fn only_normal_write_back_is_cacheable() {
    assert!(MemType::NormalWb.is_cacheable());
    assert!(!MemType::NormalNc.is_cacheable());
    assert!(!MemType::Device.is_cacheable());
}

#[test]
fn results_write_back_exactly_the_registers_the_abi_names() {
    let id = |c: HostCallId| u64::from(c.id());
    let ok = HostResult::ok(2, 3, 4);
    let err = HostResult::err(Errno::EPERM);
    let ns = HostResult::not_supported();
    assert!(ns.is_not_supported());
    assert!(!ok.is_not_supported());
    assert!(!err.is_not_supported());
    // x0 only for an unknown ID; x0..x4 for HYP_FEATURES and PAGE_QUERY;
    // x0..x3 for the others.
    assert_eq!(ns.written(id(HostCallId::PageQuery)), 1);
    assert_eq!(ok.written(id(HostCallId::HypFeatures)), 5);
    assert_eq!(ok.written(id(HostCallId::PageQuery)), 5);
    assert_eq!(ok.written(id(HostCallId::ShareHyp)), 4);
    assert_eq!(err.written(id(HostCallId::VmCreate)), 4);
    assert_eq!(ok.outputs(), [2, 3, 4]);
    assert_eq!(HostResult::ok(7, 0, 9).outputs(), [7, 0, 9]);
    let caller = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5];
    let mut x = caller;
    ok.write_back(id(HostCallId::PageQuery), &mut x);
    assert_eq!(x, [0, 0, 2, 3, 4, 0xa5]);
    let mut x = caller;
    ok.write_back(id(HostCallId::ShareHyp), &mut x);
    assert_eq!(x, [0, 0, 2, 3, 0xa4, 0xa5]);
    let mut x = caller;
    ns.write_back(id(HostCallId::ShareHyp), &mut x);
    assert_eq!(x, [u64::MAX, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
    // A short register file gets what fits.
    let mut x = [0xa0, 0xa1];
    err.write_back(id(HostCallId::PageQuery), &mut x);
    assert_eq!(x, [0, Errno::EPERM.to_x1()]);
}
