//! Guests' self-hosted debug registers: the op0 = 2, op1 = 0 system
//! register space (MDSCR_EL1, OSLAR_EL1, OSDLR_EL1, DBGBCR<n>_EL1,
//! DBGBVR<n>_EL1, DBGWCR<n>_EL1, DBGWVR<n>_EL1, ...), which MDCR_EL2.TDA
//! and TDOSA trap to EL2.
//!
//! Guests get no self-hosted debug, but a kernel resets these registers as
//! it boots (Linux: `__cpu_setup` writes MDSCR_EL1, `clear_os_lock`
//! OSLAR_EL1 and OSDLR_EL1, `hw_breakpoint_reset` every breakpoint and
//! watchpoint register). Such a write is ignored and the guest goes on:
//! the hardware registers stay as the hypervisor keeps them, so nothing of
//! the host's or another guest's state is reached. A read stays
//! unemulated (the VM ends FATAL, as before): no value would tell the
//! guest the truth about registers it does not have.

/// Whether a trapped MSR (a write) to `(op0, op1)` is one of the debug
/// registers whose writes are ignored. The EL0 debug communication
/// registers (op1 = 3: MDCCSR_EL0, DBGDTR_EL0, ...) are not among them.
pub fn write_ignored(op0: u64, op1: u64) -> bool {
    op0 == 2 && op1 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn el1_debug_writes_only() {
        // MDSCR_EL1 (2,0,0,2,2), OSLAR_EL1 (2,0,1,0,4), DBGBCR0_EL1 (2,0,0,0,5).
        assert!(write_ignored(2, 0));
        // DBGDTR_EL0 (2,3,0,4,0) and the ordinary system registers (op0 3).
        assert!(!write_ignored(2, 3));
        assert!(!write_ignored(3, 0));
        assert!(!write_ignored(1, 0));
    }
}
