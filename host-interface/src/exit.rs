//! VCPU_RUN exit reasons (ABI.md 2.3), returned in x2 and mirrored in the
//! run page's `exit_reason`.

wire_enum! {
    /// Why VCPU_RUN returned to the host (ABI.md 2.3).
    pub enum ExitReason: u64 {
        /// Data abort on a MMIO_GUARD page; details in the run page.
        Mmio = 1 => "MMIO",
        /// Access to an IPA with nothing mapped, or without the permission
        /// the access needs.
        MemFault = 2 => "MEM_FAULT",
        /// A guest call the hypervisor does not handle itself.
        Hvc = 3 => "HVC",
        /// Guest PSCI SYSTEM_OFF or SYSTEM_RESET.
        SystemEvent = 4 => "SYSTEM_EVENT",
        /// A physical interrupt for the host arrived while the guest ran.
        Interrupted = 5 => "INTERRUPTED",
        /// The guest is idle.
        Wfi = 6 => "WFI",
        /// The guest did something the hypervisor cannot continue.
        Fatal = 7 => "FATAL",
    }
}

impl ExitReason {
    /// The exit reason with wire value `value` (x2 of VCPU_RUN).
    pub const fn from_u64(value: u64) -> Option<Self> {
        Self::from_value(value)
    }
}
