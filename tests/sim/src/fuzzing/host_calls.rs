//! Target `host_calls`: sequences of host calls, host memory accesses and
//! test-guest operations on the core, over the simulator's board.
//!
//! Input: byte 0 picks the CPU model ([`super::MODELS`]); then ops, each an
//! opcode byte ([`OP_COUNT`] kinds) and its arguments. Arguments are read by
//! [`Picker::arg`]: a tag byte chooses between the value the position
//! naturally holds (a live VM handle, a pfn near an interesting place of
//! one of the board's regions, a gfn near the guest image, a small page
//! count, ...) and a raw or small literal, so that mutations move between
//! valid and invalid values. The corpus converter writes scenario steps
//! with raw values ([`super::corpus`]), which replay exactly.
//!
//! Oracle after every op: I1–I4 on the real tables; before each host call
//! a [`Snapshot`], compared after the call when it failed; I5 after every
//! RECLAIM; a host execute access granted only on RAM and COHERENT; every
//! answer a known errno or NOT_SUPPORTED.

use host_interface::{Errno, HostCallId, PAGE_SIZE};
use hyp::Access;
use platform::MemClass;
use scenario::{GuestOp, Machine, PageKind};

use super::input::{Input, Output};
use super::oracle::{invariants, invariants_in, named_frames, scrubbed, Scope, Snapshot};
use super::{FUZZ_SPARE_POOL, MODELS};
use crate::SimMachine;

/// Ops per input beyond which the rest is ignored (bounds one execution).
pub const MAX_OPS: usize = 96;

/// Opcodes (the opcode byte modulo [`OP_COUNT`]).
pub mod opcode {
    /// A host call whose arguments are picked by kind.
    pub const CALL: u8 = 0;
    /// A host read at a physical address.
    pub const READ: u8 = 1;
    /// A host write: address, then a raw u64 value.
    pub const WRITE: u8 = 2;
    /// A host instruction fetch at a physical address.
    pub const EXEC: u8 = 3;
    /// Boot the test guest: VM, vCPU, protected byte.
    pub const BOOT: u8 = 4;
    /// A test-guest operation: VM, vCPU, kind byte, operands.
    pub const GUEST: u8 = 5;
    /// VCPU_RUN again after an exit: VM, vCPU, raw MMIO read data.
    pub const RESUME: u8 = 6;
    /// A host call with seven raw registers.
    pub const RAW_CALL: u8 = 7;
    /// A host fill: address, raw length (at most four pages), byte.
    pub const FILL: u8 = 8;
    /// Set pages aside as a scenario does (kind byte, raw count), so that
    /// converted scenarios replay with the same pages.
    pub const ALLOC: u8 = 9;
}

/// Number of opcodes.
pub const OP_COUNT: u8 = 10;

/// Tags of [`Picker::arg`] (the tag byte modulo 8).
pub mod tag {
    /// A small literal: the next byte.
    pub const SMALL: u8 = 4;
    /// A raw u64: the next eight bytes.
    pub const RAW: u8 = 5;
}

/// What an argument position holds, for [`Picker::arg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A VM handle.
    Handle,
    /// A host frame number.
    Pfn,
    /// A guest frame number.
    Gfn,
    /// A page count.
    Nr,
    /// GUEST_SHARE/GUEST_DONATE prot bits.
    Prot,
    /// GUEST_MAP_DEVICE prot and memory type.
    DeviceProt,
    /// VM_CREATE flags.
    Flags,
    /// A vCPU index.
    Vcpu,
    /// An unused register.
    Zero,
}

/// The argument kinds of each host call, x1..x6.
pub fn arg_kinds(id: HostCallId) -> [Kind; 6] {
    use Kind::*;
    match id {
        HostCallId::HypVersion | HostCallId::HypFeatures => [Zero; 6],
        HostCallId::PageQuery => [Pfn, Zero, Zero, Zero, Zero, Zero],
        HostCallId::ShareHyp | HostCallId::UnshareHyp | HostCallId::Reclaim => {
            [Pfn, Nr, Zero, Zero, Zero, Zero]
        }
        HostCallId::VmCreate => [Flags, Pfn, Nr, Zero, Zero, Zero],
        HostCallId::VmTopup => [Handle, Pfn, Nr, Zero, Zero, Zero],
        HostCallId::VcpuCreate => [Handle, Pfn, Zero, Zero, Zero, Zero],
        HostCallId::VcpuRun => [Handle, Vcpu, Zero, Zero, Zero, Zero],
        HostCallId::VmDestroy => [Handle, Zero, Zero, Zero, Zero, Zero],
        HostCallId::GuestShare | HostCallId::GuestDonate => [Handle, Pfn, Gfn, Nr, Prot, Zero],
        HostCallId::GuestMapDevice => [Handle, Pfn, Gfn, Nr, DeviceProt, Zero],
        HostCallId::GuestUnshare | HostCallId::GuestUnmapDevice => {
            [Handle, Gfn, Nr, Zero, Zero, Zero]
        }
    }
}

/// Picks argument values, biased toward the board's interesting places and
/// the handles the sequence has created.
pub struct Picker {
    pfn_bases: Vec<u64>,
    gfn_bases: Vec<u64>,
    /// Handles VM_CREATE returned so far (destroyed ones stay: stale
    /// handles are worth trying).
    pub handles: Vec<u64>,
}

impl Picker {
    /// For the board of `m`.
    pub fn new(m: &SimMachine) -> Self {
        let p = m.hyp().platform();
        let mut pfn_bases = Vec::new();
        for r in p.regions() {
            pfn_bases.push(r.base_pfn);
            // Around the last 2 MiB boundary inside the region, and its end.
            pfn_bases.push((r.base_pfn + r.nr_pages).saturating_sub(0x210));
            if r.class == MemClass::Ram {
                pfn_bases.push(r.base_pfn + 0x1000);
                pfn_bases.push(r.base_pfn + 0x2000 - 0x80);
            }
        }
        // Unassignable MMIO (the GIC, the UART) and the PA space's end.
        pfn_bases.push(0x0800_0000 >> 12);
        pfn_bases.push(0x0900_0000 >> 12);
        pfn_bases.push((1u64 << (m.hyp().cpu().pa_bits - 12)) - 0x80);
        let gfn_bases = vec![
            0,
            crate::GUEST_BASE_IPA >> 12,
            0x80000,
            0x9000,
            0x1f0,
            crate::GUEST_IPA_PAGES - 0x80,
        ];
        Self {
            pfn_bases,
            gfn_bases,
            handles: Vec::new(),
        }
    }

    /// The value of the position `kind`, as the next bytes of `inp` say.
    pub fn arg(&self, inp: &mut Input<'_>, kind: Kind) -> u64 {
        let t = inp.u8();
        match t % 8 {
            0..=3 => self.natural(inp, kind, t >> 3),
            tag::SMALL => u64::from(inp.u8()),
            tag::RAW => inp.u64(),
            6 => self.natural(inp, Kind::Pfn, t >> 3),
            _ => self.natural(inp, Kind::Gfn, t >> 3),
        }
    }

    fn natural(&self, inp: &mut Input<'_>, kind: Kind, sel: u8) -> u64 {
        let b = inp.u8();
        let sel = usize::from(sel);
        match kind {
            Kind::Handle => match self.handles.get(usize::from(b) % (self.handles.len() + 1)) {
                Some(&h) => h,
                None => u64::from(b),
            },
            Kind::Pfn => self.pfn_bases[sel % self.pfn_bases.len()] + u64::from(b),
            Kind::Gfn => self.gfn_bases[sel % self.gfn_bases.len()] + u64::from(b),
            Kind::Nr => [1, 1, 1, 2, 3, 4, 8, 16, 511, 512, 513, 0][usize::from(b) % 12],
            Kind::Prot => u64::from(b % 16),
            Kind::DeviceProt => u64::from(b & 7) | (u64::from((b >> 3) & 3) << 8),
            Kind::Flags => u64::from(b % 8),
            Kind::Vcpu => u64::from(b % 10),
            Kind::Zero => 0,
        }
    }

    /// A physical (or guest-physical, with `guest`) byte address.
    pub fn addr(&self, inp: &mut Input<'_>, guest: bool) -> u64 {
        let t = inp.u8();
        if t % 8 == tag::RAW {
            return inp.u64();
        }
        let kind = if guest { Kind::Gfn } else { Kind::Pfn };
        let frame = self.natural(inp, kind, t >> 3);
        frame * PAGE_SIZE + u64::from(inp.u8()) * 8
    }

    /// x0 of a host call: a known ID (or one of the unassigned IDs of the
    /// host-call range) and x1..x6 by kind.
    pub fn call(&self, inp: &mut Input<'_>) -> [u64; 7] {
        let s = inp.u8();
        let ids = HostCallId::ALL;
        let (x0, kinds) = if usize::from(s) < 0xF0 {
            let id = ids[usize::from(s) % ids.len()];
            (u64::from(id.id()), arg_kinds(id))
        } else {
            (
                u64::from(host_interface::HOST_CALL_BASE) + 0x10 + u64::from(s & 0xF) * 7,
                [Kind::Zero; 6],
            )
        };
        let mut regs = [x0, 0, 0, 0, 0, 0, 0];
        for (r, k) in regs[1..].iter_mut().zip(kinds) {
            *r = self.arg(inp, k);
        }
        regs
    }
}

/// One op, with its values resolved (what a failure message shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A host call.
    Call([u64; 7]),
    /// A host read.
    Read(u64),
    /// A host write.
    Write(u64, u64),
    /// A host instruction fetch.
    Exec(u64),
    /// A host fill (address, length, byte).
    Fill(u64, u64, u8),
    /// Boot the test guest.
    Boot(u64, u64, bool),
    /// A test-guest operation.
    Guest(u64, u64, GuestOp),
    /// VCPU_RUN again after an exit.
    Resume(u64, u64, u64),
    /// Set pages aside.
    Alloc(PageKind, u64),
}

const KINDS: [PageKind; 4] = [
    PageKind::Ram,
    PageKind::Coherent,
    PageKind::Mmio,
    PageKind::MmioUc,
];

impl Op {
    /// Reads one op.
    pub fn read(inp: &mut Input<'_>, pick: &Picker) -> Op {
        let vm_vcpu = |inp: &mut Input<'_>| {
            let vm = pick.arg(inp, Kind::Handle);
            (vm, pick.arg(inp, Kind::Vcpu) % 16)
        };
        match inp.u8() % OP_COUNT {
            opcode::CALL => Op::Call(pick.call(inp)),
            opcode::READ => Op::Read(pick.addr(inp, false)),
            opcode::WRITE => Op::Write(pick.addr(inp, false), inp.u64()),
            opcode::EXEC => Op::Exec(pick.addr(inp, false)),
            opcode::BOOT => {
                let (vm, vcpu) = vm_vcpu(inp);
                Op::Boot(vm, vcpu, inp.u8() & 1 == 1)
            }
            opcode::GUEST => {
                let (vm, vcpu) = vm_vcpu(inp);
                let op = match inp.u8() % 4 {
                    0 => GuestOp::Read {
                        ipa: pick.addr(inp, true),
                    },
                    1 => GuestOp::Write {
                        ipa: pick.addr(inp, true),
                        value: inp.u64(),
                    },
                    2 => GuestOp::Exec {
                        ipa: pick.addr(inp, true),
                    },
                    _ => GuestOp::Hvc {
                        regs: guest_call_regs(inp, pick),
                    },
                };
                Op::Guest(vm, vcpu, op)
            }
            opcode::RESUME => {
                let (vm, vcpu) = vm_vcpu(inp);
                Op::Resume(vm, vcpu, inp.u64())
            }
            opcode::RAW_CALL => {
                let mut regs = [0u64; 7];
                for r in &mut regs {
                    *r = inp.u64();
                }
                Op::Call(regs)
            }
            opcode::FILL => Op::Fill(
                pick.addr(inp, false),
                inp.u64() % (4 * PAGE_SIZE + 1),
                inp.u8(),
            ),
            _ => Op::Alloc(KINDS[usize::from(inp.u8() % 4)], inp.u64()),
        }
    }

    /// Writes the op so that [`Op::read`] gives it back, whatever the
    /// picker's state: every value raw.
    pub fn write(&self, out: &mut Output) {
        let raw = |out: &mut Output, v: u64| {
            out.u8(tag::RAW);
            out.u64(v);
        };
        match *self {
            Op::Call(regs) => {
                out.u8(opcode::RAW_CALL);
                for r in regs {
                    out.u64(r);
                }
            }
            Op::Read(a) | Op::Exec(a) => {
                out.u8(if matches!(self, Op::Read(_)) {
                    opcode::READ
                } else {
                    opcode::EXEC
                });
                raw(out, a);
            }
            Op::Write(a, v) => {
                out.u8(opcode::WRITE);
                raw(out, a);
                out.u64(v);
            }
            Op::Fill(a, len, byte) => {
                out.u8(opcode::FILL);
                raw(out, a);
                out.u64(len);
                out.u8(byte);
            }
            Op::Boot(vm, vcpu, protected) => {
                out.u8(opcode::BOOT);
                raw(out, vm);
                raw(out, vcpu);
                out.u8(u8::from(protected));
            }
            Op::Guest(vm, vcpu, op) => {
                out.u8(opcode::GUEST);
                raw(out, vm);
                raw(out, vcpu);
                match op {
                    GuestOp::Read { ipa } => {
                        out.u8(0);
                        raw(out, ipa);
                    }
                    GuestOp::Write { ipa, value } => {
                        out.u8(1);
                        raw(out, ipa);
                        out.u64(value);
                    }
                    GuestOp::Exec { ipa } => {
                        out.u8(2);
                        raw(out, ipa);
                    }
                    GuestOp::Hvc { regs } => {
                        out.u8(3);
                        out.u8(0xFF);
                        for r in regs {
                            raw(out, r);
                        }
                    }
                }
            }
            Op::Resume(vm, vcpu, data) => {
                out.u8(opcode::RESUME);
                raw(out, vm);
                raw(out, vcpu);
                out.u64(data);
            }
            Op::Alloc(kind, pages) => {
                out.u8(opcode::ALLOC);
                out.u8(KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8);
                out.u64(pages);
            }
        }
    }
}

/// x0..x6 of a guest call: a selector byte picks a guest-call ID (either
/// calling convention), a host-call ID (which a guest must never reach),
/// or raw registers (0xFF, as the corpus writes them).
pub fn guest_call_regs(inp: &mut Input<'_>, pick: &Picker) -> [u64; 7] {
    let s = inp.u8();
    let ids = host_interface::GuestCallId::ALL;
    let x0 = match s {
        0xFF => pick.arg(inp, Kind::Zero),
        0xF0..=0xFE => u64::from(HostCallId::ALL[usize::from(s & 0xF) % 16].id()),
        _ => {
            let id = ids[usize::from(s) % ids.len()];
            match (s & 0x80 != 0, id.smc32_alias()) {
                (true, Some(alias)) => u64::from(alias),
                _ => u64::from(id.id()),
            }
        }
    };
    let mut regs = [x0, 0, 0, 0, 0, 0, 0];
    if s == 0xFF {
        for r in &mut regs[1..] {
            *r = pick.arg(inp, Kind::Zero);
        }
    } else {
        // x1 is an IPA for the memory calls, an MPIDR or entry for PSCI.
        regs[1] = pick.addr(inp, true);
        for r in &mut regs[2..] {
            *r = pick.arg(inp, Kind::Zero);
        }
    }
    regs
}

/// The target: see the module documentation.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut inp = Input::new(data);
    let model = MODELS[usize::from(inp.u8() % 4)];
    let mut m = SimMachine::with_spare_pool(model, FUZZ_SPARE_POOL)?;
    let mut pick = Picker::new(&m);
    let mut scope = Scope::new(m.hyp());
    invariants(m.hyp()).map_err(|e| format!("{model}, before any op: {e}"))?;
    for i in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = Op::read(&mut inp, &pick);
        scope_of(&mut scope, &op);
        let changed =
            step(&mut m, &mut pick, op).map_err(|e| format!("{model}, op {i} {op:x?}: {e}"))?;
        if let Op::Boot(vm, ..) = op {
            // The image's frames were named by no op, but the guest's
            // MEM_SHARE and MEM_UNSHARE change the host's entries for them.
            if let Some((pfn, n)) = m.guest_image(vm) {
                scope.add(pfn, n);
            }
        }
        if changed {
            invariants_in(m.hyp(), &mut scope)
                .map_err(|e| format!("{model}, after op {i} {op:x?}: {e}"))?;
        }
    }
    invariants(m.hyp()).map_err(|e| format!("{model}, at the end: {e}"))
}

/// Adds the host pages `op` names to `scope`.
pub fn scope_of(scope: &mut Scope, op: &Op) {
    match *op {
        Op::Call(regs) => {
            // Any register may be a pfn; the page count is the next one.
            for k in 1..6 {
                scope.add(regs[k], regs[k + 1]);
            }
        }
        Op::Read(a) | Op::Write(a, _) | Op::Exec(a) => scope.add(a / PAGE_SIZE, 1),
        Op::Fill(a, len, _) => scope.add(a / PAGE_SIZE, len.div_ceil(PAGE_SIZE) + 1),
        _ => {}
    }
}

/// Whether x0..x1 of an answer report a failure; `Err` for an answer that
/// is neither success, a known errno nor NOT_SUPPORTED.
fn failed(r: &[u64; 5]) -> Result<bool, String> {
    match (r[0], r[1]) {
        (0, 0) => Ok(false),
        (0, x1) if Errno::from_x1(x1).is_some() => Ok(true),
        (u64::MAX, _) => Ok(true),
        _ => Err(format!("malformed answer {r:x?}")),
    }
}

/// Carries out one op and checks what is specific to it. `Ok(false)` when
/// the op left the core's state as it was: a failed call, which the
/// snapshot showed changed nothing, or an op that never entered the core
/// (a host access its stage-2 already allowed, ALLOC, a guest op on a vCPU
/// the machine does not know).
pub fn step(m: &mut SimMachine, pick: &mut Picker, op: Op) -> Result<bool, String> {
    let entries = m.core_entries();
    match op {
        Op::Call(regs) => {
            let frames = named_frames(&regs);
            let before = Snapshot::take(m.hyp_mut(), &frames);
            let r = m.host_call(regs);
            if failed(&r)? {
                let after = Snapshot::take(m.hyp_mut(), &frames);
                before
                    .unchanged(&after)
                    .map_err(|e| format!("failed ({r:x?}) but changed state: {e}"))?;
                return Ok(false);
            }
            let query = matches!(
                HostCallId::from_id(regs[0]),
                Some(HostCallId::HypVersion | HostCallId::HypFeatures | HostCallId::PageQuery)
            );
            if query {
                // A query answers and changes nothing, like a failed call.
                let after = Snapshot::take(m.hyp_mut(), &frames);
                before
                    .unchanged(&after)
                    .map_err(|e| format!("query ({r:x?}) changed state: {e}"))?;
                return Ok(false);
            }
            match HostCallId::from_id(regs[0]) {
                Some(HostCallId::VmCreate) if pick.handles.len() < 16 => pick.handles.push(r[2]),
                Some(HostCallId::Reclaim) => scrubbed(m.phys(), regs[1], regs[2])?,
                _ => {}
            }
        }
        Op::Read(a) => {
            let _ = m.host_read(a);
        }
        Op::Write(a, v) => {
            let _ = m.host_write(a, v);
        }
        Op::Fill(a, len, b) => {
            let _ = m.host_fill(a, len, b);
        }
        Op::Exec(a) => {
            if m.host_touch(a, Access::Exec).is_ok() {
                let (class, _) = m.hyp().platform().classify(a >> 12);
                if !matches!(class, MemClass::Ram | MemClass::Coherent) {
                    return Err(format!("the host may execute {class:?} at {a:#x}"));
                }
            }
        }
        Op::Boot(vm, vcpu, protected) => {
            let _ = m.guest_boot(vm, vcpu, protected);
        }
        Op::Guest(vm, vcpu, g) => {
            let _ = m.guest_op(vm, vcpu, g);
        }
        Op::Resume(vm, vcpu, data) => {
            let _ = m.guest_resume(vm, vcpu, data);
        }
        Op::Alloc(kind, pages) => {
            let _ = m.alloc(kind, pages);
        }
    }
    Ok(m.core_entries() != entries)
}
