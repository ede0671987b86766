//! The guest's view of the GICv3 virtual CPU interface: which virtual
//! interrupts are waiting for a list register, and what the list registers
//! hold while the vCPU is not running.
//!
//! The host emulates a VM's distributor and redistributors (they are MMIO it
//! sees through exits) and asks for interrupts through the run page's
//! `inject_irq`; the hypervisor owns the list registers, so the host never
//! reads or writes a protected guest's interrupt state. The guest's virtual
//! timer is the hypervisor's to deliver: the host cannot see a protected
//! guest's timer. Its list register is hardware-linked to the physical
//! timer interrupt, so the guest's deactivation deactivates the physical
//! one, as the architecture intends for a directly-driven timer.
//!
//! Everything here is plain data and decisions; the EL2 executor moves
//! [`VgicContext::lr`] in and out of the `ICH_LR<n>_EL2` registers and keeps
//! the physical interrupt active while a hardware-linked entry is live.

/// The most list registers GICv3 has (ICH_VTR_EL2.ListRegs is 4 bits).
pub const MAX_LRS: usize = 16;
/// Active-priority registers per group (ICH_AP0R<n>/ICH_AP1R<n>).
pub const MAX_APRS: usize = 4;
pub use host_interface::MAX_INJECT_INTID;
/// Priority of every interrupt the hypervisor puts in a list register (the
/// host's distributor emulation does not pass priorities; this is Linux's
/// default, in the middle of the range).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

const WORDS: usize = (MAX_INJECT_INTID as usize + 1).div_ceil(64);

/// List register fields (ICH_LR<n>_EL2).
pub mod lr {
    /// vINTID, bits 31:0.
    pub const VINTID_MASK: u64 = 0xffff_ffff;
    /// pINTID, bits 41:32 (with HW set).
    pub const PINTID_SHIFT: u32 = 32;
    /// Priority, bits 55:48.
    pub const PRIORITY_SHIFT: u32 = 48;
    /// Group 1.
    pub const GROUP1: u64 = 1 << 60;
    /// Hardware-linked: deactivating the virtual interrupt deactivates pINTID.
    pub const HW: u64 = 1 << 61;
    /// State, bits 63:62.
    pub const STATE_SHIFT: u32 = 62;
    /// State: pending.
    pub const PENDING: u64 = 1;
    /// State: active.
    pub const ACTIVE: u64 = 2;
}

/// The state bits (0 invalid, 1 pending, 2 active, 3 both) of a list register.
pub const fn lr_state(v: u64) -> u64 {
    v >> lr::STATE_SHIFT
}

/// The vINTID of a list register.
pub const fn lr_intid(v: u64) -> u32 {
    (v & lr::VINTID_MASK) as u32
}

/// A group-1 list register with `intid` in `state`, at the default priority;
/// hardware-linked to the same physical INTID when `hw`.
pub const fn make_lr(intid: u32, state: u64, hw: bool) -> u64 {
    let mut v = (intid as u64)
        | ((DEFAULT_PRIORITY as u64) << lr::PRIORITY_SHIFT)
        | lr::GROUP1
        | (state << lr::STATE_SHIFT);
    if hw {
        v |= lr::HW | ((intid as u64 & 0x3ff) << lr::PINTID_SHIFT);
    }
    v
}

/// Whether a virtual timer with control `ctl` (CNTV_CTL_EL0) and compare
/// value `cval` asserts its interrupt at virtual count `now`: enabled, not
/// masked, and reached.
pub const fn timer_asserted(ctl: u64, cval: u64, now: u64) -> bool {
    ctl & 0b11 == 0b01 && now >= cval
}

/// When a virtual timer with `ctl` and `cval` fires, in virtual counts;
/// `u64::MAX` when it is disabled or masked.
pub const fn timer_deadline(ctl: u64, cval: u64) -> u64 {
    if ctl & 0b11 == 0b01 {
        cval
    } else {
        u64::MAX
    }
}

/// One vCPU's virtual CPU interface while it is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgicContext {
    /// ICH_LR<n>_EL2 as the vCPU left them.
    pub lr: [u64; MAX_LRS],
    /// ICH_AP0R<n>_EL2.
    pub ap0r: [u64; MAX_APRS],
    /// ICH_AP1R<n>_EL2.
    pub ap1r: [u64; MAX_APRS],
    /// ICH_VMCR_EL2: the guest's priority mask, group enables, EOI mode.
    pub vmcr: u64,
    /// INTIDs injected by the host that no list register holds yet.
    pending: [u64; WORDS],
}

impl Default for VgicContext {
    fn default() -> Self {
        Self {
            lr: [0; MAX_LRS],
            ap0r: [0; MAX_APRS],
            ap1r: [0; MAX_APRS],
            vmcr: 0,
            pending: [0; WORDS],
        }
    }
}

/// What [`VgicContext::flush`] decided beyond the list registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Some interrupt found no free list register: ask for a maintenance
    /// interrupt once list registers free up, so the guest is re-entered
    /// with the rest.
    pub overflow: bool,
    /// The timer asserts or a hardware-linked list register holds its
    /// interrupt: the physical timer interrupt must be active while the
    /// guest runs, so it does not signal again until the guest deactivates
    /// it (or, with no list register for it yet, until the next entry).
    pub mask_timer: bool,
}

impl VgicContext {
    /// Record `intid` as injected (coalesced with an earlier, unserved one).
    /// `false` for an INTID the host may not inject.
    pub fn inject(&mut self, intid: u32) -> bool {
        if intid > MAX_INJECT_INTID {
            return false;
        }
        self.pending[intid as usize / 64] |= 1 << (intid % 64);
        true
    }

    /// Whether `intid` waits for a list register.
    pub fn is_queued(&self, intid: u32) -> bool {
        intid <= MAX_INJECT_INTID && self.pending[intid as usize / 64] & (1 << (intid % 64)) != 0
    }

    /// Whether some injected interrupt waits for a list register.
    pub fn has_queued(&self) -> bool {
        self.pending.iter().any(|&w| w != 0)
    }

    /// Whether some interrupt is pending for the guest: queued, or pending
    /// in a list register of the first `nr_lrs`.
    pub fn any_pending(&self, nr_lrs: usize) -> bool {
        self.pending.iter().any(|&w| w != 0)
            || self.lr[..nr_lrs.min(MAX_LRS)]
                .iter()
                .any(|&v| lr_state(v) & lr::PENDING != 0)
    }

    /// How many of the first `nr_lrs` list registers are in use: up to and
    /// including the last valid one.
    pub fn used_lrs(&self, nr_lrs: usize) -> usize {
        self.lr[..nr_lrs.min(MAX_LRS)]
            .iter()
            .rposition(|&v| lr_state(v) != 0)
            .map_or(0, |n| n + 1)
    }

    fn find(&self, nr_lrs: usize, intid: u32) -> Option<usize> {
        self.lr[..nr_lrs]
            .iter()
            .position(|&v| lr_state(v) != 0 && lr_intid(v) == intid)
    }

    fn free(&self, nr_lrs: usize) -> Option<usize> {
        self.lr[..nr_lrs].iter().position(|&v| lr_state(v) == 0)
    }

    /// Before entering the guest: give the timer interrupt `timer_intid` a
    /// hardware-linked list register if the timer asserts (`timer_level`),
    /// withdraw a still-pending one if it no longer does, then move queued
    /// injections into free list registers of the first `nr_lrs`, lowest
    /// INTID first. An INTID a list register already holds is made pending
    /// there (pending and active if the guest is handling it).
    pub fn flush(&mut self, nr_lrs: usize, timer_intid: u32, timer_level: bool) -> Flush {
        let nr_lrs = nr_lrs.min(MAX_LRS);
        match self.find(nr_lrs, timer_intid) {
            Some(n) if !timer_level && lr_state(self.lr[n]) == lr::PENDING => self.lr[n] = 0,
            Some(_) => {}
            None if timer_level => {
                if let Some(n) = self.free(nr_lrs) {
                    self.lr[n] = make_lr(timer_intid, lr::PENDING, true);
                }
            }
            None => {}
        }
        let mut overflow = false;
        for w in 0..WORDS {
            while self.pending[w] != 0 {
                let bit = self.pending[w].trailing_zeros();
                let intid = (w * 64) as u32 + bit;
                let slot = match self.find(nr_lrs, intid) {
                    Some(n) => {
                        self.lr[n] |= lr::PENDING << lr::STATE_SHIFT;
                        Some(n)
                    }
                    None => self.free(nr_lrs).inspect(|&n| {
                        self.lr[n] = make_lr(intid, lr::PENDING, false);
                    }),
                };
                if slot.is_none() {
                    overflow = true;
                    break;
                }
                self.pending[w] &= !(1 << bit);
            }
            if overflow {
                break;
            }
        }
        let timer_lr = self.find(nr_lrs, timer_intid);
        let linked = timer_lr.is_some_and(|n| self.lr[n] & lr::HW != 0);
        Flush {
            overflow: overflow || (timer_level && timer_lr.is_none()),
            mask_timer: timer_level || linked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMER: u32 = 27;

    fn states(g: &VgicContext, n: usize) -> alloc::vec::Vec<(u32, u64, bool)> {
        g.lr[..n]
            .iter()
            .filter(|&&v| lr_state(v) != 0)
            .map(|&v| (lr_intid(v), lr_state(v), v & lr::HW != 0))
            .collect()
    }

    #[test]
    fn injected_interrupts_fill_free_list_registers_in_intid_order() {
        let mut g = VgicContext::default();
        assert!(g.inject(40));
        assert!(g.inject(3));
        assert!(g.inject(40), "a second injection coalesces");
        let f = g.flush(4, TIMER, false);
        assert_eq!(
            f,
            Flush {
                overflow: false,
                mask_timer: false
            }
        );
        assert_eq!(states(&g, 4), [(3, 1, false), (40, 1, false)]);
        assert!(!g.is_queued(40) && !g.is_queued(3));
        let v = g.lr[0];
        assert_eq!(v >> lr::PRIORITY_SHIFT & 0xff, u64::from(DEFAULT_PRIORITY));
        assert_ne!(v & lr::GROUP1, 0);
    }

    #[test]
    fn intids_of_every_pending_word_reach_list_registers_as_themselves() {
        let mut g = VgicContext::default();
        for intid in [MAX_INJECT_INTID, 100, 64, 63] {
            assert!(g.inject(intid));
        }
        assert!(!g.flush(4, TIMER, false).overflow);
        assert_eq!(
            states(&g, 4),
            [
                (63, 1, false),
                (64, 1, false),
                (100, 1, false),
                (MAX_INJECT_INTID, 1, false)
            ]
        );
    }

    #[test]
    fn special_and_out_of_range_intids_are_refused() {
        let mut g = VgicContext::default();
        for intid in [1020, 1023, 1024, u32::MAX] {
            assert!(!g.inject(intid));
        }
        assert_eq!(g, VgicContext::default());
        assert!(g.inject(MAX_INJECT_INTID));
        assert!(g.is_queued(MAX_INJECT_INTID));
    }

    #[test]
    fn overflow_keeps_the_rest_queued_until_list_registers_free_up() {
        let mut g = VgicContext::default();
        for intid in 32..38 {
            g.inject(intid);
        }
        let f = g.flush(4, TIMER, false);
        assert!(f.overflow);
        assert_eq!(states(&g, 4).len(), 4);
        assert!(g.is_queued(36) && g.is_queued(37));
        assert!(g.any_pending(4));
        // The guest takes and completes two of them.
        g.lr[0] = 0;
        g.lr[2] = 0;
        let f = g.flush(4, TIMER, false);
        assert!(!f.overflow);
        let held: alloc::vec::Vec<u32> = states(&g, 4).iter().map(|s| s.0).collect();
        assert_eq!(held.len(), 4);
        for intid in [33, 35, 36, 37] {
            assert!(held.contains(&intid), "{intid} in {held:?}");
        }
        assert!(!g.is_queued(36) && !g.is_queued(37));
    }

    #[test]
    fn an_active_interrupt_injected_again_becomes_pending_and_active() {
        let mut g = VgicContext::default();
        g.inject(50);
        g.flush(4, TIMER, false);
        // The guest acknowledged it.
        g.lr[0] = make_lr(50, lr::ACTIVE, false);
        g.inject(50);
        g.flush(4, TIMER, false);
        assert_eq!(states(&g, 4), [(50, 3, false)]);
    }

    #[test]
    fn a_pending_interrupt_injected_again_stays_pending_once() {
        let mut g = VgicContext::default();
        g.inject(50);
        g.flush(4, TIMER, false);
        // The guest has not taken it yet.
        g.inject(50);
        assert!(g.is_queued(50));
        let f = g.flush(4, TIMER, false);
        assert!(!f.overflow);
        assert_eq!(states(&g, 4), [(50, 1, false)]);
        assert!(!g.has_queued());
    }

    #[test]
    fn the_timer_gets_a_hardware_linked_list_register_while_it_asserts() {
        let mut g = VgicContext::default();
        let f = g.flush(4, TIMER, true);
        assert!(f.mask_timer && !f.overflow);
        assert_eq!(states(&g, 4), [(TIMER, 1, true)]);
        assert_eq!((g.lr[0] >> lr::PINTID_SHIFT) & 0x3ff, u64::from(TIMER));
        // Still asserting: no second entry.
        g.flush(4, TIMER, true);
        assert_eq!(states(&g, 4).len(), 1);
        // Being handled while the level drops: left to the guest's EOI.
        g.lr[0] = make_lr(TIMER, lr::ACTIVE, true);
        assert!(g.flush(4, TIMER, false).mask_timer);
        assert_eq!(states(&g, 4), [(TIMER, 2, true)]);
        // Pending but no longer asserted: withdrawn.
        g.lr[0] = make_lr(TIMER, lr::PENDING, true);
        let f = g.flush(4, TIMER, false);
        assert!(!f.mask_timer);
        assert!(states(&g, 4).is_empty());
    }

    #[test]
    fn only_a_hardware_linked_timer_entry_keeps_the_timer_masked() {
        let mut g = VgicContext::default();
        // The host injects the timer's INTID itself: an ordinary entry.
        assert!(g.inject(TIMER));
        let f = g.flush(4, TIMER, false);
        assert_eq!(states(&g, 4), [(TIMER, 1, false)]);
        assert!(!f.mask_timer && !f.overflow);
        // The same entry while the timer asserts: masked for the level.
        assert!(g.flush(4, TIMER, true).mask_timer);
    }

    #[test]
    fn the_timer_goes_first_when_list_registers_are_short() {
        let mut g = VgicContext::default();
        for intid in 32..40 {
            g.inject(intid);
        }
        let f = g.flush(2, TIMER, true);
        assert!(f.overflow && f.mask_timer);
        assert_eq!(states(&g, 2), [(TIMER, 1, true), (32, 1, false)]);
    }

    #[test]
    fn an_asserting_timer_with_no_free_list_register_waits_masked() {
        let mut g = VgicContext::default();
        for n in 0..4 {
            g.lr[n] = make_lr(40 + n as u32, lr::ACTIVE, false);
        }
        let f = g.flush(4, TIMER, true);
        assert!(f.overflow, "ask for a maintenance interrupt");
        assert!(
            f.mask_timer,
            "keep the physical timer from trapping meanwhile"
        );
        assert!(states(&g, 4).iter().all(|s| s.0 != TIMER));
    }

    #[test]
    fn list_registers_beyond_the_hardware_are_never_used() {
        let mut g = VgicContext::default();
        for intid in 100..120 {
            g.inject(intid);
        }
        g.flush(3, TIMER, false);
        assert!(g.lr[3..].iter().all(|&v| v == 0));
        g.flush(99, TIMER, false);
        assert!(g.lr.iter().all(|&v| lr_state(v) == 1));
    }

    #[test]
    fn used_and_pending_list_registers() {
        let mut g = VgicContext::default();
        assert_eq!(g.used_lrs(4), 0);
        assert!(!g.any_pending(4));
        g.lr[2] = make_lr(40, lr::ACTIVE, false);
        assert_eq!(g.used_lrs(4), 3, "up to the last valid one");
        assert_eq!(g.used_lrs(2), 0, "only the first nr_lrs count");
        assert!(!g.any_pending(4), "active is not pending");
        g.lr[5] = make_lr(41, lr::PENDING, false);
        assert_eq!(g.used_lrs(99), 6);
        assert!(!g.any_pending(5));
        assert!(g.any_pending(6));
        g.lr[5] = 0;
        g.inject(1);
        assert!(g.any_pending(0), "queued, with no list register yet");
        assert!(g.has_queued());
    }

    #[test]
    fn timer_level_and_deadline() {
        assert!(timer_asserted(0b001, 100, 100));
        assert!(!timer_asserted(0b001, 101, 100));
        assert!(!timer_asserted(0b011, 0, 100), "masked");
        assert!(!timer_asserted(0b000, 0, 100), "disabled");
        assert!(timer_asserted(0b101, 5, 100), "ISTATUS is ignored");
        assert_eq!(timer_deadline(0b001, 77), 77);
        assert_eq!(timer_deadline(0b011, 77), u64::MAX);
        assert_eq!(timer_deadline(0b000, 77), u64::MAX);
    }
}
