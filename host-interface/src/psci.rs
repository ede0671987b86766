//! PSCI return codes and constants the hypervisor answers guests with
//! (ABI.md 2, the PSCI 1.1 row). Values are the PSCI spec's signed codes as
//! they appear in x0.

/// PSCI version 1.1, as PSCI_VERSION returns it (`major << 16 | minor`).
pub const PSCI_VERSION_1_1: u64 = 0x1_0001;

/// The call succeeded.
pub const SUCCESS: u64 = 0;
/// The function is not implemented (-1).
pub const NOT_SUPPORTED: u64 = (-1i64) as u64;
/// A parameter is invalid (-2).
pub const INVALID_PARAMETERS: u64 = (-2i64) as u64;
/// The call is not allowed (-3).
pub const DENIED: u64 = (-3i64) as u64;
/// CPU_ON on a vCPU that is already on (-4).
pub const ALREADY_ON: u64 = (-4i64) as u64;
/// CPU_ON on a vCPU whose power-on is pending (-5).
pub const ON_PENDING: u64 = (-5i64) as u64;
/// Internal failure (-6).
pub const INTERNAL_FAILURE: u64 = (-6i64) as u64;
/// The target is not present (-7).
pub const NOT_PRESENT: u64 = (-7i64) as u64;
/// The target is disabled (-8).
pub const DISABLED: u64 = (-8i64) as u64;

/// AFFINITY_INFO answer: the target is on.
pub const AFFINITY_ON: u64 = 0;
/// AFFINITY_INFO answer: the target is off.
pub const AFFINITY_OFF: u64 = 1;
/// AFFINITY_INFO answer: the target's power-on is pending.
pub const AFFINITY_ON_PENDING: u64 = 2;

/// MIGRATE_INFO_TYPE answer: no Trusted OS needs migration (ABI.md 2:
/// "returns 2").
pub const MIGRATE_INFO_TYPE_NOT_REQUIRED: u64 = 2;
