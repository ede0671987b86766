//! HYP_FEATURES bits (ABI.md 1, "HYP_FEATURES bits"), returned in x2. A bit is
//! set only when every CPU has the feature.

/// ID_AA64MMFR2_EL1.FWB != 0 and HCR_EL2.FWB in use.
pub const FWB: u64 = 1 << 0;
/// CTR_EL0.DIC == 1.
pub const DIC: u64 = 1 << 1;
/// CTR_EL0.IDC == 1.
pub const IDC: u64 = 1 << 2;
/// ID_AA64PFR1_EL1.MTE >= 2.
pub const MTE: u64 = 1 << 3;
/// FWB and DIC both set: COHERENT memory may be mapped cacheable (D3).
pub const CACHEABLE_DEVICE: u64 = 1 << 4;
/// Every defined bit.
pub const MASK: u64 = FWB | DIC | IDC | MTE | CACHEABLE_DEVICE;

/// Every feature bit with its lower-case name, in bit order.
pub const ALL: [(u64, &str); 5] = [
    (FWB, "fwb"),
    (DIC, "dic"),
    (IDC, "idc"),
    (MTE, "mte"),
    (CACHEABLE_DEVICE, "cacheable_device"),
];

/// The bit named `name` ("fwb", "dic", "idc", "mte", "cacheable_device").
pub fn from_name(name: &str) -> Option<u64> {
    ALL.iter()
        .find(|(_, text)| *text == name)
        .map(|(bit, _)| *bit)
}

/// The name of a single feature bit, `None` for anything else.
pub fn name(bit: u64) -> Option<&'static str> {
    ALL.iter()
        .find(|(value, _)| *value == bit)
        .map(|(_, text)| *text)
}
