//! Target `guest_exits`: guests that trap with anything in their registers
//! (guest calls with any ID and arguments, data and instruction aborts at
//! any IPA with any syndrome, WFI, SGIs with any value, fatal traps), and a
//! hostile host that rewrites its run pages between runs and makes host
//! calls in between.
//!
//! Input: byte 0 picks the CPU model; then ops (opcode byte modulo 4):
//! - 0: VCPU_RUN of vCPU (byte) of VM (byte: protected or normal), with a
//!   script of up to [`MAX_TRAPS`] traps the guest takes, in order (then an
//!   interrupt ends the run);
//! - 1: the host writes a run-page word (word index byte, value);
//! - 2: a host call, picked as the `host_calls` target picks them;
//! - 3: a guest call from the simulator's test guest (through the model
//!   that obeys the stage-2), as `host_calls` does.
//!
//! Oracle after every op: I1–I4; a VCPU_RUN that succeeds reports a known
//! exit reason, the same in x2 and in the run page; a protected VM's fault
//! exits carry no syndrome or data; a guest HVC with a host-call ID never
//! reaches the host.

use host_interface::{is_host_call_range, ExitReason, HostCallId, RunPage, PAGE_SIZE};
use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor};
use pagetables::PhysMem;
use scenario::{GuestOp, Machine, PageKind};

use super::host_calls::{guest_call_regs, scope_of, Op, Picker};
use super::input::Input;
use super::oracle::{invariants, invariants_in, Scope};
use super::{FUZZ_SPARE_POOL, MODELS};
use crate::SimMachine;

/// Traps in one run's script.
pub const MAX_TRAPS: usize = 12;
/// Ops per input.
pub const MAX_OPS: usize = 64;
/// The two VMs' first guest frame (RAM donated or shared there).
pub const RAM_GFN: u64 = crate::GUEST_BASE_IPA >> 12;
/// Guest RAM pages per VM.
pub const RAM_PAGES: u64 = 8;
/// Where each VM has a device page.
pub const DEVICE_GFN: u64 = 0x9000;
/// vCPUs per VM.
pub const VCPUS: u64 = 2;

/// Plays a script of traps, setting registers first.
struct Script {
    traps: Vec<(Trap, [u64; 7])>,
    next: usize,
    /// x0 of the last guest call the script made, if the last trap was one.
    last_hvc: Option<u64>,
}

impl<P: PhysMem> VcpuExecutor<P> for Script {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, P>, ctx: &mut VcpuContext) -> Trap {
        let Some(&(trap, regs)) = self.traps.get(self.next) else {
            self.last_hvc = None;
            return Trap::Irq;
        };
        self.next += 1;
        ctx.x[..7].copy_from_slice(&regs);
        self.last_hvc = (trap == Trap::Hvc).then_some(regs[0]);
        trap
    }
}

fn read_trap(inp: &mut Input<'_>, pick: &Picker) -> (Trap, [u64; 7]) {
    let mut regs = [0u64; 7];
    let k = inp.u8();
    let trap = match k % 8 {
        0 | 1 => {
            regs = guest_call_regs(inp, pick);
            Trap::Hvc
        }
        2 | 3 => {
            let ipa = pick.addr(inp, true);
            let b = inp.u8();
            let size = [1u8, 2, 4, 8, 0, 3, 16, 8][usize::from(b & 7)];
            let reg = inp.u8() % 33;
            let esr = if b & 0x80 != 0 {
                inp.u64()
            } else {
                0x9200_0046
            };
            regs[usize::from(reg % 7)] = inp.u64();
            Trap::DataAbort {
                ipa,
                write: b & 8 != 0,
                size,
                reg,
                esr,
            }
        }
        4 => Trap::InstAbort {
            ipa: pick.addr(inp, true),
            esr: inp.u64(),
        },
        5 => Trap::Wfi,
        6 => {
            let b = inp.u8();
            let value = if b & 1 != 0 {
                inp.u64()
            } else {
                // INTID in 27:24, a target list, sometimes IRM (bit 40).
                (u64::from(b >> 4) << 24) | u64::from(inp.u8()) | (u64::from(b & 2) << 39)
            };
            Trap::Sgi { value }
        }
        _ => [Trap::Resume, Trap::Irq, Trap::Fatal][usize::from(k >> 3) % 3],
    };
    (trap, regs)
}

/// The two VMs (protected, normal), each with RAM at [`RAM_GFN`], a device
/// page at [`DEVICE_GFN`] and [`VCPUS`] vCPUs whose run pages are returned.
fn setup(m: &mut SimMachine) -> Result<Vec<(u64, Vec<u64>)>, String> {
    let mut vms = Vec::new();
    for (flags, device) in [(1u64, PageKind::Mmio), (0, PageKind::MmioUc)] {
        let ok = |r: [u64; 5], what: &str| {
            if r[0] == 0 && r[1] == 0 {
                Ok(r)
            } else {
                Err(format!("setup: {what}: {r:x?}"))
            }
        };
        let pool = m.alloc(PageKind::Ram, 64)?;
        let h = ok(
            m.call(HostCallId::VmCreate, &[flags, pool, 64]),
            "VM_CREATE",
        )?[2];
        let ram = m.alloc(PageKind::Ram, RAM_PAGES)?;
        let give = if flags == 1 {
            HostCallId::GuestDonate
        } else {
            HostCallId::GuestShare
        };
        ok(m.call(give, &[h, ram, RAM_GFN, RAM_PAGES, 7]), "RAM")?;
        let dev = m.alloc(device, 1)?;
        ok(
            m.call(HostCallId::GuestMapDevice, &[h, dev, DEVICE_GFN, 1, 3]),
            "GUEST_MAP_DEVICE",
        )?;
        let mut runs = Vec::new();
        for _ in 0..VCPUS {
            let run = m.alloc(PageKind::Ram, 1)?;
            ok(m.call(HostCallId::ShareHyp, &[run, 1]), "SHARE_HYP")?;
            ok(m.call(HostCallId::VcpuCreate, &[h, run]), "VCPU_CREATE")?;
            let entry = core::mem::offset_of!(RunPage, entry) as u64;
            hyp::phys::write_u64(m.phys(), run * PAGE_SIZE + entry, crate::GUEST_BASE_IPA);
            runs.push(run);
        }
        vms.push((h, runs));
    }
    Ok(vms)
}

/// The target: see the module documentation.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut inp = Input::new(data);
    let model = MODELS[usize::from(inp.u8() % 4)];
    let mut m = SimMachine::with_spare_pool(model, FUZZ_SPARE_POOL)?;
    let vms = setup(&mut m)?;
    let mut pick = Picker::new(&m);
    pick.handles = vms.iter().map(|v| v.0).collect();
    invariants(m.hyp()).map_err(|e| format!("{model}, after setup: {e}"))?;
    let mut scope = Scope::new(m.hyp());
    for i in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let (what, tables) = step(&mut m, &mut inp, &pick, &vms, &mut scope)
            .map_err(|e| format!("{model}, op {i}: {e}"))?;
        if tables {
            invariants_in(m.hyp(), &mut scope)
                .map_err(|e| format!("{model}, after op {i} ({what}): {e}"))?;
        }
    }
    invariants(m.hyp()).map_err(|e| format!("{model}, at the end: {e}"))
}

fn field(m: &SimMachine, run: u64, off: usize) -> u64 {
    hyp::phys::read_u64(m.phys(), run * PAGE_SIZE + off as u64)
}

fn step(
    m: &mut SimMachine,
    inp: &mut Input<'_>,
    pick: &Picker,
    vms: &[(u64, Vec<u64>)],
    scope: &mut Scope,
) -> Result<(String, bool), String> {
    let op = inp.u8();
    let which = usize::from(inp.u8());
    let (vm, runs) = &vms[which % vms.len()];
    let protected = which % vms.len() == 0;
    let vcpu = (which / 2) % (runs.len() + 1);
    match op % 4 {
        0 => {
            let n = usize::from(inp.u8()) % (MAX_TRAPS + 1);
            let traps: Vec<_> = (0..n).map(|_| read_trap(inp, pick)).collect();
            let what = format!("VCPU_RUN {vm} {vcpu} with {traps:x?}");
            let mut script = Script {
                traps,
                next: 0,
                last_hvc: None,
            };
            let regs = [
                u64::from(HostCallId::VcpuRun.id()),
                *vm,
                vcpu as u64,
                0,
                0,
                0,
                0,
            ];
            let r = m.hyp_mut().host_call(&regs, &mut script).regs;
            if r[0] != 0 || r[1] != 0 {
                return Ok((what, true));
            }
            // The vCPUs of the setup, or one the host created since with
            // a host call (op 2).
            let Some(run) = runs
                .get(vcpu)
                .copied()
                .or_else(|| m.run_page(*vm, vcpu as u64))
            else {
                return Err(format!("{what}: a vCPU that does not exist ran: {r:x?}"));
            };
            let reason = ExitReason::from_u64(r[2])
                .ok_or_else(|| format!("{what}: unknown exit reason {:#x}", r[2]))?;
            let page = field(m, run, core::mem::offset_of!(RunPage, exit_reason));
            if page != r[2] {
                return Err(format!(
                    "{what}: exit {reason:?} in x2, {page:#x} in the run page"
                ));
            }
            if reason == ExitReason::Hvc {
                if let Some(x0) = script.last_hvc.filter(|&x0| is_host_call_range(x0)) {
                    return Err(format!("{what}: guest call {x0:#x} reached the host"));
                }
            }
            if protected && matches!(reason, ExitReason::MemFault | ExitReason::Mmio) {
                let esr = field(m, run, core::mem::offset_of!(RunPage, fault_esr));
                let data = field(m, run, core::mem::offset_of!(RunPage, fault_data));
                if esr != 0 || (reason == ExitReason::MemFault && data != 0) {
                    return Err(format!(
                        "{what}: a protected VM's {reason:?} exit shows esr {esr:#x}, data {data:#x}"
                    ));
                }
            }
            Ok((what, true))
        }
        1 => {
            let run = runs[vcpu % runs.len()];
            let word = u64::from(inp.u8() % 24);
            let value = match inp.u8() % 4 {
                0 => u64::from(inp.u8()),
                // inject_irq encodings, valid or not.
                1 => (1 << 31) | u64::from(inp.u16() & 0x7ff),
                _ => inp.u64(),
            };
            hyp::phys::write_u64(m.phys(), run * PAGE_SIZE + word * 8, value);
            // The run page is the host's: the tables cannot have changed.
            Ok((format!("run page {run:#x} word {word} = {value:#x}"), false))
        }
        2 => {
            let regs = pick.call(inp);
            scope_of(scope, &Op::Call(regs));
            let r = m.host_call(regs);
            Ok((format!("host call {regs:x?} -> {r:x?}"), true))
        }
        _ => {
            let regs = guest_call_regs(inp, pick);
            let entries = m.core_entries();
            let r = m.guest_op(*vm, vcpu as u64, GuestOp::Hvc { regs });
            // A vCPU the machine knows no run page of never runs.
            let entered = m.core_entries() != entries;
            Ok((format!("test guest HVC {regs:x?} -> {r:x?}"), entered))
        }
    }
}
