//! Seed corpora from the scenario files: each `tests/scenarios/*.scn` runs
//! on the simulator behind a [`Recorder`], which notes every host call,
//! host access, allocation and guest operation; these are then written in
//! each target's input format with raw values, so that a seed replays the
//! scenario exactly and the fuzzer mutates from there.

use scenario::{Abort, GuestOp, GuestOutcome, Machine, PageKind};

use super::host_calls::{self, Op};
use super::input::Output;
use super::{decode, FUZZ_SPARE_POOL, MODELS};
use crate::SimMachine;

/// A [`SimMachine`] that records what a scenario does to it.
pub struct Recorder {
    /// The machine.
    pub m: SimMachine,
    /// Everything done, in order.
    pub ops: Vec<Op>,
    /// Guest operations, with whether their VM was booted protected.
    pub guest_ops: Vec<(bool, GuestOp)>,
    protected: Vec<(u64, bool)>,
}

impl Recorder {
    /// Records on a fresh board of CPU model `model`.
    pub fn new(model: &str) -> Result<Self, String> {
        Ok(Self {
            m: SimMachine::with_spare_pool(model, FUZZ_SPARE_POOL)?,
            ops: Vec::new(),
            guest_ops: Vec::new(),
            protected: Vec::new(),
        })
    }
}

impl Machine for Recorder {
    fn begin_file(&mut self, name: &str) -> Result<(), String> {
        self.m.begin_file(name)
    }

    fn end_file(&mut self) {
        self.m.end_file()
    }

    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        self.ops.push(Op::Call(regs));
        self.m.host_call(regs)
    }

    fn host_read(&mut self, pa: u64) -> Result<u64, Abort> {
        self.ops.push(Op::Read(pa));
        self.m.host_read(pa)
    }

    fn host_write(&mut self, pa: u64, value: u64) -> Result<(), Abort> {
        self.ops.push(Op::Write(pa, value));
        self.m.host_write(pa, value)
    }

    fn host_fill(&mut self, pa: u64, len: u64, byte: u8) -> Result<(), Abort> {
        self.ops.push(Op::Fill(pa, len, byte));
        self.m.host_fill(pa, len, byte)
    }

    fn alloc(&mut self, kind: PageKind, pages: u64) -> Result<u64, String> {
        self.ops.push(Op::Alloc(kind, pages));
        self.m.alloc(kind, pages)
    }

    fn hyp_pfn(&mut self) -> u64 {
        self.m.hyp_pfn()
    }

    // Device DMA is not one of the fuzzer's operations: passed through
    // unrecorded (the S1 invariant checks the DMA view after every op).
    fn device_read(&mut self, pa: u64) -> Result<u64, String> {
        self.m.device_read(pa)
    }

    fn device_write(&mut self, pa: u64, value: u64) -> Result<(), String> {
        self.m.device_write(pa, value)
    }

    fn pa_limit_pfn(&mut self) -> u64 {
        self.m.pa_limit_pfn()
    }

    fn guest_boot(&mut self, vm: u64, vcpu: u64, protected: bool) -> GuestOutcome {
        self.ops.push(Op::Boot(vm, vcpu, protected));
        self.protected.push((vm, protected));
        self.m.guest_boot(vm, vcpu, protected)
    }

    fn guest_op(&mut self, vm: u64, vcpu: u64, op: GuestOp) -> GuestOutcome {
        self.ops.push(Op::Guest(vm, vcpu, op));
        let protected = self
            .protected
            .iter()
            .rev()
            .find(|p| p.0 == vm)
            .is_some_and(|p| p.1);
        self.guest_ops.push((protected, op));
        self.m.guest_op(vm, vcpu, op)
    }

    fn guest_resume(&mut self, vm: u64, vcpu: u64, mmio_read: u64) -> GuestOutcome {
        self.ops.push(Op::Resume(vm, vcpu, mmio_read));
        self.m.guest_resume(vm, vcpu, mmio_read)
    }
}

/// One seed: the target's name, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Seeds from one scenario file (`name` without `.scn`), for every model
/// it runs statements on.
pub fn from_scenario(name: &str, text: &str) -> Result<Vec<Seed>, String> {
    let mut seeds = Vec::new();
    let mut guest_seen = Vec::new();
    for (index, model) in MODELS.iter().enumerate() {
        let mut rec = Recorder::new(model)?;
        let mut sink = String::new();
        let tally = scenario::run_file(name, text, &mut rec, &mut sink);
        if tally.passed == 0 {
            continue;
        }
        let mut out = Output::default();
        out.u8(index as u8);
        for op in &rec.ops {
            op.write(&mut out);
        }
        seeds.push(("host_calls", format!("{name}-{model}"), out.bytes));
        let pa_bits = rec.m.hyp().cpu().pa_bits;
        let mut out = Output::default();
        for op in &rec.ops {
            if let Op::Call(regs) = op {
                decode::write_host_call(&mut out, pa_bits, regs);
            }
        }
        for (_, op) in &rec.guest_ops {
            if let GuestOp::Hvc { regs } = op {
                decode::write_words(&mut out, [regs[0], regs[1], regs[2], regs[3], regs[4]]);
            }
        }
        seeds.push(("decode", format!("{name}-{model}"), out.bytes));
        if guest_seen.is_empty() && !rec.guest_ops.is_empty() {
            guest_seen = rec.guest_ops.clone();
            seeds.push((
                "guest_exits",
                name.to_string(),
                guest_seed(index, &guest_seen),
            ));
        }
    }
    Ok(seeds)
}

/// A `guest_exits` input that runs each guest operation as the trap it
/// causes, on the protected or the normal VM as the scenario had it.
fn guest_seed(model: usize, ops: &[(bool, GuestOp)]) -> Vec<u8> {
    let raw = |out: &mut Output, v: u64| {
        out.u8(host_calls::tag::RAW);
        out.u64(v);
    };
    let mut out = Output::default();
    out.u8(model as u8);
    for &(protected, op) in ops.iter().take(super::guest_exits::MAX_OPS) {
        out.u8(0); // VCPU_RUN
        out.u8(u8::from(!protected)); // vCPU 0 of the protected or normal VM
        out.u8(1); // one trap
        match op {
            GuestOp::Hvc { regs } => {
                out.u8(0);
                out.u8(0xFF);
                for r in regs {
                    raw(&mut out, r);
                }
            }
            GuestOp::Read { ipa } | GuestOp::Write { ipa, .. } => {
                out.u8(2);
                raw(&mut out, ipa);
                let write = matches!(op, GuestOp::Write { .. });
                out.u8(3 | if write { 8 } else { 0 }); // 8 bytes
                out.u8(1); // x1
                out.u64(match op {
                    GuestOp::Write { value, .. } => value,
                    _ => 0,
                });
            }
            GuestOp::Exec { ipa } => {
                out.u8(4);
                raw(&mut out, ipa);
                out.u64(0x8200_0006);
            }
        }
    }
    out.bytes
}

/// Manifests to start from: the QEMU one and README's example.
pub const MANIFEST_SEEDS: [(&str, &str); 2] = [
    ("qemu-virt", platform::QEMU_VIRT_MANIFEST),
    (
        "readme-example",
        "hyp      0x4000_0000 64M    # the hypervisor's own memory (class HYP)\n\
         coherent 0x7C00_0000 64M    # cacheable-capable device memory (class COHERENT)\n\
         mmio     0x1000_0000 16M    # MMIO assignable to guests, DEVICE only\n\
         mmio-uc  0x1100_0000 16M    # MMIO assignable to guests, NORMAL_NC allowed\n\
         host-image 0x4400_0000      # where the boot loader put the host kernel\n",
    ),
];

/// The device tree the simulator builds (QEMU's own, dumped by QEMU, is
/// kept in the corpus beside it).
pub fn sim_device_tree() -> Vec<u8> {
    platform::qemu_virt_fdt(platform::qemu_virt::RAM_BASE, platform::qemu_virt::RAM_SIZE)
}
