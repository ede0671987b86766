//! The run page (ABI.md 1, VCPU_CREATE, and 2.3): one 4 KiB host page per
//! vCPU, shared with the hypervisor, through which VCPU_RUN reports exit
//! details to the host and takes MMIO read data, forwarded-call results and
//! interrupt requests back.
//!
//! The host writes this page at any time, so the hypervisor reads each field
//! once, as untrusted input, and never keeps a reference into it.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::PAGE_SIZE;

/// Bits of [`RunPage::fault_flags`].
pub mod fault_flags {
    /// The access was a write.
    pub const WRITE: u64 = 1 << 0;
    /// The access was an instruction fetch.
    pub const EXEC: u64 = 1 << 1;
    /// [`RunPage::fault_esr`](super::RunPage::fault_esr) and `fault_data`
    /// describe the access so the host may emulate it (normal VMs only).
    pub const SYNDROME_VALID: u64 = 1 << 2;
}

/// Values of [`RunPage::system_event`].
pub mod system_event {
    /// Guest PSCI SYSTEM_OFF.
    pub const OFF: u64 = 0;
    /// Guest PSCI SYSTEM_RESET.
    pub const RESET: u64 = 1;
}

/// Fields of [`RunPage::inject_irq`].
pub mod inject_irq {
    /// Bit 31: the request is valid.
    pub const VALID: u64 = 1 << 31;
    /// Bits 0..=9: the INTID to inject.
    pub const INTID_MASK: u64 = 0x3FF;
}

/// What the host asked for in [`RunPage::inject_irq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqRequest {
    /// Zero: nothing to inject.
    None,
    /// Inject this INTID: an SGI, PPI or SPI (0..=[`MAX_INJECT_INTID`]).
    Inject(u32),
    /// Anything else: bits outside VALID and INTID, no VALID bit with other
    /// bits set, or a special INTID (1020..=1023). VCPU_RUN is -EINVAL.
    Malformed,
}

/// The largest INTID the host may inject (1020..=1023 are special INTIDs).
pub const MAX_INJECT_INTID: u32 = 1019;

impl IrqRequest {
    /// Reads a raw `inject_irq` value.
    pub const fn decode(value: u64) -> Self {
        if value == 0 {
            IrqRequest::None
        } else if value & inject_irq::VALID == 0
            || value & !(inject_irq::VALID | inject_irq::INTID_MASK) != 0
            || value & inject_irq::INTID_MASK > MAX_INJECT_INTID as u64
        {
            IrqRequest::Malformed
        } else {
            // Masked to 10 bits: the cast cannot truncate.
            IrqRequest::Inject((value & inject_irq::INTID_MASK) as u32)
        }
    }

    /// The raw value asking to inject `intid`; `None` for an INTID the host
    /// may not inject.
    pub const fn encode(intid: u32) -> Option<u64> {
        if intid > MAX_INJECT_INTID {
            None
        } else {
            Some(inject_irq::VALID | intid as u64)
        }
    }
}

/// Number of reserved words that pad [`RunPage`] to one page.
pub const RUN_PAGE_RESERVED_WORDS: usize = 488;

/// The layout of a vCPU's run page (ABI.md 1 "VCPU_CREATE", 2.3). All fields
/// are native-endian (little-endian on arm64) u64 words at fixed offsets;
/// "in" means written by the host before VCPU_RUN, "out" written by the
/// hypervisor at an exit.
#[derive(Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RunPage {
    /// In: the first entry point IPA, read at the vCPU's first VCPU_RUN (EL1,
    /// MMU off). Offset 0.
    pub entry: u64,
    /// In: x0 at the first run. Offset 8.
    pub x0: u64,
    /// Out: the [`ExitReason`](crate::ExitReason) value of the last exit.
    /// Offset 16.
    pub exit_reason: u64,
    /// Out: faulting IPA of an MMIO or MEM_FAULT exit. Offset 24.
    pub fault_ipa: u64,
    /// Out: [`fault_flags`] bits. Offset 32.
    pub fault_flags: u64,
    /// Out: access size in bytes (1, 2, 4 or 8). Offset 40.
    pub fault_size: u64,
    /// Out: ESR_EL2 of the access (normal VMs only, else 0). Offset 48.
    pub fault_esr: u64,
    /// Out: write data of an MMIO write or an emulatable normal-VM write.
    /// Offset 56.
    pub fault_data: u64,
    /// In: data completing an MMIO read, written before the next VCPU_RUN.
    /// Offset 64.
    pub mmio_read_data: u64,
    /// Out: x0..x6 of a guest call forwarded as an HVC exit. Offset 72.
    pub hvc_args: [u64; 7],
    /// In: x0..x3 results of the forwarded call, written before the next
    /// VCPU_RUN. Offset 128.
    pub hvc_results: [u64; 4],
    /// Out: [`system_event`] type of a SYSTEM_EVENT exit. Offset 160.
    pub system_event: u64,
    /// In: an interrupt to inject at the next VCPU_RUN ([`inject_irq`],
    /// [`IrqRequest`]). VCPU_RUN takes it (and writes 0 back) before it
    /// enters the guest; a malformed value is -EINVAL and stays. Offset 168.
    pub inject_irq: u64,
    /// Out, at every exit: the physical counter value (CNTPCT_EL0) at which
    /// the guest's virtual timer fires, `u64::MAX` when it is disabled or
    /// masked. A host that gets a WFI exit can sleep until then or until it
    /// has an interrupt to inject. Offset 176.
    pub timer_deadline: u64,
    /// Out, at every exit: bit n set when this run sent an SGI to vCPU n of
    /// the same VM (which the hypervisor keeps for that vCPU's next run);
    /// such a run ends INTERRUPTED so the host can run or wake them.
    /// Offset 184.
    pub kick_vcpus: u64,
    /// Reserved, zero. Pads the page to 4096 bytes. Offset 192.
    pub reserved: [u64; RUN_PAGE_RESERVED_WORDS],
}

const_assert_eq!(core::mem::size_of::<RunPage>() as u64, PAGE_SIZE);
const_assert_eq!(core::mem::offset_of!(RunPage, entry), 0);
const_assert_eq!(core::mem::offset_of!(RunPage, x0), 8);
const_assert_eq!(core::mem::offset_of!(RunPage, exit_reason), 16);
const_assert_eq!(core::mem::offset_of!(RunPage, fault_ipa), 24);
const_assert_eq!(core::mem::offset_of!(RunPage, fault_flags), 32);
const_assert_eq!(core::mem::offset_of!(RunPage, fault_size), 40);
const_assert_eq!(core::mem::offset_of!(RunPage, fault_esr), 48);
const_assert_eq!(core::mem::offset_of!(RunPage, fault_data), 56);
const_assert_eq!(core::mem::offset_of!(RunPage, mmio_read_data), 64);
const_assert_eq!(core::mem::offset_of!(RunPage, hvc_args), 72);
const_assert_eq!(core::mem::offset_of!(RunPage, hvc_results), 128);
const_assert_eq!(core::mem::offset_of!(RunPage, system_event), 160);
const_assert_eq!(core::mem::offset_of!(RunPage, inject_irq), 168);
const_assert_eq!(core::mem::offset_of!(RunPage, timer_deadline), 176);
const_assert_eq!(core::mem::offset_of!(RunPage, kick_vcpus), 184);
const_assert_eq!(core::mem::offset_of!(RunPage, reserved), 192);
const_assert_eq!(core::mem::align_of::<RunPage>(), 8);

impl Default for RunPage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}
