//! The redistributors' LPI controls, mediated (RULES.md S1). A
//! redistributor with LPIs enabled reads its LPI property table and writes
//! its pending table wherever GICR_PROPBASER and GICR_PENDBASER point: a
//! bus master. With the ITS withheld the host has no use for LPIs, so they
//! stay off: the RD_base frame of every redistributor is never mapped in
//! the host's stage-2, and each host access to it is emulated here:
//!
//! - GICR_CTLR writes go through with EnableLPIs forced to 0;
//! - GICR_PROPBASER, GICR_PENDBASER, GICR_SETLPIR, GICR_CLRLPIR,
//!   GICR_INVLPIR and GICR_INVALLR writes are ignored (reads of the two
//!   base registers give what the hardware holds: the reset value, since
//!   nothing ever reaches them);
//! - GICR_TYPER reads have PLPIS and DirectLPI clear, so a host kernel
//!   does not try LPIs at all;
//! - everything else is forwarded as it is.
//!
//! Only single-register loads and stores that report a valid syndrome
//! (ESR_EL2.ISV) are emulated; anything else aborts like a withheld page.

use crate::entry::Frame;
use crate::{gic, sysreg};

const GICR_CTLR: usize = 0x0;
const GICR_TYPER: usize = 0x8;
/// Registers whose writes are dropped: SETLPIR, CLRLPIR, PROPBASER,
/// PENDBASER, INVLPIR, INVALLR (each 64-bit).
const DROPPED: [usize; 6] = [0x40, 0x48, 0x70, 0x78, 0xA0, 0xB0];
/// GICR_CTLR.EnableLPIs.
const ENABLE_LPIS: u64 = 1;
/// GICR_TYPER.PLPIS and GICR_TYPER.DirectLPI.
const TYPER_LPI_BITS: u64 = (1 << 0) | (1 << 3);

/// If `ipa` lies in a redistributor's RD_base frame, emulate the host's
/// access described by `esr` and step over it: true. False if the access
/// is elsewhere or cannot be emulated (the caller then decides).
pub fn emulate(ipa: u64, esr: u64, frame: &mut Frame) -> bool {
    let Some(rd) = gic::rd_base_frame(ipa as usize) else {
        return false;
    };
    // ISV, then the access: size, sign extension, register, width, write.
    if esr & (1 << 24) == 0 {
        return false;
    }
    let size = 1usize << ((esr >> 22) & 3);
    let sign = esr & (1 << 21) != 0;
    let srt = ((esr >> 16) & 0x1f) as usize;
    let sf = esr & (1 << 15) != 0;
    let write = esr & (1 << 6) != 0;
    let offset = ipa as usize - rd;
    if !offset.is_multiple_of(size) || size < 4 {
        return false;
    }
    let reg = offset & !7;
    let addr = rd + offset;
    if write {
        let mut v = if srt == 31 { 0 } else { frame.x[srt] };
        if size == 4 {
            v &= 0xffff_ffff;
        }
        if DROPPED.contains(&reg) {
            // Dropped: LPIs stay off, so these have nothing to act on.
        } else {
            if offset == GICR_CTLR {
                v &= !ENABLE_LPIS;
            }
            mmio_write(addr, v, size);
        }
    } else {
        let mut v = mmio_read(addr, size);
        if offset == GICR_TYPER {
            v &= !TYPER_LPI_BITS;
        }
        if offset == GICR_CTLR {
            v &= !ENABLE_LPIS;
        }
        if sign && size == 4 {
            v = v as u32 as i32 as i64 as u64;
        }
        if !sf {
            v &= 0xffff_ffff;
        }
        if srt != 31 {
            frame.x[srt] = v;
        }
    }
    // SAFETY: ELR_EL2 points at the emulated load or store in the host;
    // the host continues after it, as if the access had completed.
    unsafe { sysreg::set_elr_el2(sysreg::elr_el2().wrapping_add(4)) };
    true
}

fn mmio_read(addr: usize, size: usize) -> u64 {
    // SAFETY: `addr` is inside a redistributor's RD_base frame (checked by
    // `gic::rd_base_frame`), which EL2 maps as device memory; size-aligned.
    unsafe {
        if size == 8 {
            (addr as *const u64).read_volatile()
        } else {
            u64::from((addr as *const u32).read_volatile())
        }
    }
}

fn mmio_write(addr: usize, v: u64, size: usize) {
    // SAFETY: as in `mmio_read`; register writes have no memory effects
    // beyond the GIC (the LPI base registers never get here).
    unsafe {
        if size == 8 {
            (addr as *mut u64).write_volatile(v)
        } else {
            (addr as *mut u32).write_volatile(v as u32)
        }
    }
}
