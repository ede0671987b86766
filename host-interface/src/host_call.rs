//! Host calls (ABI.md 1): function IDs, the typed call, and decoding of the
//! host's registers (ABI.md 3.1 steps 1 and 2) plus the matching encoder.

use crate::prot::{decode_device_prot, encode_device_prot, MemType, Prot};
use crate::{frame_range_fits, vm_flags, GUEST_IPA_BITS, MAX_PAGES_PER_CALL};

/// The first host-call function ID: `0xC600_0100 + n` (SMC64, fast, vendor
/// hypervisor).
pub const HOST_CALL_BASE: u32 = 0xC600_0100;

/// The last function ID of the host-call range. A guest gets NOT_SUPPORTED
/// for anything in `HOST_CALL_BASE..=HOST_CALL_RANGE_END`.
pub const HOST_CALL_RANGE_END: u32 = 0xC600_01FF;

/// Whether x0 lies in the host-call range 0xC600_0100..=0xC600_01FF, known
/// call or not. All 64 bits are compared: a value with any of bits 63:32 set
/// is outside the range.
pub const fn is_host_call_range(id: u64) -> bool {
    id >= HOST_CALL_BASE as u64 && id <= HOST_CALL_RANGE_END as u64
}

wire_enum! {
    /// A host-call function ID (ABI.md 1, the table's `n` plus
    /// [`HOST_CALL_BASE`]).
    pub enum HostCallId: u32 {
        /// Hypervisor ABI version.
        HypVersion = 0xC600_0100 => "HYP_VERSION",
        /// Feature bits and limits.
        HypFeatures = 0xC600_0101 => "HYP_FEATURES",
        /// Owner, host state and memory class of one page.
        PageQuery = 0xC600_0102 => "PAGE_QUERY",
        /// Share host pages with the hypervisor.
        ShareHyp = 0xC600_0110 => "SHARE_HYP",
        /// Undo SHARE_HYP.
        UnshareHyp = 0xC600_0111 => "UNSHARE_HYP",
        /// Create a VM from donated pages.
        VmCreate = 0xC600_0120 => "VM_CREATE",
        /// Donate more pages to a VM's page-table pool.
        VmTopup = 0xC600_0121 => "VM_TOPUP",
        /// Create a vCPU with a run page.
        VcpuCreate = 0xC600_0122 => "VCPU_CREATE",
        /// Run a vCPU until it exits.
        VcpuRun = 0xC600_0123 => "VCPU_RUN",
        /// Stop a VM; its pages become reclaimable.
        VmDestroy = 0xC600_0124 => "VM_DESTROY",
        /// Scrub reclaimable pages and return them to the host.
        Reclaim = 0xC600_0125 => "RECLAIM",
        /// Share host pages into a guest.
        GuestShare = 0xC600_0130 => "GUEST_SHARE",
        /// Undo GUEST_SHARE.
        GuestUnshare = 0xC600_0131 => "GUEST_UNSHARE",
        /// Give host pages to a guest.
        GuestDonate = 0xC600_0132 => "GUEST_DONATE",
        /// Map device memory into a guest.
        GuestMapDevice = 0xC600_0133 => "GUEST_MAP_DEVICE",
        /// Undo GUEST_MAP_DEVICE (normal VMs only).
        GuestUnmapDevice = 0xC600_0134 => "GUEST_UNMAP_DEVICE",
    }
}

impl HostCallId {
    /// The call a host's x0 names; `None` (NOT_SUPPORTED) for anything not in
    /// the table, including any value with bits 63:32 set.
    pub const fn from_id(id: u64) -> Option<Self> {
        let low = id as u32;
        if low as u64 != id {
            return None;
        }
        Self::from_value(low)
    }

    /// The function ID.
    pub const fn id(self) -> u32 {
        self.value()
    }
}

/// Why host registers do not form a call (ABI.md 3.1 steps 1-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Unknown function ID: x0 = -1 and nothing else is looked at.
    NotSupported,
    /// Malformed arguments: -EINVAL.
    Invalid,
}

/// A host call whose format has been checked (ABI.md 1). Handles and vCPU
/// indices are passed through unchecked; whether they exist is the core's
/// question (-ENOENT, ABI.md 3.1 step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostCall {
    /// HYP_VERSION.
    HypVersion,
    /// HYP_FEATURES.
    HypFeatures,
    /// PAGE_QUERY: one pfn inside the PA space.
    PageQuery {
        /// The frame to ask about.
        pfn: u64,
    },
    /// SHARE_HYP.
    ShareHyp {
        /// First host frame.
        pfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// UNSHARE_HYP.
    UnshareHyp {
        /// First host frame.
        pfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// VM_CREATE.
    VmCreate {
        /// [`vm_flags`] bits; no unknown bit set.
        flags: u64,
        /// First donated host frame.
        pfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// VM_TOPUP.
    VmTopup {
        /// VM handle.
        handle: u64,
        /// First donated host frame.
        pfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// VCPU_CREATE.
    VcpuCreate {
        /// VM handle.
        handle: u64,
        /// Host frame of the run page, already shared with the hypervisor.
        run_pfn: u64,
    },
    /// VCPU_RUN.
    VcpuRun {
        /// VM handle.
        handle: u64,
        /// vCPU index.
        vcpu: u64,
    },
    /// VM_DESTROY.
    VmDestroy {
        /// VM handle.
        handle: u64,
    },
    /// RECLAIM.
    Reclaim {
        /// First host frame.
        pfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// GUEST_SHARE.
    GuestShare {
        /// VM handle.
        handle: u64,
        /// First host frame.
        pfn: u64,
        /// First guest frame, inside the 40-bit IPA space.
        gfn: u64,
        /// Page count, 1..=512.
        nr: u64,
        /// Guest permissions.
        prot: Prot,
    },
    /// GUEST_UNSHARE.
    GuestUnshare {
        /// VM handle.
        handle: u64,
        /// First guest frame.
        gfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
    /// GUEST_DONATE.
    GuestDonate {
        /// VM handle.
        handle: u64,
        /// First host frame.
        pfn: u64,
        /// First guest frame.
        gfn: u64,
        /// Page count, 1..=512.
        nr: u64,
        /// Guest permissions.
        prot: Prot,
    },
    /// GUEST_MAP_DEVICE.
    GuestMapDevice {
        /// VM handle.
        handle: u64,
        /// First host frame.
        pfn: u64,
        /// First guest frame.
        gfn: u64,
        /// Page count, 1..=512.
        nr: u64,
        /// Guest permissions.
        prot: Prot,
        /// Requested memory type (legality is the core's decision).
        memtype: MemType,
    },
    /// GUEST_UNMAP_DEVICE.
    GuestUnmapDevice {
        /// VM handle.
        handle: u64,
        /// First guest frame.
        gfn: u64,
        /// Page count, 1..=512.
        nr: u64,
    },
}

/// Requires every listed register to be zero (unused argument registers).
fn unused(regs: &[u64]) -> Result<(), DecodeError> {
    if regs.iter().all(|&reg| reg == 0) {
        Ok(())
    } else {
        Err(DecodeError::Invalid)
    }
}

/// Checks a page count: 1..=[`MAX_PAGES_PER_CALL`].
fn page_count(nr: u64) -> Result<u64, DecodeError> {
    if (1..=MAX_PAGES_PER_CALL).contains(&nr) {
        Ok(nr)
    } else {
        Err(DecodeError::Invalid)
    }
}

/// Checks that `[pfn, pfn + nr)` lies inside a `pa_bits` physical space.
fn pfn_range(pfn: u64, nr: u64, pa_bits: u32) -> Result<u64, DecodeError> {
    if frame_range_fits(pfn, nr, pa_bits) {
        Ok(pfn)
    } else {
        Err(DecodeError::Invalid)
    }
}

/// Checks that `[gfn, gfn + nr)` lies inside the guest IPA space.
fn gfn_range(gfn: u64, nr: u64) -> Result<u64, DecodeError> {
    if frame_range_fits(gfn, nr, GUEST_IPA_BITS) {
        Ok(gfn)
    } else {
        Err(DecodeError::Invalid)
    }
}

impl HostCall {
    /// Decodes the host's x0..x6 (`regs`, as the host left them) into a call,
    /// following the register table of ABI.md 1. `pa_bits` is the CPU's
    /// physical address size (from ID_AA64MMFR0_EL1.PARange).
    ///
    /// Performs ABI.md 3.1 step 1 (unknown ID: [`DecodeError::NotSupported`],
    /// nothing else checked) and the stateless part of step 2
    /// ([`DecodeError::Invalid`]): unused registers not zero, `nr` outside
    /// 1..=512, pfn range beyond the PA space, gfn range beyond the 40-bit
    /// IPA space, bad `prot`/`memtype`, unknown VM_CREATE flags. MTE asked
    /// on hardware without it is left to the core, which knows the hardware.
    /// Never panics.
    pub fn decode(regs: &[u64; 7], pa_bits: u32) -> Result<HostCall, DecodeError> {
        let [x0, x1, x2, x3, x4, x5, x6] = *regs;
        let id = HostCallId::from_id(x0).ok_or(DecodeError::NotSupported)?;
        let call = match id {
            HostCallId::HypVersion => {
                unused(&[x1, x2, x3, x4, x5, x6])?;
                HostCall::HypVersion
            }
            HostCallId::HypFeatures => {
                unused(&[x1, x2, x3, x4, x5, x6])?;
                HostCall::HypFeatures
            }
            HostCallId::PageQuery => {
                unused(&[x2, x3, x4, x5, x6])?;
                HostCall::PageQuery {
                    pfn: pfn_range(x1, 1, pa_bits)?,
                }
            }
            HostCallId::ShareHyp | HostCallId::UnshareHyp | HostCallId::Reclaim => {
                unused(&[x3, x4, x5, x6])?;
                let nr = page_count(x2)?;
                let pfn = pfn_range(x1, nr, pa_bits)?;
                match id {
                    HostCallId::ShareHyp => HostCall::ShareHyp { pfn, nr },
                    HostCallId::UnshareHyp => HostCall::UnshareHyp { pfn, nr },
                    _ => HostCall::Reclaim { pfn, nr },
                }
            }
            HostCallId::VmCreate => {
                unused(&[x4, x5, x6])?;
                if x1 & !vm_flags::MASK != 0 {
                    return Err(DecodeError::Invalid);
                }
                let nr = page_count(x3)?;
                HostCall::VmCreate {
                    flags: x1,
                    pfn: pfn_range(x2, nr, pa_bits)?,
                    nr,
                }
            }
            HostCallId::VmTopup => {
                unused(&[x4, x5, x6])?;
                let nr = page_count(x3)?;
                HostCall::VmTopup {
                    handle: x1,
                    pfn: pfn_range(x2, nr, pa_bits)?,
                    nr,
                }
            }
            HostCallId::VcpuCreate => {
                unused(&[x3, x4, x5, x6])?;
                HostCall::VcpuCreate {
                    handle: x1,
                    run_pfn: pfn_range(x2, 1, pa_bits)?,
                }
            }
            HostCallId::VcpuRun => {
                unused(&[x3, x4, x5, x6])?;
                HostCall::VcpuRun {
                    handle: x1,
                    vcpu: x2,
                }
            }
            HostCallId::VmDestroy => {
                unused(&[x2, x3, x4, x5, x6])?;
                HostCall::VmDestroy { handle: x1 }
            }
            HostCallId::GuestShare | HostCallId::GuestDonate => {
                unused(&[x6])?;
                let nr = page_count(x4)?;
                let pfn = pfn_range(x2, nr, pa_bits)?;
                let gfn = gfn_range(x3, nr)?;
                let prot = Prot::from_bits(x5).ok_or(DecodeError::Invalid)?;
                if id == HostCallId::GuestShare {
                    HostCall::GuestShare {
                        handle: x1,
                        pfn,
                        gfn,
                        nr,
                        prot,
                    }
                } else {
                    HostCall::GuestDonate {
                        handle: x1,
                        pfn,
                        gfn,
                        nr,
                        prot,
                    }
                }
            }
            HostCallId::GuestMapDevice => {
                unused(&[x6])?;
                let nr = page_count(x4)?;
                let pfn = pfn_range(x2, nr, pa_bits)?;
                let gfn = gfn_range(x3, nr)?;
                let (prot, memtype) = decode_device_prot(x5).ok_or(DecodeError::Invalid)?;
                HostCall::GuestMapDevice {
                    handle: x1,
                    pfn,
                    gfn,
                    nr,
                    prot,
                    memtype,
                }
            }
            HostCallId::GuestUnshare | HostCallId::GuestUnmapDevice => {
                unused(&[x4, x5, x6])?;
                let nr = page_count(x3)?;
                let gfn = gfn_range(x2, nr)?;
                if id == HostCallId::GuestUnshare {
                    HostCall::GuestUnshare {
                        handle: x1,
                        gfn,
                        nr,
                    }
                } else {
                    HostCall::GuestUnmapDevice {
                        handle: x1,
                        gfn,
                        nr,
                    }
                }
            }
        };
        Ok(call)
    }

    /// The registers x0..x6 that make this call, for callers (test host,
    /// simulator). For a valid call, `decode(&call.encode(), pa_bits)` gives
    /// the call back; fields out of range are encoded as they are, so the
    /// hypervisor's rejection of them can be tested.
    pub fn encode(&self) -> [u64; 7] {
        let id = u64::from(self.id().id());
        let args: [u64; 6] = match *self {
            HostCall::HypVersion | HostCall::HypFeatures => [0; 6],
            HostCall::PageQuery { pfn } => [pfn, 0, 0, 0, 0, 0],
            HostCall::ShareHyp { pfn, nr }
            | HostCall::UnshareHyp { pfn, nr }
            | HostCall::Reclaim { pfn, nr } => [pfn, nr, 0, 0, 0, 0],
            HostCall::VmCreate { flags, pfn, nr } => [flags, pfn, nr, 0, 0, 0],
            HostCall::VmTopup { handle, pfn, nr } => [handle, pfn, nr, 0, 0, 0],
            HostCall::VcpuCreate { handle, run_pfn } => [handle, run_pfn, 0, 0, 0, 0],
            HostCall::VcpuRun { handle, vcpu } => [handle, vcpu, 0, 0, 0, 0],
            HostCall::VmDestroy { handle } => [handle, 0, 0, 0, 0, 0],
            HostCall::GuestShare {
                handle,
                pfn,
                gfn,
                nr,
                prot,
            }
            | HostCall::GuestDonate {
                handle,
                pfn,
                gfn,
                nr,
                prot,
            } => [handle, pfn, gfn, nr, prot.bits(), 0],
            HostCall::GuestMapDevice {
                handle,
                pfn,
                gfn,
                nr,
                prot,
                memtype,
            } => [handle, pfn, gfn, nr, encode_device_prot(prot, memtype), 0],
            HostCall::GuestUnshare { handle, gfn, nr }
            | HostCall::GuestUnmapDevice { handle, gfn, nr } => [handle, gfn, nr, 0, 0, 0],
        };
        let [x1, x2, x3, x4, x5, x6] = args;
        [id, x1, x2, x3, x4, x5, x6]
    }

    /// The function ID of this call.
    pub const fn id(&self) -> HostCallId {
        match self {
            HostCall::HypVersion => HostCallId::HypVersion,
            HostCall::HypFeatures => HostCallId::HypFeatures,
            HostCall::PageQuery { .. } => HostCallId::PageQuery,
            HostCall::ShareHyp { .. } => HostCallId::ShareHyp,
            HostCall::UnshareHyp { .. } => HostCallId::UnshareHyp,
            HostCall::VmCreate { .. } => HostCallId::VmCreate,
            HostCall::VmTopup { .. } => HostCallId::VmTopup,
            HostCall::VcpuCreate { .. } => HostCallId::VcpuCreate,
            HostCall::VcpuRun { .. } => HostCallId::VcpuRun,
            HostCall::VmDestroy { .. } => HostCallId::VmDestroy,
            HostCall::Reclaim { .. } => HostCallId::Reclaim,
            HostCall::GuestShare { .. } => HostCallId::GuestShare,
            HostCall::GuestUnshare { .. } => HostCallId::GuestUnshare,
            HostCall::GuestDonate { .. } => HostCallId::GuestDonate,
            HostCall::GuestMapDevice { .. } => HostCallId::GuestMapDevice,
            HostCall::GuestUnmapDevice { .. } => HostCallId::GuestUnmapDevice,
        }
    }
}
