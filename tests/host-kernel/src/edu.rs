//! QEMU's `edu` PCIe device (QEMU docs/specs/edu.rst) as a DMA engine the
//! host controls: found at 00:01.0 through the ECAM (`highmem-ecam=off`
//! puts it at 0x3f00_0000), BAR 0 placed in the PCIe MMIO window, memory
//! decoding and bus mastering on. Its DMA goes through the hypervisor's
//! SMMU (StreamID 0x8), which is the point: `dma` mode and the scenario
//! `device` statements use it.

use alloc::format;
use alloc::string::String;

use host_interface::PAGE_SIZE;
use platform::qemu_virt;

use crate::arch;

/// edu's configuration space: bus 0, device 1, function 0.
const EDU_CFG: u64 = qemu_virt::PCIE_ECAM_BASE + (1 << 15);
/// Where the host puts edu's BAR 0 (1 MiB): in the PCIe MMIO window, past
/// the manifest's assignable MMIO.
const EDU_BAR: u64 = 0x1200_0000;
/// edu's DMA buffer, as a DMA address inside the device (4 KiB).
const EDU_BUFFER: u64 = 0x4_0000;

/// Read a 32-bit device register.
fn mmio_read32(pa: u64) -> u32 {
    // SAFETY: `pa` is in edu's configuration space or BAR, both in the low
    // 4 GiB the test host maps Device-nGnRE; no Rust object lives there.
    unsafe { (pa as *const u32).read_volatile() }
}

/// Write a 32-bit device register.
fn mmio_write32(pa: u64, v: u32) {
    // SAFETY: as in `mmio_read32`.
    unsafe { (pa as *mut u32).write_volatile(v) }
}

/// Write a 64-bit device register (edu's DMA registers allow it).
fn mmio_write64(pa: u64, v: u64) {
    // SAFETY: as in `mmio_read32`; the register is 8-byte aligned.
    unsafe { (pa as *mut u64).write_volatile(v) }
}

/// The edu device, set up.
pub struct Edu;

impl Edu {
    /// Find edu at 00:01.0, place BAR 0 and enable memory decoding and bus
    /// mastering; check its identification and liveness registers.
    pub fn probe() -> Result<Edu, String> {
        let id = mmio_read32(EDU_CFG);
        if id != 0x11e8_1234 {
            return Err(format!("no edu at 00:01.0 (vendor/device {id:#x})"));
        }
        mmio_write32(EDU_CFG + 0x10, EDU_BAR as u32);
        // COMMAND: memory space, bus master.
        mmio_write32(EDU_CFG + 0x04, 0x6);
        let ident = mmio_read32(EDU_BAR);
        if ident & 0xff != 0xed {
            return Err(format!("edu BAR 0 answers {ident:#x}"));
        }
        mmio_write32(EDU_BAR + 0x04, 0x1234_5678);
        if mmio_read32(EDU_BAR + 0x04) != !0x1234_5678 {
            return Err("edu liveness check failed".into());
        }
        Ok(Edu)
    }

    /// One DMA of `len` bytes (at most 4 KiB) between `pa` and the start of
    /// the device's buffer: into the device (`to_ram` false) or back. Waits
    /// up to 5 s for the engine.
    pub fn copy(&self, pa: u64, len: u64, to_ram: bool) -> Result<(), String> {
        let len = len.min(PAGE_SIZE);
        let (src, dst) = if to_ram {
            (EDU_BUFFER, pa)
        } else {
            (pa, EDU_BUFFER)
        };
        // QEMU's DMA is coherent, but hardware would need the CPU's lines
        // in memory before and out of the caches after.
        let (start, end) = ((pa & !63) as usize, (pa + len + 63) as usize & !63);
        arch::dcache_clean_invalidate(start, end);
        mmio_write64(EDU_BAR + 0x80, src);
        mmio_write64(EDU_BAR + 0x88, dst);
        mmio_write64(EDU_BAR + 0x90, len);
        mmio_write32(EDU_BAR + 0x98, 1 | if to_ram { 2 } else { 0 });
        let t0 = arch::cntvct();
        let limit = arch::cntfrq_el0().max(1) * 5;
        while mmio_read32(EDU_BAR + 0x98) & 1 != 0 {
            if arch::cntvct().wrapping_sub(t0) > limit {
                return Err("edu DMA did not finish in 5 s".into());
            }
        }
        arch::dcache_clean_invalidate(start, end);
        Ok(())
    }

    /// One page between `pa` and the device's buffer.
    pub fn page(&self, pa: u64, to_ram: bool) -> Result<(), String> {
        self.copy(pa, PAGE_SIZE, to_ram)
    }
}
