//! Calls a guest may make that the hypervisor answers itself (ABI.md 2): the
//! SMCCC discovery calls, the pKVM vendor-hypervisor calls and PSCI 1.1.
//! Every other guest function ID outside the host-call range is forwarded to
//! the host as an HVC exit.

/// SMCCC version 1.1, as SMCCC_VERSION returns it (`major << 16 | minor`).
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// SMCCC success (x0 = 0).
pub const SMCCC_SUCCESS: u64 = 0;
/// SMCCC NOT_SUPPORTED (x0 = -1).
pub const SMCCC_NOT_SUPPORTED: u64 = u64::MAX;
/// SMCCC INVALID_PARAMETER (x0 = -3): bad alignment, IPA in the wrong state,
/// reserved argument registers not zero.
pub const SMCCC_INVALID_PARAMETER: u64 = (-3i64) as u64;

/// The KVM vendor-hypervisor UID 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as
/// VENDOR_HYP_CALL_UID returns it in x0..x3.
pub const KVM_UID: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// VENDOR_HYP_KVM_FEATURES x0: bits 0 (FEATURES), 2 (HYP_MEMINFO),
/// 3 (MEM_SHARE), 4 (MEM_UNSHARE), 7 (MMIO_GUARD).
pub const KVM_FEATURES_BITMAP: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7);

/// A guest call the hypervisor handles itself (ABI.md 2).
///
/// Function IDs are matched on all 64 bits of x0: a value with any of bits
/// 63:32 set is no call of this table (and so is forwarded to the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestCallId {
    /// SMCCC_VERSION, 0x8000_0000.
    SmcccVersion,
    /// SMCCC_ARCH_FEATURES, 0x8000_0001.
    SmcccArchFeatures,
    /// VENDOR_HYP_CALL_UID, 0x8600_FF01.
    VendorHypCallUid,
    /// VENDOR_HYP_KVM_FEATURES, 0x8600_0000.
    VendorHypKvmFeatures,
    /// HYP_MEMINFO, 0xC600_0002.
    HypMeminfo,
    /// MEM_SHARE, 0xC600_0003.
    MemShare,
    /// MEM_UNSHARE, 0xC600_0004.
    MemUnshare,
    /// MMIO_GUARD, 0xC600_0007.
    MmioGuard,
    /// PSCI_VERSION, 0x8400_0000.
    PsciVersion,
    /// CPU_SUSPEND, 0xC400_0001 (or SMC32 0x8400_0001).
    PsciCpuSuspend,
    /// CPU_OFF, 0x8400_0002.
    PsciCpuOff,
    /// CPU_ON, 0xC400_0003 (or SMC32 0x8400_0003).
    PsciCpuOn,
    /// AFFINITY_INFO, 0xC400_0004 (or SMC32 0x8400_0004).
    PsciAffinityInfo,
    /// MIGRATE_INFO_TYPE, 0x8400_0006.
    PsciMigrateInfoType,
    /// SYSTEM_OFF, 0x8400_0008.
    PsciSystemOff,
    /// SYSTEM_RESET, 0x8400_0009.
    PsciSystemReset,
    /// PSCI_FEATURES, 0x8400_000A.
    PsciFeatures,
}

impl GuestCallId {
    /// Every guest call, in declaration order.
    pub const ALL: [GuestCallId; 17] = [
        GuestCallId::SmcccVersion,
        GuestCallId::SmcccArchFeatures,
        GuestCallId::VendorHypCallUid,
        GuestCallId::VendorHypKvmFeatures,
        GuestCallId::HypMeminfo,
        GuestCallId::MemShare,
        GuestCallId::MemUnshare,
        GuestCallId::MmioGuard,
        GuestCallId::PsciVersion,
        GuestCallId::PsciCpuSuspend,
        GuestCallId::PsciCpuOff,
        GuestCallId::PsciCpuOn,
        GuestCallId::PsciAffinityInfo,
        GuestCallId::PsciMigrateInfoType,
        GuestCallId::PsciSystemOff,
        GuestCallId::PsciSystemReset,
        GuestCallId::PsciFeatures,
    ];

    /// The call a guest's x0 names, if the hypervisor handles it. PSCI calls
    /// that have an SMC64 form are accepted in both forms.
    pub const fn from_id(id: u64) -> Option<Self> {
        let call = match id {
            0x8000_0000 => GuestCallId::SmcccVersion,
            0x8000_0001 => GuestCallId::SmcccArchFeatures,
            0x8600_FF01 => GuestCallId::VendorHypCallUid,
            0x8600_0000 => GuestCallId::VendorHypKvmFeatures,
            0xC600_0002 => GuestCallId::HypMeminfo,
            0xC600_0003 => GuestCallId::MemShare,
            0xC600_0004 => GuestCallId::MemUnshare,
            0xC600_0007 => GuestCallId::MmioGuard,
            0x8400_0000 => GuestCallId::PsciVersion,
            0x8400_0001 | 0xC400_0001 => GuestCallId::PsciCpuSuspend,
            0x8400_0002 => GuestCallId::PsciCpuOff,
            0x8400_0003 | 0xC400_0003 => GuestCallId::PsciCpuOn,
            0x8400_0004 | 0xC400_0004 => GuestCallId::PsciAffinityInfo,
            0x8400_0006 => GuestCallId::PsciMigrateInfoType,
            0x8400_0008 => GuestCallId::PsciSystemOff,
            0x8400_0009 => GuestCallId::PsciSystemReset,
            0x8400_000A => GuestCallId::PsciFeatures,
            _ => return None,
        };
        Some(call)
    }

    /// The canonical function ID: the SMC64 form for calls that have one,
    /// as SMCCC 1.1 guests use.
    pub const fn id(self) -> u32 {
        match self {
            GuestCallId::SmcccVersion => 0x8000_0000,
            GuestCallId::SmcccArchFeatures => 0x8000_0001,
            GuestCallId::VendorHypCallUid => 0x8600_FF01,
            GuestCallId::VendorHypKvmFeatures => 0x8600_0000,
            GuestCallId::HypMeminfo => 0xC600_0002,
            GuestCallId::MemShare => 0xC600_0003,
            GuestCallId::MemUnshare => 0xC600_0004,
            GuestCallId::MmioGuard => 0xC600_0007,
            GuestCallId::PsciVersion => 0x8400_0000,
            GuestCallId::PsciCpuSuspend => 0xC400_0001,
            GuestCallId::PsciCpuOff => 0x8400_0002,
            GuestCallId::PsciCpuOn => 0xC400_0003,
            GuestCallId::PsciAffinityInfo => 0xC400_0004,
            GuestCallId::PsciMigrateInfoType => 0x8400_0006,
            GuestCallId::PsciSystemOff => 0x8400_0008,
            GuestCallId::PsciSystemReset => 0x8400_0009,
            GuestCallId::PsciFeatures => 0x8400_000A,
        }
    }

    /// The SMC32 function ID of a PSCI call that has both forms, `None` for
    /// every other call.
    pub const fn smc32_alias(self) -> Option<u32> {
        match self {
            GuestCallId::PsciCpuSuspend => Some(0x8400_0001),
            GuestCallId::PsciCpuOn => Some(0x8400_0003),
            GuestCallId::PsciAffinityInfo => Some(0x8400_0004),
            _ => None,
        }
    }

    /// Whether this is a PSCI call.
    pub const fn is_psci(self) -> bool {
        matches!(
            self,
            GuestCallId::PsciVersion
                | GuestCallId::PsciCpuSuspend
                | GuestCallId::PsciCpuOff
                | GuestCallId::PsciCpuOn
                | GuestCallId::PsciAffinityInfo
                | GuestCallId::PsciMigrateInfoType
                | GuestCallId::PsciSystemOff
                | GuestCallId::PsciSystemReset
                | GuestCallId::PsciFeatures
        )
    }

    /// The spelling used by ABI.md (PSCI calls by their PSCI names).
    pub const fn name(self) -> &'static str {
        match self {
            GuestCallId::SmcccVersion => "SMCCC_VERSION",
            GuestCallId::SmcccArchFeatures => "SMCCC_ARCH_FEATURES",
            GuestCallId::VendorHypCallUid => "VENDOR_HYP_CALL_UID",
            GuestCallId::VendorHypKvmFeatures => "VENDOR_HYP_KVM_FEATURES",
            GuestCallId::HypMeminfo => "HYP_MEMINFO",
            GuestCallId::MemShare => "MEM_SHARE",
            GuestCallId::MemUnshare => "MEM_UNSHARE",
            GuestCallId::MmioGuard => "MMIO_GUARD",
            GuestCallId::PsciVersion => "PSCI_VERSION",
            GuestCallId::PsciCpuSuspend => "CPU_SUSPEND",
            GuestCallId::PsciCpuOff => "CPU_OFF",
            GuestCallId::PsciCpuOn => "CPU_ON",
            GuestCallId::PsciAffinityInfo => "AFFINITY_INFO",
            GuestCallId::PsciMigrateInfoType => "MIGRATE_INFO_TYPE",
            GuestCallId::PsciSystemOff => "SYSTEM_OFF",
            GuestCallId::PsciSystemReset => "SYSTEM_RESET",
            GuestCallId::PsciFeatures => "PSCI_FEATURES",
        }
    }

    /// The call spelt `name`; PSCI calls may also carry a `PSCI_` prefix
    /// ("PSCI_CPU_ON").
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(call) = Self::ALL.into_iter().find(|call| call.name() == name) {
            return Some(call);
        }
        let bare = name.strip_prefix("PSCI_")?;
        Self::ALL
            .into_iter()
            .find(|call| call.is_psci() && !call.name().starts_with("PSCI_") && call.name() == bare)
    }
}
