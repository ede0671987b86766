//! The userspace API of `/dev/pkvm-rs`, mirrored from
//! `driver/include/uapi/pkvm_rs.h` (the one source of the layout; see
//! docs/DRIVER.md). Sizes and offsets are checked at compile time, and
//! the run page is the hypervisor's own layout from `host-interface`.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;

pub use host_interface::RunPage;

/// `PKVM_RS_API_VERSION`.
pub const API_VERSION: u32 = 1;
/// `PKVM_RS_IOCTL_TYPE`.
const IOCTL_TYPE: u64 = 0xB7;

/// `struct pkvm_rs_version`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Version {
    pub api_version: u32,
    pub hyp_version: u32,
    pub hyp_features: u64,
    pub max_vms: u32,
    pub max_vcpus: u32,
}

/// `struct pkvm_rs_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Stats {
    pub pages_allocated: u64,
    pub pages_pinned: u64,
    pub pages_leaked: u64,
    pub vms: u64,
    pub pages_not_zeroed: u64,
}

/// `struct pkvm_rs_page_info`: PKVM_RS_PAGE_QUERY and PKVM_RS_GUEST_PAGE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PageInfo {
    pub ipa: u64,
    pub pfn: u64,
    pub owner: u32,
    pub host_state: u32,
    pub mem_class: u32,
    pub reserved: u32,
}

/// `struct pkvm_rs_create_vm`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CreateVm {
    pub flags: u64,
}

/// `PKVM_RS_VM_PROTECTED`.
pub const VM_PROTECTED: u64 = 1 << 0;

/// `struct pkvm_rs_memory`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Memory {
    pub guest_phys: u64,
    pub size: u64,
    pub userspace_addr: u64,
    pub image_size: u64,
    pub prot: u64,
}

/// `PKVM_RS_PROT_R | _W | _X`.
pub const PROT_RWX: u64 = 0b111;

/// `PKVM_RS_EXIT_*`.
pub mod exit {
    pub const MMIO: u64 = 1;
    pub const MEM_FAULT: u64 = 2;
    pub const HVC: u64 = 3;
    pub const SYSTEM_EVENT: u64 = 4;
    pub const INTERRUPTED: u64 = 5;
    pub const WFI: u64 = 6;
    pub const FATAL: u64 = 7;
}

/// `PKVM_RS_FAULT_*`.
pub mod fault {
    pub const WRITE: u64 = 1 << 0;
    pub const EXEC: u64 = 1 << 1;
    pub const SYNDROME_VALID: u64 = 1 << 2;
}

/// `PKVM_RS_SYSTEM_EVENT_*`.
pub mod system_event {
    pub const OFF: u64 = 0;
    pub const RESET: u64 = 1;
}

/// `PKVM_RS_RUN_PAGE_SIZE`.
pub const RUN_PAGE_SIZE: usize = 4096;

// Linux's generic _IOC encoding (arm64 uses it): dir in bits 30-31, size
// in 16-29, type in 8-15, number in 0-7.
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOCTL_TYPE << 8) | nr
}

pub const GET_VERSION: u64 = ioc(IOC_READ, 0x00, size_of::<Version>());
pub const GET_STATS: u64 = ioc(IOC_READ, 0x01, size_of::<Stats>());
pub const CREATE_VM: u64 = ioc(IOC_WRITE, 0x02, size_of::<CreateVm>());
pub const PAGE_QUERY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<PageInfo>());
pub const SET_MEMORY: u64 = ioc(IOC_WRITE, 0x10, size_of::<Memory>());
pub const CREATE_VCPU: u64 = ioc(0, 0x11, 0);
pub const KICK_VCPU: u64 = ioc(0, 0x12, 0);
pub const GUEST_PAGE: u64 = ioc(IOC_READ | IOC_WRITE, 0x13, size_of::<PageInfo>());
pub const RUN: u64 = ioc(0, 0x20, 0);

const_assert_eq!(size_of::<Version>(), 24);
const_assert_eq!(offset_of!(Version, hyp_features), 8);
const_assert_eq!(offset_of!(Version, max_vms), 16);
const_assert_eq!(offset_of!(Version, max_vcpus), 20);
const_assert_eq!(size_of::<Stats>(), 40);
const_assert_eq!(offset_of!(Stats, vms), 24);
const_assert_eq!(offset_of!(Stats, pages_not_zeroed), 32);
const_assert_eq!(size_of::<PageInfo>(), 32);
const_assert_eq!(offset_of!(PageInfo, pfn), 8);
const_assert_eq!(offset_of!(PageInfo, owner), 16);
const_assert_eq!(offset_of!(PageInfo, host_state), 20);
const_assert_eq!(offset_of!(PageInfo, mem_class), 24);
const_assert_eq!(size_of::<CreateVm>(), 8);
const_assert_eq!(size_of::<Memory>(), 40);
const_assert_eq!(offset_of!(Memory, size), 8);
const_assert_eq!(offset_of!(Memory, userspace_addr), 16);
const_assert_eq!(offset_of!(Memory, image_size), 24);
const_assert_eq!(offset_of!(Memory, prot), 32);
const_assert_eq!(size_of::<RunPage>(), RUN_PAGE_SIZE);
const_assert_eq!(offset_of!(RunPage, inject_irq), 168);
const_assert_eq!(offset_of!(RunPage, mmio_read_data), 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_header() {
        // Values of the C macros, computed by hand from _IOR/_IOW/_IO.
        assert_eq!(GET_VERSION, 0x8018_B700);
        assert_eq!(GET_STATS, 0x8028_B701);
        assert_eq!(CREATE_VM, 0x4008_B702);
        assert_eq!(PAGE_QUERY, 0xC020_B703);
        assert_eq!(GUEST_PAGE, 0xC020_B713);
        assert_eq!(SET_MEMORY, 0x4028_B710);
        assert_eq!(CREATE_VCPU, 0xB711);
        assert_eq!(KICK_VCPU, 0xB712);
        assert_eq!(RUN, 0xB720);
    }
}
