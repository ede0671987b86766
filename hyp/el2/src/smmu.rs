//! The SMMUv3 at EL2 (RULES.md S1): MMIO access for the `smmu` crate's
//! driver, the hypervisor memory its stream table and queues live in, the
//! IOMMU backend of the core's DMA view, and the event queue drained on the
//! host's hypercalls, one console line per fault.
//!
//! Every stream gets the DMA view as its stage-2; StreamIDs past the PCIe
//! bus range abort. Nothing here waits without a bound: the driver gives up
//! after `Smmu::POLL_LIMIT` register reads and then turns the SMMU off with
//! GBPA at abort, which blocks all DMA (fail closed).

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::boxed::Box;
use hyp::DmaInvalidate;
use smmu::{Command, DmaBuffer, Smmu, SmmuMemory, SmmuRegs, Stage2Config};
use spin::mutex::SpinMutex;

use crate::println;

/// Hypervisor memory for the SMMU (inside the manifest's `hyp` range, which
/// EL2 maps normal memory): the linear stream table, 64 bytes for each of
/// up to 2^16 StreamIDs (256 buses)...
pub const STRTAB_BASE: usize = 0x4300_0000;
const STRTAB_SIZE: usize = 4 << 20;
/// ...the command queue (4096 commands)...
const CMDQ_BASE: usize = STRTAB_BASE + STRTAB_SIZE;
const CMDQ_SIZE: usize = 64 << 10;
/// ...and the event queue (2048 records).
const EVTQ_BASE: usize = CMDQ_BASE + CMDQ_SIZE;
const EVTQ_SIZE: usize = 64 << 10;
/// First page after the SMMU's memory: the DMA view's table pages follow.
pub const DMA_VIEW_BASE: usize = EVTQ_BASE + EVTQ_SIZE;
/// VMID of the DMA view in the SMMU's TLBs (its own namespace: the SMMU
/// does not take part in the CPUs' broadcast TLB maintenance here).
const DMA_VMID: u16 = 0;
/// Input size of the DMA view: all of QEMU virt's RAM lies far below it,
/// and it fits QEMU's 44-bit OAS and every CPU model's PA size.
pub const DMA_IPA_BITS: u32 = 40;

/// The SMMU's registers, mapped Device-nGnRE at EL2.
pub struct MmioRegs {
    base: usize,
}

impl SmmuRegs for MmioRegs {
    fn read32(&mut self, offset: usize) -> u32 {
        // SAFETY: `base` is the SMMU's register window (from the device
        // tree, withheld from the host), mapped as device memory, and every
        // offset the driver uses lies inside its two 64 KiB pages.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { ((self.base + offset) as *mut u32).write_volatile(value) }
    }
    fn write64(&mut self, offset: usize, value: u64) {
        // SAFETY: as in `read32`; 64-bit registers are 8-byte aligned.
        unsafe { ((self.base + offset) as *mut u64).write_volatile(value) }
    }
    fn barrier(&mut self) {
        // SAFETY: a barrier has no effect on memory safety.
        unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
    }
}

static SMMU: SpinMutex<Option<Smmu<MmioRegs>>> = SpinMutex::new(None);
/// Translation faults reported so far.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Set the SMMU up at `base` for `buses` PCIe buses, its streams
/// translating through the stage-2 whose root, start level and size are
/// given. On any error the SMMU is left off with GBPA at abort.
pub fn init(base: usize, buses: u32, root_pa: u64, sl0: u64) -> Result<(), smmu::Error> {
    let buffer = |at: usize, bytes: usize| DmaBuffer {
        va: at as *mut u64,
        pa: at as u64,
        bytes,
    };
    let mem = SmmuMemory {
        strtab: buffer(STRTAB_BASE, STRTAB_SIZE),
        cmdq: buffer(CMDQ_BASE, CMDQ_SIZE),
        evtq: buffer(EVTQ_BASE, EVTQ_SIZE),
    };
    let streams_log2 = 8 + buses.next_power_of_two().trailing_zeros();
    // SAFETY: the register window is mapped device memory for EL2 only;
    // the three buffers are hypervisor memory (the `hyp` range, identity
    // mapped), size-aligned, and used by nothing else.
    let mut s = unsafe { Smmu::new(MmioRegs { base }, mem, streams_log2) }?;
    let f = *s.features();
    let ste = smmu::ste::stage2(&Stage2Config {
        vmid: DMA_VMID,
        ipa_bits: DMA_IPA_BITS,
        sl0,
        ps: smmu::Features::ps_encoding(DMA_IPA_BITS.min(f.oas_bits)),
        root_pa,
    });
    let r = s.enable(&ste);
    println!(
        "hyp: SMMUv3 at {base:#x}: {} streams, OAS {} bits, FWB {}, {}",
        s.streams(),
        f.oas_bits,
        if f.fwb { "yes" } else { "no" },
        match &r {
            Ok(()) => "translating through the DMA view".into(),
            Err(e) => alloc::format!("FAILED ({e}): all DMA aborts"),
        }
    );
    *SMMU.lock() = Some(s);
    r
}

/// Console lines per drain: a blocked DMA of one page can raise a fault per
/// bus beat (QEMU: one per 4 bytes), so the rest of a burst is summed up.
const LINES_PER_DRAIN: u32 = 4;

/// Drain the event queue: faults counted, one console line per event up to
/// [`LINES_PER_DRAIN`], then one line for the rest. Called on the host's
/// hypercalls; skipped if another CPU is at it.
pub fn poll_events() {
    let Some(mut guard) = SMMU.try_lock() else {
        return;
    };
    let Some(s) = guard.as_mut() else {
        return;
    };
    let mut lines = 0;
    let mut more = 0u32;
    loop {
        let n = s.drain_events(&mut |e| {
            let total = if e.is_translation_fault() {
                FAULTS.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                FAULTS.load(Ordering::Relaxed)
            };
            if lines < LINES_PER_DRAIN {
                lines += 1;
                println!(
                    "hyp: SMMU fault: {} stream {:#x} {} {:#x} (faults={total})",
                    e.name(),
                    e.sid,
                    if e.read { "read" } else { "write" },
                    e.addr
                );
            } else {
                more += 1;
            }
        });
        // At most a few queues' worth per call, so a device cannot keep
        // the hypervisor here.
        if n == 0 || more > 8 * 2048 {
            break;
        }
    }
    if more > 0 {
        println!(
            "hyp: SMMU fault: {more} more (faults={})",
            FAULTS.load(Ordering::Relaxed)
        );
    }
}

/// The core's IOMMU: SMMU commands for the DMA view.
pub struct El2Iommu;

impl El2Iommu {
    fn with(f: impl FnOnce(&mut Smmu<MmioRegs>) -> Result<(), smmu::Error>) {
        if let Some(s) = SMMU.lock().as_mut() {
            if let Err(e) = f(s) {
                // The driver has already turned the SMMU off (fail closed).
                println!("hyp: SMMU error: {e}; all DMA now aborts");
            }
        }
    }
}

impl DmaInvalidate for El2Iommu {
    fn publish(&mut self) {
        // SAFETY: a barrier has no effect on memory safety.
        unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
    }
    fn tlbi_ipa(&mut self, ipa: u64) {
        Self::with(|s| {
            s.submit(&[Command::TlbiS2Ipa {
                vmid: DMA_VMID,
                ipa,
            }])
        });
    }
    fn tlbi_all(&mut self) {
        Self::with(|s| s.submit(&[Command::TlbiS12Vmall { vmid: DMA_VMID }]));
    }
    fn sync(&mut self) {
        Self::with(|s| s.sync());
    }
    fn fail_closed(&mut self) {
        if let Some(s) = SMMU.lock().as_mut() {
            s.fail_closed();
        }
        println!("hyp: DMA view out of step: SMMU off, all DMA aborts");
    }
}

/// The IOMMU backend, boxed for the core.
pub fn iommu() -> Box<dyn DmaInvalidate> {
    Box::new(El2Iommu)
}
