//! The guest's GICv3 distributor and redistributors, emulated from MMIO
//! exits (Arm IHI 0069, chapter 12, register maps).
//!
//! The guest reaches its CPU interface through system registers, which the
//! hypervisor serves with the list registers; what is left to the VMM is
//! the memory-mapped part: which interrupts are enabled, their group,
//! priority, trigger and routing, and the redistributors' wake state. When
//! a device raises an SPI that the guest has enabled, [`Gic`] says which
//! vCPU it goes to; the caller injects it through that vCPU's run page.
//! SGIs and the virtual timer (PPI 27) are delivered by the hypervisor
//! itself, so the redistributors' SGI/PPI registers here are state only.
//!
//! The emulation presents one security state (GICD_CTLR.DS = 1), affinity
//! routing always on (ARE), no LPIs and [`NR_SPIS`] SPIs.

use std::sync::Mutex;

/// SPIs the distributor implements: INTIDs 32..32 + NR_SPIS.
pub const NR_SPIS: u32 = 64;
/// Size of the distributor's frame.
pub const DIST_SIZE: u64 = 0x1_0000;
/// Size of one redistributor (RD_base and SGI_base frames).
pub const REDIST_SIZE: u64 = 0x2_0000;

const NR_IRQS: usize = 32 + NR_SPIS as usize;

/// GICD_CTLR bits.
const CTLR_ENABLE_G1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;
/// PIDR2.ArchRev = 3: GICv3.
const PIDR2_GICV3: u64 = 0x3 << 4;
/// An implementer code for IIDR (JEP106 of Arm, product 0).
const IIDR: u64 = 0x43B;
/// GICR_WAKER bits.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// An interrupt to inject: (vCPU index, INTID).
pub type Delivery = (usize, u32);

/// The state of a set of interrupts, one entry per INTID.
#[derive(Clone)]
struct Bank {
    group: Vec<bool>,
    enabled: Vec<bool>,
    pending: Vec<bool>,
    active: Vec<bool>,
    priority: Vec<u8>,
    /// ICFGR's 2-bit fields (bit 1: edge-triggered).
    config: Vec<u8>,
    grpmod: Vec<bool>,
}

impl Bank {
    fn new(n: usize) -> Self {
        Self {
            group: vec![false; n],
            enabled: vec![false; n],
            pending: vec![false; n],
            active: vec![false; n],
            priority: vec![0; n],
            config: vec![0; n],
            grpmod: vec![false; n],
        }
    }

    /// Reads a 1-bit-per-interrupt register whose first INTID is `first`.
    fn read_bits(bits: &[bool], first: usize) -> u64 {
        (0..32).fold(0u64, |acc, i| {
            if bits.get(first + i).copied().unwrap_or(false) {
                acc | (1 << i)
            } else {
                acc
            }
        })
    }

    /// Applies `value` to a 1-bit-per-interrupt register: set where `value`
    /// has ones (`to` true) or clear there (`to` false); `lowest` is the
    /// first INTID the register may change.
    fn write_bits(bits: &mut [bool], first: usize, value: u64, to: bool, lowest: usize) {
        for i in 0..32 {
            if value & (1 << i) != 0 && first + i >= lowest {
                if let Some(b) = bits.get_mut(first + i) {
                    *b = to;
                }
            }
        }
    }

    /// Registers common to GICD and GICR_SGI_base at the same offsets.
    /// `first_intid` is the INTID of bit 0 of the register at offset `base`
    /// (0 for both: GICD starts at INTID 0, GICR at SGI 0). Returns None for
    /// an offset this bank does not hold.
    fn read(&self, off: u64, size: u8) -> Option<u64> {
        let idx = |base: u64| ((off - base) / 4 * 32) as usize;
        Some(match off {
            0x080..=0x0FF => Self::read_bits(&self.group, idx(0x080)),
            0x100..=0x17F => Self::read_bits(&self.enabled, idx(0x100)),
            0x180..=0x1FF => Self::read_bits(&self.enabled, idx(0x180)),
            0x200..=0x27F => Self::read_bits(&self.pending, idx(0x200)),
            0x280..=0x2FF => Self::read_bits(&self.pending, idx(0x280)),
            0x300..=0x37F => Self::read_bits(&self.active, idx(0x300)),
            0x380..=0x3FF => Self::read_bits(&self.active, idx(0x380)),
            0x400..=0x7FF => {
                let first = (off - 0x400) as usize;
                (0..usize::from(size)).fold(0u64, |acc, i| {
                    acc | u64::from(self.priority.get(first + i).copied().unwrap_or(0)) << (8 * i)
                })
            }
            0xC00..=0xCFF => {
                let first = ((off - 0xC00) * 4) as usize;
                (0..16).fold(0u64, |acc, i| {
                    acc | u64::from(self.config.get(first + i).copied().unwrap_or(0) & 3) << (2 * i)
                })
            }
            0xD00..=0xD7F => Self::read_bits(&self.grpmod, idx(0xD00)),
            _ => return None,
        })
    }

    /// The write counterpart of [`Bank::read`]; `lowest` protects SGIs
    /// and PPIs in the distributor (their registers there are RAZ/WI with
    /// affinity routing). Returns false for an offset it does not hold.
    fn write(&mut self, off: u64, size: u8, value: u64, lowest: usize) -> bool {
        let idx = |base: u64| ((off - base) / 4 * 32) as usize;
        match off {
            0x080..=0x0FF => {
                let first = idx(0x080);
                for i in 0..32 {
                    if first + i >= lowest {
                        if let Some(b) = self.group.get_mut(first + i) {
                            *b = value & (1 << i) != 0;
                        }
                    }
                }
            }
            0x100..=0x17F => Self::write_bits(&mut self.enabled, idx(0x100), value, true, lowest),
            0x180..=0x1FF => Self::write_bits(&mut self.enabled, idx(0x180), value, false, lowest),
            0x200..=0x27F => Self::write_bits(&mut self.pending, idx(0x200), value, true, lowest),
            0x280..=0x2FF => Self::write_bits(&mut self.pending, idx(0x280), value, false, lowest),
            0x300..=0x37F => Self::write_bits(&mut self.active, idx(0x300), value, true, lowest),
            0x380..=0x3FF => Self::write_bits(&mut self.active, idx(0x380), value, false, lowest),
            0x400..=0x7FF => {
                let first = (off - 0x400) as usize;
                for i in 0..usize::from(size) {
                    if first + i >= lowest {
                        if let Some(p) = self.priority.get_mut(first + i) {
                            *p = (value >> (8 * i)) as u8;
                        }
                    }
                }
            }
            0xC00..=0xCFF => {
                let first = ((off - 0xC00) * 4) as usize;
                for i in 0..16 {
                    // SGIs are always edge-triggered; their field is RO.
                    if first + i >= lowest.max(16) {
                        if let Some(c) = self.config.get_mut(first + i) {
                            *c = ((value >> (2 * i)) & 3) as u8;
                        }
                    }
                }
            }
            0xD00..=0xD7F => {
                let first = idx(0xD00);
                for i in 0..32 {
                    if first + i >= lowest {
                        if let Some(b) = self.grpmod.get_mut(first + i) {
                            *b = value & (1 << i) != 0;
                        }
                    }
                }
            }
            _ => return false,
        }
        true
    }
}

struct Redist {
    waker: u32,
    bank: Bank,
}

struct State {
    ctlr: u32,
    dist: Bank,
    /// GICD_IROUTER<n> for each SPI, index INTID - 32.
    route: Vec<u64>,
    redists: Vec<Redist>,
}

/// The distributor and the redistributors of one VM.
pub struct Gic {
    vcpus: usize,
    state: Mutex<State>,
}

impl Gic {
    /// A GIC for `vcpus` vCPUs (vCPU n has affinity 0.0.0.n), all
    /// interrupts disabled, as after reset.
    pub fn new(vcpus: usize) -> Self {
        let redists = (0..vcpus)
            .map(|_| Redist {
                waker: WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
                bank: Bank::new(32),
            })
            .collect();
        Self {
            vcpus,
            state: Mutex::new(State {
                ctlr: CTLR_ARE | CTLR_DS,
                dist: Bank::new(NR_IRQS),
                route: vec![0; NR_SPIS as usize],
                redists,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the registers half-written in a
        // way that matters more than stopping would: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where SPI `intid` goes: the vCPU of its IROUTER affinity, or vCPU 0
    /// for "any" (IRM) or an affinity no vCPU has.
    fn target(&self, s: &State, intid: u32) -> usize {
        let r = s.route.get(intid as usize - 32).copied().unwrap_or(0);
        let aff0 = (r & 0xff) as usize;
        if r & (1 << 31) != 0 || r & 0xff_00ff_ff00 != 0 || aff0 >= self.vcpus {
            0
        } else {
            aff0
        }
    }

    /// Takes every SPI that is pending and deliverable (enabled, group 1
    /// enabled) out of the distributor: the hypervisor holds it from now.
    fn collect(&self, s: &mut State) -> Vec<Delivery> {
        let mut out = Vec::new();
        if s.ctlr & CTLR_ENABLE_G1 == 0 {
            return out;
        }
        for intid in 32..NR_IRQS {
            if s.dist.pending[intid] && s.dist.enabled[intid] {
                s.dist.pending[intid] = false;
                out.push((self.target(s, intid as u32), intid as u32));
            }
        }
        out
    }

    /// A device asserts SPI `intid` (an edge: the hypervisor keeps it
    /// pending in the guest until the guest acknowledges it).
    pub fn raise_spi(&self, intid: u32) -> Vec<Delivery> {
        let mut s = self.lock();
        if let Some(p) = s.dist.pending.get_mut(intid as usize) {
            if intid >= 32 {
                *p = true;
            }
        }
        self.collect(&mut s)
    }

    /// A read of the distributor at offset `off`.
    pub fn dist_read(&self, off: u64, size: u8) -> u64 {
        let s = self.lock();
        match off {
            0x0000 => u64::from(s.ctlr),
            // ITLinesNumber, 10 INTID bits, no LPIs, no security extension.
            0x0004 => {
                (u64::from(NR_IRQS as u32 / 32 - 1))
                    | (9 << 19)
                    | (((self.vcpus as u64 - 1) & 7) << 5)
            }
            0x0008 => IIDR,
            0x000C => 0,
            0x6000..=0x7FFF => {
                let n = ((off - 0x6000) / 8) as usize;
                let v = if n >= 32 {
                    s.route.get(n - 32).copied().unwrap_or(0)
                } else {
                    0
                };
                if off % 8 == 4 {
                    v >> 32
                } else {
                    v
                }
            }
            0xFFE8 => PIDR2_GICV3,
            // SGIs and PPIs are the redistributors' (RAZ/WI here).
            _ => s.dist.read(off, size).unwrap_or(0),
        }
    }

    /// A write to the distributor; returns the interrupts it made
    /// deliverable.
    pub fn dist_write(&self, off: u64, size: u8, value: u64) -> Vec<Delivery> {
        let mut s = self.lock();
        match off {
            0x0000 => {
                // Only the group enables are writable; ARE and DS stay set.
                s.ctlr = CTLR_ARE | CTLR_DS | (value as u32 & 0b11);
            }
            0x6000..=0x7FFF => {
                let n = ((off - 0x6000) / 8) as usize;
                if n >= 32 {
                    if let Some(r) = s.route.get_mut(n - 32) {
                        *r = match (size, off % 8) {
                            (8, _) => value,
                            (_, 0) => (*r & !0xffff_ffff) | (value & 0xffff_ffff),
                            _ => (*r & 0xffff_ffff) | ((value & 0xffff_ffff) << 32),
                        };
                    }
                }
            }
            _ => {
                s.dist.write(off, size, value, 32);
            }
        }
        self.collect(&mut s)
    }

    /// Which vCPU's redistributor `off` (from the first one's base) is in,
    /// and the offset inside it.
    pub fn redist_of(&self, off: u64) -> Option<(usize, u64)> {
        let cpu = (off / REDIST_SIZE) as usize;
        (cpu < self.vcpus).then_some((cpu, off % REDIST_SIZE))
    }

    /// A read of vCPU `cpu`'s redistributor at offset `off` (RD_base at 0,
    /// SGI_base at 0x10000).
    pub fn redist_read(&self, cpu: usize, off: u64, size: u8) -> u64 {
        let s = self.lock();
        let Some(r) = s.redists.get(cpu) else {
            return 0;
        };
        match off {
            0x0000 => 0, // GICR_CTLR: no LPIs, RWP 0
            0x0004 => IIDR,
            0x0008 | 0x000C => {
                // Affinity 0.0.0.cpu, processor number, Last for the final one.
                let last = u64::from(cpu + 1 == self.vcpus) << 4;
                let v = ((cpu as u64) << 32) | ((cpu as u64) << 8) | last;
                if off == 0x000C {
                    v >> 32
                } else {
                    v
                }
            }
            0x0014 => u64::from(r.waker),
            0xFFE8 => PIDR2_GICV3,
            0x1_0000.. => r.bank.read(off - 0x1_0000, size).unwrap_or(0),
            _ => 0,
        }
    }

    /// A write to vCPU `cpu`'s redistributor.
    pub fn redist_write(&self, cpu: usize, off: u64, size: u8, value: u64) {
        let mut s = self.lock();
        let Some(r) = s.redists.get_mut(cpu) else {
            return;
        };
        match off {
            0x0014 => {
                // The children sleep exactly when the processor does.
                r.waker = if value as u32 & WAKER_PROCESSOR_SLEEP != 0 {
                    WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP
                } else {
                    0
                };
            }
            0x1_0000.. => {
                r.bank.write(off - 0x1_0000, size, value, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_gicv3_with_its_spis() {
        let g = Gic::new(2);
        assert_eq!(g.dist_read(0xFFE8, 4), 0x30);
        assert_eq!(g.dist_read(0x0004, 4) & 0x1f, 2);
        assert_eq!(g.redist_read(0, 0xFFE8, 4), 0x30);
        assert_eq!(
            g.dist_read(0, 4) as u32 & (CTLR_ARE | CTLR_DS),
            CTLR_ARE | CTLR_DS
        );
    }

    #[test]
    fn redistributor_typer_names_affinity_and_the_last_one() {
        let g = Gic::new(2);
        assert_eq!(g.redist_read(0, 8, 8), 0);
        assert_eq!(g.redist_read(1, 8, 8), (1 << 32) | (1 << 8) | (1 << 4));
        assert_eq!(g.redist_read(1, 0xC, 4), 1);
        assert_eq!(g.redist_of(0x2_0010), Some((1, 0x10)));
        assert_eq!(g.redist_of(0x4_0000), None);
    }

    #[test]
    fn waker_wakes_the_children_with_the_processor() {
        let g = Gic::new(1);
        assert_eq!(g.redist_read(0, 0x14, 4), 6);
        g.redist_write(0, 0x14, 4, 0);
        assert_eq!(g.redist_read(0, 0x14, 4), 0);
    }

    #[test]
    fn spi_waits_until_enabled_then_goes_to_its_route() {
        let g = Gic::new(2);
        // Raised while the distributor is off: kept pending.
        assert!(g.raise_spi(48).is_empty());
        assert_eq!(g.dist_read(0x200 + 4, 4) & (1 << 16), 1 << 16);
        g.dist_write(0x6000 + 8 * 48, 8, 1);
        assert!(g.dist_write(0, 4, 0b10).is_empty());
        // Enabling it delivers it to vCPU 1.
        assert_eq!(g.dist_write(0x100 + 4, 4, 1 << 16), vec![(1, 48)]);
        assert_eq!(g.dist_read(0x100 + 4, 4), 1 << 16);
        assert_eq!(g.raise_spi(48), vec![(1, 48)]);
        // Disabled: no delivery; "any" routing goes to vCPU 0.
        g.dist_write(0x180 + 4, 4, 1 << 16);
        assert!(g.raise_spi(48).is_empty());
        g.dist_write(0x6000 + 8 * 48, 4, 1 << 31);
        assert_eq!(g.dist_write(0x100 + 4, 4, 1 << 16), vec![(0, 48)]);
    }

    #[test]
    fn priorities_are_byte_accessible_and_sgis_ppis_belong_to_redistributors() {
        let g = Gic::new(1);
        g.dist_write(0x400 + 33, 1, 0xA0);
        assert_eq!(g.dist_read(0x400 + 32, 4), 0xA000);
        g.dist_write(0x100, 4, 0xffff_ffff);
        assert_eq!(g.dist_read(0x100, 4), 0);
        g.redist_write(0, 0x1_0100, 4, 1 << 27);
        assert_eq!(g.redist_read(0, 0x1_0100, 4), 1 << 27);
        g.redist_write(0, 0x1_0C04, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, 0x1_0C04, 4), 0xffff_ffff);
        g.redist_write(0, 0x1_0C00, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, 0x1_0C00, 4), 0);
    }
}
