//! The scenario [`Machine`] on the real hypervisor: host calls are `hvc #0`,
//! host memory accesses go through [`access`], and pages come from bump
//! allocators — RAM from the host's free RAM, COHERENT and MMIO from the
//! boot manifest's regions (the same manifest the hypervisor boots with).
//! Every file of a run shares one boot, so allocations only move up: no
//! page is handed out twice.
//!
//! Guests run the test guest ([`test_guest`]): `boot` copies it into the
//! VM, `guest` posts a command in its mailbox, and each runs the vCPU.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use platform::{Manifest, ManifestKind};
use scenario::{Abort, GuestOp, GuestOutcome, Machine, PageKind};

use core::mem::offset_of;

use host_interface::{ExitReason, HostCallId, RunPage};

use crate::edu::Edu;
use crate::{access, arch, test_guest};

const PAGE_SHIFT: u32 = host_interface::PAGE_SHIFT;

/// Bump allocator over the pfns `[next, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    next: u64,
    end: u64,
}

impl Cursor {
    fn take(&mut self, pages: u64) -> Option<u64> {
        let first = self.next;
        let end = first.checked_add(pages)?;
        if pages == 0 || end > self.end {
            return None;
        }
        self.next = end;
        Some(first)
    }
}

/// `[base, base + size)` in bytes as whole pages `[first, end)`, rounded in.
fn pages_in(base: u64, size: u64) -> (u64, u64) {
    let mask = (1u64 << PAGE_SHIFT) - 1;
    let first = base.saturating_add(mask) >> PAGE_SHIFT;
    let end = base.saturating_add(size) >> PAGE_SHIFT;
    (first, end.max(first))
}

/// `[base, base + size)` in bytes as whole pages `[first, end)`, rounded out.
fn pages_over(base: u64, size: u64) -> (u64, u64) {
    let mask = (1u64 << PAGE_SHIFT) - 1;
    let first = base >> PAGE_SHIFT;
    let end = base.saturating_add(size).saturating_add(mask) >> PAGE_SHIFT;
    (first, end)
}

/// The pages of `memory` outside every `excluded` range (all `(base,
/// size)` in bytes), as sorted pfn ranges `[first, end)`.
pub fn free_pages(
    memory: impl Iterator<Item = (u64, u64)>,
    excluded: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut free: Vec<(u64, u64)> = memory
        .map(|(base, size)| pages_in(base, size))
        .filter(|(first, end)| first < end)
        .collect();
    for &(base, size) in excluded {
        let (x_first, x_end) = pages_over(base, size);
        free = free
            .into_iter()
            .flat_map(|(first, end)| {
                let below = (first, end.min(x_first));
                let above = (first.max(x_end), end);
                [below, above]
            })
            .filter(|(first, end)| first < end)
            .collect();
    }
    free.sort_unstable();
    free
}

/// The test host's [`Machine`].
pub struct HostMachine {
    /// (VM handle, vCPU index) -> run page pfn, learnt from VCPU_CREATE.
    run_pages: Vec<((u64, u64), u64)>,
    /// VM handle -> first pfn of the test guest's pages.
    images: Vec<(u64, u64)>,
    /// Mailbox sequence number of the last command posted.
    seq: u64,
    /// Free RAM, one cursor per free range, lowest first.
    ram: Vec<Cursor>,
    coherent: Cursor,
    mmio: Cursor,
    mmio_uc: Cursor,
    hyp_pfn: u64,
    pa_bits: u32,
    /// The DMA device and a RAM page it copies through, set up by the first
    /// `device` statement.
    device: Option<(Edu, u64)>,
}

impl HostMachine {
    /// A machine handing out the RAM pages `free_ram` (pfn ranges) and the
    /// regions of `manifest`.
    pub fn new(free_ram: &[(u64, u64)], manifest: &Manifest, pa_bits: u32) -> HostMachine {
        let region = |kind: ManifestKind| {
            manifest.entries().iter().find(|e| e.kind == kind).map_or(
                Cursor { next: 0, end: 0 },
                |e| Cursor {
                    next: e.base_pfn(),
                    end: e.end_pfn(),
                },
            )
        };
        let hyp = region(ManifestKind::Hyp);
        HostMachine {
            run_pages: Vec::new(),
            images: Vec::new(),
            seq: 0,
            ram: free_ram
                .iter()
                .map(|&(next, end)| Cursor { next, end })
                .collect(),
            coherent: region(ManifestKind::Coherent),
            mmio: region(ManifestKind::Mmio),
            mmio_uc: region(ManifestKind::MmioUncached),
            hyp_pfn: hyp.next + (hyp.end - hyp.next) / 2,
            pa_bits,
            device: None,
        }
    }

    /// Pages of free RAM left in total.
    pub fn free_ram_pages(&self) -> u64 {
        self.ram.iter().map(|c| c.end - c.next).sum()
    }
}

fn run_field(run: u64, off: usize) -> u64 {
    access::read((run << PAGE_SHIFT) + off as u64).unwrap_or(0)
}

fn set_run_field(run: u64, off: usize, v: u64) {
    let _ = access::write((run << PAGE_SHIFT) + off as u64, v);
}

impl HostMachine {
    fn run_page(&self, vm: u64, vcpu: u64) -> Option<u64> {
        self.run_pages
            .iter()
            .find(|(k, _)| *k == (vm, vcpu))
            .map(|&(_, p)| p)
    }

    /// The edu device and its bounce page (the host's own RAM).
    fn device(&mut self) -> Result<(&Edu, u64), String> {
        if self.device.is_none() {
            let edu = Edu::probe()?;
            let page = self
                .ram
                .iter_mut()
                .find_map(|c| c.take(1))
                .ok_or("no free RAM page for DMA")?;
            self.device = Some((edu, page << PAGE_SHIFT));
        }
        match &self.device {
            Some((edu, page)) => Ok((edu, *page)),
            None => Err("no DMA device".into()),
        }
    }

    fn image(&self, vm: u64) -> Option<u64> {
        self.images.iter().find(|(h, _)| *h == vm).map(|&(_, p)| p)
    }

    /// One VCPU_RUN, read the way the scenario interpreter wants it.
    fn run_once(&mut self, vm: u64, vcpu: u64) -> GuestOutcome {
        let r = arch::hvc_host_call([u64::from(HostCallId::VcpuRun.id()), vm, vcpu, 0, 0, 0, 0]);
        if r[0] != 0 || r[1] != 0 {
            return GuestOutcome::CallFailed(r);
        }
        let Some(run) = self.run_page(vm, vcpu) else {
            return GuestOutcome::Error("no run page known for this vCPU".into());
        };
        let reason = r[2];
        match ExitReason::from_u64(reason) {
            Some(ExitReason::Hvc) => {
                let args = offset_of!(RunPage, hvc_args);
                match run_field(run, args) {
                    test_guest::TG_READY => GuestOutcome::Done(0),
                    test_guest::TG_DONE => GuestOutcome::Done(run_field(run, args + 8)),
                    _ => GuestOutcome::Exit { reason, ipa: None },
                }
            }
            Some(ExitReason::Mmio | ExitReason::MemFault) => GuestOutcome::Exit {
                reason,
                ipa: Some(run_field(run, offset_of!(RunPage, fault_ipa))),
            },
            _ => GuestOutcome::Exit { reason, ipa: None },
        }
    }
}

impl Machine for HostMachine {
    fn begin_file(&mut self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    fn end_file(&mut self) {}

    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        let r = arch::hvc_host_call(regs);
        // Learn run pages the way a host would: from its own calls.
        if regs[0] == u64::from(HostCallId::VcpuCreate.id()) && r[0] == 0 && r[1] == 0 {
            self.run_pages.push(((regs[1], r[2]), regs[2]));
        }
        r
    }

    fn host_read(&mut self, pa: u64) -> Result<u64, Abort> {
        access::read(pa)
    }

    fn host_write(&mut self, pa: u64, value: u64) -> Result<(), Abort> {
        access::write(pa, value)
    }

    fn host_fill(&mut self, pa: u64, len: u64, byte: u8) -> Result<(), Abort> {
        access::fill(pa, len, byte)
    }

    fn device_read(&mut self, pa: u64) -> Result<u64, String> {
        // `pa` into the device, then the device's copy into the bounce page.
        let (edu, bounce) = self.device()?;
        let pa = pa & !7;
        edu.copy(pa, 8, false)?;
        edu.copy(bounce, 8, true)?;
        access::read(bounce).map_err(|_| String::from("the bounce page aborted"))
    }

    fn device_write(&mut self, pa: u64, value: u64) -> Result<(), String> {
        let (edu, bounce) = self.device()?;
        access::write(bounce, value).map_err(|_| String::from("the bounce page aborted"))?;
        edu.copy(bounce, 8, false)?;
        edu.copy(pa & !7, 8, true)
    }

    fn alloc(&mut self, kind: PageKind, pages: u64) -> Result<u64, String> {
        let got = match kind {
            PageKind::Ram => self.ram.iter_mut().find_map(|c| c.take(pages)),
            PageKind::Coherent => self.coherent.take(pages),
            PageKind::Mmio => self.mmio.take(pages),
            PageKind::MmioUc => self.mmio_uc.take(pages),
        };
        got.ok_or_else(|| format!("no {pages} free {kind:?} pages left"))
    }

    fn hyp_pfn(&mut self) -> u64 {
        self.hyp_pfn
    }

    fn pa_limit_pfn(&mut self) -> u64 {
        1u64 << (self.pa_bits - PAGE_SHIFT)
    }

    fn guest_boot(&mut self, vm: u64, vcpu: u64, protected: bool) -> GuestOutcome {
        let Some(run) = self.run_page(vm, vcpu) else {
            return GuestOutcome::Error(format!(
                "vCPU {vcpu} of VM {vm} was not created by this scenario"
            ));
        };
        if self.image(vm).is_none() {
            let pfn = match self.alloc(PageKind::Ram, test_guest::GUEST_PAGES) {
                Ok(p) => p,
                Err(e) => return GuestOutcome::Error(e),
            };
            // The guest's code in its first page, a clean mailbox in the second.
            if let Err(e) = test_guest::install(pfn << PAGE_SHIFT) {
                return GuestOutcome::Error(e.into());
            }
            let id = if protected {
                HostCallId::GuestDonate
            } else {
                HostCallId::GuestShare
            };
            let gfn = test_guest::GUEST_BASE >> PAGE_SHIFT;
            let r = arch::hvc_host_call([
                u64::from(id.id()),
                vm,
                pfn,
                gfn,
                test_guest::GUEST_PAGES,
                7,
                0,
            ]);
            if r[0] != 0 || r[1] != 0 {
                return GuestOutcome::CallFailed(r);
            }
            self.images.push((vm, pfn));
        }
        set_run_field(run, offset_of!(RunPage, entry), test_guest::GUEST_BASE);
        set_run_field(
            run,
            offset_of!(RunPage, x0),
            test_guest::GUEST_BASE + test_guest::MAILBOX_OFFSET,
        );
        self.run_once(vm, vcpu)
    }

    fn guest_op(&mut self, vm: u64, vcpu: u64, op: GuestOp) -> GuestOutcome {
        let Some(pfn) = self.image(vm) else {
            return GuestOutcome::Error("the test guest was not booted in this VM".into());
        };
        let mb = (pfn << PAGE_SHIFT) + test_guest::MAILBOX_OFFSET;
        use test_guest::{mailbox, op as code};
        let (code, ipa, value, regs) = match op {
            GuestOp::Read { ipa } => (code::READ, ipa, 0, [0; 7]),
            GuestOp::Write { ipa, value } => (code::WRITE, ipa, value, [0; 7]),
            GuestOp::Exec { ipa } => (code::EXEC, ipa, 0, [0; 7]),
            GuestOp::Hvc { regs } => (code::HVC, 0, 0, regs),
        };
        let mut ok = access::write(mb + mailbox::OP, code).is_ok()
            && access::write(mb + mailbox::IPA, ipa).is_ok()
            && access::write(mb + mailbox::VALUE, value).is_ok();
        for (k, r) in regs.iter().enumerate() {
            ok &= access::write(mb + mailbox::REGS + 8 * k as u64, *r).is_ok();
        }
        self.seq += 1;
        ok &= access::write(mb + mailbox::SEQ, self.seq).is_ok();
        if !ok {
            return GuestOutcome::Error("the host cannot write the guest's mailbox".into());
        }
        self.run_once(vm, vcpu)
    }

    fn guest_resume(&mut self, vm: u64, vcpu: u64, mmio_read: u64) -> GuestOutcome {
        if let Some(run) = self.run_page(vm, vcpu) {
            set_run_field(run, offset_of!(RunPage, mmio_read_data), mmio_read);
            for k in 0..4 {
                set_run_field(run, offset_of!(RunPage, hvc_results) + 8 * k, 0);
            }
        }
        self.run_once(vm, vcpu)
    }
}
