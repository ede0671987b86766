//! A scripted [`Machine`] that records every call made to it.

#![allow(dead_code)]

use std::collections::VecDeque;

use host_interface::HostCallId;
use scenario::{run_file, Abort, GuestOp, GuestOutcome, Machine, PageKind, Tally};

/// One call the interpreter made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Begin(String),
    End,
    HostCall([u64; 7]),
    Read(u64),
    Write(u64, u64),
    Fill(u64, u64, u8),
    Alloc(PageKind, u64),
    HypPfn,
    PaLimit,
    Boot(u64, u64, bool),
    Op(u64, u64, GuestOp),
    Resume(u64, u64, u64),
    DeviceRead(u64),
    DeviceWrite(u64, u64),
}

pub const FIRST_PFN: u64 = 0x8_0000;
pub const HYP_PFN: u64 = 0x4_0000;
pub const PA_LIMIT: u64 = 0x100_0000;
pub const HANDLE: u64 = 5;

pub struct Fake {
    pub log: Vec<Event>,
    /// HYP_FEATURES x2.
    pub features: u64,
    /// When set, HYP_FEATURES answers this instead.
    pub features_result: Option<[u64; 5]>,
    /// Results of host calls other than HYP_FEATURES, in order; when empty:
    /// VM_CREATE gives [`HANDLE`], VCPU_CREATE gives 0, 1, ..., others ok.
    pub host: VecDeque<[u64; 5]>,
    pub reads: VecDeque<Result<u64, Abort>>,
    pub writes: VecDeque<Result<(), Abort>>,
    /// Outcomes of guest_boot, guest_op and guest_resume, in order;
    /// `Done(0)` when empty.
    pub guest: VecDeque<GuestOutcome>,
    pub next_pfn: u64,
    pub next_vcpu: u64,
    pub begin_error: Option<String>,
    pub alloc_error: Option<String>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            log: Vec::new(),
            features: 0,
            features_result: None,
            host: VecDeque::new(),
            reads: VecDeque::new(),
            writes: VecDeque::new(),
            guest: VecDeque::new(),
            next_pfn: FIRST_PFN,
            next_vcpu: 0,
            begin_error: None,
            alloc_error: None,
        }
    }
}

pub fn id(call: HostCallId) -> u64 {
    u64::from(call.id())
}

impl Fake {
    /// The host calls made, in order.
    pub fn host_calls(&self) -> Vec<[u64; 7]> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Event::HostCall(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// The log without Begin and End.
    pub fn body(&self) -> Vec<Event> {
        self.log
            .iter()
            .filter(|e| !matches!(e, Event::Begin(_) | Event::End))
            .cloned()
            .collect()
    }
}

impl Machine for Fake {
    fn begin_file(&mut self, name: &str) -> Result<(), String> {
        self.log.push(Event::Begin(name.to_string()));
        match &self.begin_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn end_file(&mut self) {
        self.log.push(Event::End);
    }

    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        self.log.push(Event::HostCall(regs));
        if regs[0] == id(HostCallId::HypFeatures) {
            return self.features_result.unwrap_or([0, 0, self.features, 8, 8]);
        }
        if let Some(r) = self.host.pop_front() {
            return r;
        }
        if regs[0] == id(HostCallId::VmCreate) {
            [0, 0, HANDLE, 0, 0]
        } else if regs[0] == id(HostCallId::VcpuCreate) {
            self.next_vcpu += 1;
            [0, 0, self.next_vcpu - 1, 0, 0]
        } else {
            [0; 5]
        }
    }

    fn host_read(&mut self, pa: u64) -> Result<u64, Abort> {
        self.log.push(Event::Read(pa));
        self.reads.pop_front().unwrap_or(Ok(0))
    }

    fn host_write(&mut self, pa: u64, value: u64) -> Result<(), Abort> {
        self.log.push(Event::Write(pa, value));
        self.writes.pop_front().unwrap_or(Ok(()))
    }

    fn device_read(&mut self, pa: u64) -> Result<u64, String> {
        self.log.push(Event::DeviceRead(pa));
        self.reads
            .pop_front()
            .unwrap_or(Ok(0))
            .map_err(|_| "no device".into())
    }

    fn device_write(&mut self, pa: u64, value: u64) -> Result<(), String> {
        self.log.push(Event::DeviceWrite(pa, value));
        self.writes
            .pop_front()
            .unwrap_or(Ok(()))
            .map_err(|_| "no device".into())
    }

    fn host_fill(&mut self, pa: u64, len: u64, byte: u8) -> Result<(), Abort> {
        self.log.push(Event::Fill(pa, len, byte));
        self.writes.pop_front().unwrap_or(Ok(()))
    }

    fn alloc(&mut self, kind: PageKind, pages: u64) -> Result<u64, String> {
        self.log.push(Event::Alloc(kind, pages));
        if let Some(e) = &self.alloc_error {
            return Err(e.clone());
        }
        let pfn = self.next_pfn;
        self.next_pfn = self.next_pfn.wrapping_add(pages);
        Ok(pfn)
    }

    fn hyp_pfn(&mut self) -> u64 {
        self.log.push(Event::HypPfn);
        HYP_PFN
    }

    fn pa_limit_pfn(&mut self) -> u64 {
        self.log.push(Event::PaLimit);
        PA_LIMIT
    }

    fn guest_boot(&mut self, vm: u64, vcpu: u64, protected: bool) -> GuestOutcome {
        self.log.push(Event::Boot(vm, vcpu, protected));
        self.guest.pop_front().unwrap_or(GuestOutcome::Done(0))
    }

    fn guest_op(&mut self, vm: u64, vcpu: u64, op: GuestOp) -> GuestOutcome {
        self.log.push(Event::Op(vm, vcpu, op));
        self.guest.pop_front().unwrap_or(GuestOutcome::Done(0))
    }

    fn guest_resume(&mut self, vm: u64, vcpu: u64, mmio_read: u64) -> GuestOutcome {
        self.log.push(Event::Resume(vm, vcpu, mmio_read));
        self.guest.pop_front().unwrap_or(GuestOutcome::Done(0))
    }
}

/// Runs `text` as file `f` on `fake`: the tally and the printed lines.
pub fn run_on(fake: &mut Fake, text: &str) -> (Tally, Vec<String>) {
    let mut out = String::new();
    let tally = run_file("f", text, fake, &mut out);
    (tally, out.lines().map(String::from).collect())
}

/// Runs `text` on a fresh fake.
pub fn run(text: &str) -> (Tally, Vec<String>, Fake) {
    let mut fake = Fake::default();
    let (tally, lines) = run_on(&mut fake, text);
    (tally, lines, fake)
}

pub fn tally(passed: u32, failed: u32, skipped: u32) -> Tally {
    Tally {
        passed,
        failed,
        skipped,
    }
}
