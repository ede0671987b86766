//! The scenario [`Machine`] on the real hypervisor: host calls are `hvc #0`,
//! host memory accesses go through [`access`], and pages come from bump
//! allocators — RAM from the host's free RAM, COHERENT and MMIO from the
//! boot manifest's regions (the same manifest the hypervisor boots with).
//! Every file of a run shares one boot, so allocations only move up: no
//! page is handed out twice.
//!
//! Guests are not run on the real image yet: `boot`, `guest` and `resume`
//! statements fail with a message.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use platform::{Manifest, ManifestKind};
use scenario::{Abort, GuestOp, GuestOutcome, Machine, PageKind};

use crate::{access, arch};

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
    /// Free RAM, one cursor per free range, lowest first.
    ram: Vec<Cursor>,
    coherent: Cursor,
    mmio: Cursor,
    mmio_uc: Cursor,
    hyp_pfn: u64,
    pa_bits: u32,
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
            ram: free_ram
                .iter()
                .map(|&(next, end)| Cursor { next, end })
                .collect(),
            coherent: region(ManifestKind::Coherent),
            mmio: region(ManifestKind::Mmio),
            mmio_uc: region(ManifestKind::MmioUncached),
            hyp_pfn: hyp.next + (hyp.end - hyp.next) / 2,
            pa_bits,
        }
    }

    /// Pages of free RAM left in total.
    pub fn free_ram_pages(&self) -> u64 {
        self.ram.iter().map(|c| c.end - c.next).sum()
    }
}

const NO_GUESTS: &str = "guests are not run on the real image yet";

impl Machine for HostMachine {
    fn begin_file(&mut self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    fn end_file(&mut self) {}

    fn host_call(&mut self, regs: [u64; 7]) -> [u64; 5] {
        arch::hvc_host_call(regs)
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

    fn guest_boot(&mut self, _vm: u64, _vcpu: u64, _protected: bool) -> GuestOutcome {
        GuestOutcome::Error(NO_GUESTS.into())
    }

    fn guest_op(&mut self, _vm: u64, _vcpu: u64, _op: GuestOp) -> GuestOutcome {
        GuestOutcome::Error(NO_GUESTS.into())
    }

    fn guest_resume(&mut self, _vm: u64, _vcpu: u64, _mmio_read: u64) -> GuestOutcome {
        GuestOutcome::Error(NO_GUESTS.into())
    }
}
