//! The hypervisor core: the ownership state machine, the memory-type policy,
//! VMs and vCPUs, and host-call dispatch, as plain `no_std` code that runs the
//! same at EL2 and in the host-side simulator.
//!
//! Data flows one way: a host HVC arrives as registers, is decoded into a
//! typed [`host_interface::HostCall`], checked against the platform
//! description and CPU features given at boot and the stage-2 tables
//! themselves, committed through `pagetables`, and encoded back. Hardware
//! access (TLB and cache maintenance, entering a guest) sits behind the
//! [`pagetables::Maintenance`] and [`VcpuExecutor`] traits.
#![no_std]

extern crate alloc;

pub mod cpu_area;
pub mod debugregs;
pub mod dma;
mod hypervisor;
pub mod idregs;
pub mod invariants;
mod meta;
mod owner;
pub mod phys;
pub mod transitions;
mod vcpu;
pub mod vgic;

pub use dma::{DmaInvalidate, DmaView, DmaViewError};
pub use hypervisor::{
    feature_names, Access, HostAbort, Hypervisor, InitError, Vm, HYP_VERSION, MAX_VCPUS, MAX_VMS,
    VM_CREATE_MIN_PAGES,
};
pub use meta::MAX_SHARE_COUNT;
pub use owner::{HostAnnotation, GUEST_MMIO_GUARD};
pub use vcpu::{
    answer_guest_call, answer_guest_call_regs, vector_may_answer, GuestView, NoExecutor, Run, Trap,
    VcpuContext, VcpuExecutor, FP_WORDS, MAX_TRAPS_PER_RUN, SYS_WORDS,
};
