//! A model of the test guest that obeys its stage-2.
//!
//! The real test guest is a small EL1 program: it reports "ready" with an
//! HVC the hypervisor does not handle (so the host sees an HVC exit), then
//! for each command performs one access or call and reports "done" the same
//! way. This model follows that protocol instruction by instruction, keyed on
//! the program counter the hypervisor saves and restores, so every
//! completion (an MMIO read finished by the host, a guest call answered at
//! EL2, a retried fault) goes through the core's trap handling exactly as it
//! would for real code. Every fetch and data access is checked against the
//! VM's stage-2; anything it does not allow traps to the core.

use std::collections::HashMap;

use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor};
use pagetables::{Entry, PhysMem};
use scenario::GuestOp;

/// Guest-to-host report: ready after boot (forwarded to the host as HVC).
pub const TG_READY: u64 = 0xC600_0F00;
/// Guest-to-host report: the command finished, x1 = result.
pub const TG_DONE: u64 = 0xC600_0F01;

/// Where the model's "instructions" live (inside the image at 0x4000_0000).
const PC_ENTRY: u64 = 0x4000_0000;
const PC_REPORT: u64 = 0x4000_0100;
const PC_OP: u64 = 0x4000_0200;
const PC_IDLE: u64 = 0x4000_0300;

/// Synthetic ESR_EL2 of a data abort (EC 0x24, ISV, SAS, WnR, SRT).
fn data_abort_esr(write: bool, size: u8, reg: u8) -> u64 {
    let sas = match size {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    };
    (0x24u64 << 26)
        | (1 << 25)
        | (1 << 24)
        | (sas << 22)
        | (u64::from(reg) << 16)
        | (u64::from(write) << 6)
        | 0x4
}

/// Per-vCPU command slot.
#[derive(Default)]
struct Cpu {
    op: Option<GuestOp>,
}

/// The executor the simulator hands to VCPU_RUN.
#[derive(Default)]
pub struct SimGuest {
    cpus: HashMap<(u64, u64), Cpu>,
}

impl SimGuest {
    /// Give the guest on (vm, vcpu) its next command (the mailbox write).
    pub fn post(&mut self, vm: u64, vcpu: u64, op: GuestOp) {
        self.cpus.entry((vm, vcpu)).or_default().op = Some(op);
    }
}

fn translate<P: PhysMem>(view: &GuestView<'_, P>, ipa: u64) -> Option<(u64, pagetables::Leaf)> {
    if ipa >> host_interface::GUEST_IPA_BITS != 0 {
        return None;
    }
    match view.s2.lookup(ipa & !0xfff) {
        Entry::Mapped { pa, leaf, .. } => Some((pa | (ipa & 0xfff), leaf)),
        Entry::Invalid { .. } => None,
    }
}

/// Whether a guest mapping reaches a device rather than memory: DEVICE and
/// NORMAL_NC mappings are of MMIO only (D1, D5), and the simulator models
/// no device behind them, so such a read gives 0 and a write goes nowhere
/// (the simulated RAM does not back MMIO addresses).
fn is_device(leaf: &pagetables::Leaf) -> bool {
    matches!(
        leaf.memtype,
        pagetables::MemType::Device | pagetables::MemType::NormalNc
    )
}

fn report(ctx: &mut VcpuContext, what: u64, value: u64) -> Trap {
    ctx.x[0] = what;
    ctx.x[1] = value;
    ctx.pc = PC_REPORT + 4;
    Trap::Hvc
}

impl<P: PhysMem> VcpuExecutor<P> for SimGuest {
    fn enter(
        &mut self,
        handle: u64,
        vcpu: u64,
        view: GuestView<'_, P>,
        ctx: &mut VcpuContext,
    ) -> Trap {
        // Instruction fetch of the model's own code.
        match translate(&view, ctx.pc) {
            Some((_, leaf)) if leaf.perms.x => {}
            _ => {
                return Trap::InstAbort {
                    ipa: ctx.pc,
                    esr: 0x20 << 26,
                }
            }
        }
        let cpu = self.cpus.entry((handle, vcpu)).or_default();
        match ctx.pc {
            PC_ENTRY => report(ctx, TG_READY, 0),
            pc if pc == PC_REPORT + 4 || pc == PC_IDLE + 4 => {
                if cpu.op.is_some() {
                    ctx.pc = PC_OP;
                    perform(cpu, &view, ctx)
                } else {
                    ctx.pc = PC_IDLE;
                    Trap::Wfi
                }
            }
            PC_OP => perform(cpu, &view, ctx),
            pc if pc == PC_OP + 4 => {
                // Completed at EL2 or by the host (MMIO emulation, guest call).
                let v = match cpu.op.take() {
                    Some(GuestOp::Read { .. }) => ctx.x[1],
                    Some(GuestOp::Hvc { .. }) => ctx.x[0],
                    _ => 0,
                };
                report(ctx, TG_DONE, v)
            }
            _ => Trap::Fatal,
        }
    }
}

/// Carry out the pending command at PC_OP.
fn perform<P: PhysMem>(cpu: &mut Cpu, view: &GuestView<'_, P>, ctx: &mut VcpuContext) -> Trap {
    let Some(op) = cpu.op else {
        ctx.pc = PC_IDLE;
        return Trap::Wfi;
    };
    match op {
        GuestOp::Read { ipa } => match translate(view, ipa) {
            Some((pa, leaf)) if leaf.perms.r => {
                cpu.op = None;
                let v = if is_device(&leaf) {
                    0
                } else {
                    hyp::phys::read_u64(view.phys, pa)
                };
                report(ctx, TG_DONE, v)
            }
            _ => Trap::DataAbort {
                ipa,
                write: false,
                size: 8,
                reg: 1,
                esr: data_abort_esr(false, 8, 1),
            },
        },
        GuestOp::Write { ipa, value } => {
            ctx.x[1] = value;
            match translate(view, ipa) {
                Some((pa, leaf)) if leaf.perms.w => {
                    cpu.op = None;
                    if !is_device(&leaf) {
                        hyp::phys::write_u64(view.phys, pa, value);
                    }
                    report(ctx, TG_DONE, 0)
                }
                _ => Trap::DataAbort {
                    ipa,
                    write: true,
                    size: 8,
                    reg: 1,
                    esr: data_abort_esr(true, 8, 1),
                },
            }
        }
        GuestOp::Exec { ipa } => match translate(view, ipa) {
            Some((_, leaf)) if leaf.perms.x => {
                cpu.op = None;
                report(ctx, TG_DONE, 0)
            }
            _ => Trap::InstAbort {
                ipa,
                esr: 0x20 << 26,
            },
        },
        GuestOp::Hvc { regs } => {
            ctx.x[..7].copy_from_slice(&regs);
            ctx.pc = PC_OP + 4;
            Trap::Hvc
        }
    }
}
