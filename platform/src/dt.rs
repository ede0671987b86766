//! A small reader for flattened device trees (DTSpec v0.4, chapter 5), and
//! the one query the hypervisor needs from it: the `/memory` ranges.
//!
//! The blob comes from the boot loader and is not trusted to be well formed.
//! Every read is bounds-checked and every step of the structure walk moves
//! forward by at least one token, so any blob gives a result or an
//! [`FdtError`], never a panic or a hang. (A hand-written walker rather than
//! a crate so that this property is visible in one short file.)

use alloc::vec::Vec;

use crate::error::{FdtError, Origin, PlatformError};

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Size of the version 17 header.
const HEADER_SIZE: usize = 40;

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let word: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

/// A NUL-terminated string starting at `offset`, without its NUL.
fn c_str(bytes: &[u8], offset: usize) -> Option<&[u8]> {
    let rest = bytes.get(offset..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    rest.get(..len)
}

/// A validated device tree blob: header checked, blocks inside the blob.
pub(crate) struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Fdt<'a> {
    pub(crate) fn new(blob: &'a [u8]) -> Result<Self, FdtError> {
        let field = |i: usize| be32(blob, i * 4).ok_or(FdtError::Truncated);
        if blob.len() < HEADER_SIZE {
            return Err(FdtError::Truncated);
        }
        if field(0)? != FDT_MAGIC {
            return Err(FdtError::BadMagic);
        }
        let total = field(1)? as usize;
        let off_struct = field(2)? as usize;
        let off_strings = field(3)? as usize;
        let version = field(5)?;
        let last_comp = field(6)?;
        let size_strings = field(8)? as usize;
        let size_struct = field(9)? as usize;
        if version < 17 || last_comp > 17 {
            return Err(FdtError::UnsupportedVersion);
        }
        let blob = blob.get(..total).ok_or(FdtError::Truncated)?;
        if total < HEADER_SIZE || !off_struct.is_multiple_of(4) {
            return Err(FdtError::BadLayout);
        }
        let block = |off: usize, size: usize| {
            off.checked_add(size)
                .and_then(|end| blob.get(off..end))
                .ok_or(FdtError::BadLayout)
        };
        Ok(Self {
            structs: block(off_struct, size_struct)?,
            strings: block(off_strings, size_strings)?,
        })
    }

    /// Walk the structure block token by token.
    pub(crate) fn walk(&self) -> Walker<'a> {
        Walker {
            structs: self.structs,
            strings: self.strings,
            pos: 0,
            depth: 0,
            root_seen: false,
            done: false,
        }
    }
}

/// One token of the structure block (NOPs are skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// A node begins; its name with the unit address, without NUL.
    BeginNode(&'a [u8]),
    /// The innermost open node ends.
    EndNode,
    /// A property of the innermost open node.
    Prop { name: &'a [u8], value: &'a [u8] },
}

pub(crate) struct Walker<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    pos: usize,
    /// Number of open nodes.
    depth: usize,
    root_seen: bool,
    done: bool,
}

impl<'a> Walker<'a> {
    /// Nodes open around the next token (1 inside the root).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Byte offset in `blob` (the blob this walker reads) of the next token.
    pub(crate) fn offset_in(&self, blob: &[u8]) -> usize {
        (self.structs.as_ptr() as usize - blob.as_ptr() as usize) + self.pos
    }

    /// The next token, `None` after FDT_END.
    pub(crate) fn next_token(&mut self) -> Result<Option<Token<'a>>, FdtError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let at = self.pos;
            let bad = FdtError::BadStructure { offset: at };
            let token = be32(self.structs, at).ok_or(bad)?;
            let body = at + 4;
            match token {
                FDT_NOP => self.pos = body,
                FDT_BEGIN_NODE => {
                    if self.depth == 0 && self.root_seen {
                        return Err(bad);
                    }
                    let name =
                        c_str(self.structs, body).ok_or(FdtError::BadString { offset: at })?;
                    self.pos = align4(body + name.len() + 1).ok_or(bad)?;
                    self.depth += 1;
                    self.root_seen = true;
                    return Ok(Some(Token::BeginNode(name)));
                }
                FDT_END_NODE => {
                    self.depth = self.depth.checked_sub(1).ok_or(bad)?;
                    self.pos = body;
                    return Ok(Some(Token::EndNode));
                }
                FDT_PROP => {
                    if self.depth == 0 {
                        return Err(bad);
                    }
                    let len = be32(self.structs, body).ok_or(bad)? as usize;
                    let name_off = be32(self.structs, body + 4).ok_or(bad)? as usize;
                    let start = body + 8;
                    let end = start.checked_add(len).ok_or(bad)?;
                    let value = self.structs.get(start..end).ok_or(bad)?;
                    let name =
                        c_str(self.strings, name_off).ok_or(FdtError::BadString { offset: at })?;
                    self.pos = align4(end).ok_or(bad)?;
                    return Ok(Some(Token::Prop { name, value }));
                }
                FDT_END => {
                    if self.depth != 0 || !self.root_seen {
                        return Err(bad);
                    }
                    self.done = true;
                    return Ok(None);
                }
                _ => return Err(bad),
            }
        }
    }
}

/// A property value that is one string, compared without its NUL.
fn string_is(value: &[u8], expected: &[u8]) -> bool {
    value.strip_suffix(&[0]).unwrap_or(value) == expected
}

pub(crate) fn cells(value: &[u8]) -> Result<usize, PlatformError> {
    match value {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        _ => Err(PlatformError::BadCells),
    }
}

/// A big-endian number of `n` 32-bit cells (n is 1 or 2).
pub(crate) fn read_cells(bytes: &[u8], n: usize) -> u64 {
    bytes
        .chunks_exact(4)
        .take(n)
        .fold(0, |acc, c| (acc << 32) | u64::from(be32(c, 0).unwrap_or(0)))
}

/// One `(address, size)` entry of a `reg` value with `address_cells` and
/// `size_cells` cells (1 or 2 each); `entry` is exactly that long.
pub(crate) fn reg_entry(entry: &[u8], address_cells: usize, size_cells: usize) -> (u64, u64) {
    let (addr, size) = entry.split_at(address_cells * 4);
    (
        read_cells(addr, address_cells),
        read_cells(size, size_cells),
    )
}

/// The (base, size) byte ranges of every available `/memory` node: children
/// of the root whose `device_type` is "memory" and whose `status`, if any,
/// is "okay" or "ok"; every pair of their `reg`, decoded with the root's
/// `#address-cells` and `#size-cells`. Empty ranges are dropped.
pub(crate) fn memory_ranges(blob: &[u8]) -> Result<Vec<(u64, u64)>, PlatformError> {
    let RegSlots {
        slots,
        address_cells,
        size_cells,
    } = memory_reg_slots(blob)?;
    let regs = slots
        .iter()
        .map(|&(offset, len)| blob.get(offset..offset + len));
    let pair = (address_cells + size_cells) * 4;
    let mut ranges = Vec::new();
    for reg in regs {
        let reg = reg.ok_or(PlatformError::BadMemoryReg)?;
        if reg.is_empty() || !reg.len().is_multiple_of(pair) {
            return Err(PlatformError::BadMemoryReg);
        }
        for entry in reg.chunks_exact(pair) {
            let (base, size) = reg_entry(entry, address_cells, size_cells);
            if size == 0 {
                continue;
            }
            if base.checked_add(size).is_none() {
                return Err(PlatformError::OutsidePaSpace {
                    at: Origin::Memory { base },
                });
            }
            ranges.push((base, size));
        }
    }
    if ranges.is_empty() {
        return Err(PlatformError::NoMemoryNode);
    }
    Ok(ranges)
}

/// Where the `reg` values of the available `/memory` nodes lie in the blob.
struct RegSlots {
    /// (byte offset, length) of each `reg` value.
    slots: Vec<(usize, usize)>,
    address_cells: usize,
    size_cells: usize,
}

/// Locations of the `reg` values of every available `/memory` node, and the
/// root's cell sizes: what [`patch_host_memory`] rewrites.
fn memory_reg_slots(blob: &[u8]) -> Result<RegSlots, PlatformError> {
    let fdt = Fdt::new(blob)?;
    let mut walk = fdt.walk();
    let (mut address_cells, mut size_cells) = (2, 1);
    let mut slots = Vec::new();
    let (mut is_memory, mut available, mut reg) = (false, true, None);
    loop {
        let depth = walk.depth();
        let Some(token) = walk.next_token()? else {
            break;
        };
        match token {
            Token::Prop { name, value } if depth == 1 => match name {
                b"#address-cells" => address_cells = cells(value)?,
                b"#size-cells" => size_cells = cells(value)?,
                _ => {}
            },
            Token::Prop { name, value } if depth == 2 => match name {
                b"device_type" => is_memory = string_is(value, b"memory"),
                b"status" => available = string_is(value, b"okay") || string_is(value, b"ok"),
                b"reg" => {
                    // `value` is a sub-slice of `blob`: its offset is exact.
                    let offset = value.as_ptr() as usize - blob.as_ptr() as usize;
                    reg = Some((offset, value.len()));
                }
                _ => {}
            },
            Token::BeginNode(_) if depth == 1 => {
                (is_memory, available, reg) = (false, true, None);
            }
            Token::EndNode if depth == 2 && is_memory && available => {
                slots.push(reg.ok_or(PlatformError::BadMemoryReg)?);
            }
            _ => {}
        }
    }
    if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
        return Err(PlatformError::BadCells);
    }
    Ok(RegSlots {
        slots,
        address_cells,
        size_cells,
    })
}

/// Rewrite the `/memory` nodes of `blob` in place so that they offer exactly
/// `ranges` (base, size in bytes): the host's RAM once the hypervisor's own
/// memory and COHERENT memory are taken out. Entries are written into the
/// existing `reg` slots in order; slots left over get size 0, which operating
/// systems ignore. Fails (leaving the blob unchanged) when the tree has fewer
/// slots than ranges or a range does not fit the cell sizes.
pub fn patch_host_memory(blob: &mut [u8], ranges: &[(u64, u64)]) -> Result<(), PlatformError> {
    let RegSlots {
        slots,
        address_cells: ac,
        size_cells: sc,
    } = memory_reg_slots(blob)?;
    let pair = (ac + sc) * 4;
    let capacity: usize = slots.iter().map(|&(_, len)| len / pair).sum();
    let fits = |v: u64, n: usize| n == 2 || v >> 32 == 0;
    if ranges.len() > capacity || ranges.iter().any(|&(b, s)| !fits(b, ac) || !fits(s, sc)) {
        return Err(PlatformError::BadMemoryReg);
    }
    let mut next = ranges.iter();
    for (offset, len) in slots {
        for k in 0..len / pair {
            let at = offset + k * pair;
            let (base, size) = next.next().copied().unwrap_or((0, 0));
            let mut write = |pos: usize, v: u64, n: usize| {
                for c in 0..n {
                    let word = (v >> (32 * (n - 1 - c))) as u32;
                    if let Some(dst) = blob.get_mut(pos + 4 * c..pos + 4 * c + 4) {
                        dst.copy_from_slice(&word.to_be_bytes());
                    }
                }
            };
            write(at, base, ac);
            write(at + ac * 4, size, sc);
        }
    }
    Ok(())
}

#[cfg(test)]
mod patch_tests {
    use super::*;

    #[test]
    fn host_memory_is_rewritten_in_place() {
        let mut blob = crate::qemu_virt_fdt(0x4000_0000, 0x4000_0000);
        let before = blob.len();
        patch_host_memory(&mut blob, &[(0x4400_0000, 0x3800_0000)]).unwrap();
        assert_eq!(blob.len(), before);
        assert_eq!(memory_ranges(&blob).unwrap(), [(0x4400_0000, 0x3800_0000)]);
        // More ranges than slots: refused, blob unchanged.
        let copy = blob.clone();
        assert!(
            patch_host_memory(&mut blob, &[(0x4400_0000, 0x1000), (0x5000_0000, 0x1000)]).is_err()
        );
        assert_eq!(blob, copy);
        // A garbage blob is an error, not a panic.
        let mut junk = alloc::vec![0u8; 64];
        assert!(patch_host_memory(&mut junk, &[]).is_err());
    }
}

/// The MPIDR affinity (`reg`) of every CPU node under `/cpus`, in tree order.
pub fn cpu_mpidrs(blob: &[u8]) -> Result<Vec<u64>, PlatformError> {
    let fdt = Fdt::new(blob)?;
    let mut walk = fdt.walk();
    let mut in_cpus = false;
    let mut address_cells = 1;
    let (mut is_cpu, mut reg) = (false, None);
    let mut out = Vec::new();
    loop {
        let depth = walk.depth();
        let Some(token) = walk.next_token()? else {
            break;
        };
        match token {
            Token::BeginNode(name) if depth == 1 => in_cpus = name == b"cpus",
            Token::EndNode if depth == 2 => in_cpus = false,
            Token::Prop { name, value } if depth == 2 && in_cpus && name == b"#address-cells" => {
                address_cells = cells(value)?;
            }
            Token::BeginNode(_) if depth == 2 && in_cpus => (is_cpu, reg) = (false, None),
            Token::Prop { name, value } if depth == 3 && in_cpus => match name {
                b"device_type" => is_cpu = string_is(value, b"cpu"),
                b"reg" => reg = Some(value),
                _ => {}
            },
            Token::EndNode if depth == 3 && in_cpus && is_cpu => {
                let r = reg.ok_or(PlatformError::BadCells)?;
                if !(1..=2).contains(&address_cells) || r.len() < address_cells * 4 {
                    return Err(PlatformError::BadCells);
                }
                out.push(read_cells(r, address_cells));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What the hypervisor needs of the interrupt controller and the timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicFacts {
    /// The GICv3 distributor: (base, size) in bytes.
    pub gicd: (u64, u64),
    /// The first redistributor region: (base, size) in bytes.
    pub gicr: (u64, u64),
    /// The virtual CPU interface's maintenance interrupt (a PPI's INTID),
    /// when the GIC node gives one.
    pub maintenance: Option<u32>,
    /// The timer PPIs' INTIDs: secure physical, non-secure physical,
    /// virtual, hypervisor physical.
    pub timers: [u32; 4],
}

/// A string-list property contains `want`.
pub(crate) fn list_has(value: &[u8], want: &[u8]) -> bool {
    value.split(|&b| b == 0).any(|s| s == want)
}

/// The INTIDs of PPI specifiers (three cells: type 1, number, flags) in an
/// `interrupts` value; `None` if any specifier is not a PPI.
fn ppis(value: &[u8]) -> Option<Vec<u32>> {
    if value.is_empty() || !value.len().is_multiple_of(12) {
        return None;
    }
    value
        .chunks_exact(12)
        .map(|c| {
            let (kind, n) = (be32(c, 0)?, be32(c, 4)?);
            (kind == 1 && n < 16).then_some(16 + n)
        })
        .collect()
}

/// The GICv3 and timer facts: the first `arm,gic-v3` and `arm,armv8-timer`
/// nodes under the root, their `reg` decoded with the root's cells and their
/// `interrupts` with three cells each (as the GICv3 binding says).
pub fn gic_facts(blob: &[u8]) -> Result<GicFacts, PlatformError> {
    let fdt = Fdt::new(blob)?;
    let mut walk = fdt.walk();
    let (mut address_cells, mut size_cells) = (2, 1);
    let (mut compatible, mut reg, mut irqs): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut gic, mut timers) = (None, None);
    loop {
        let depth = walk.depth();
        let Some(token) = walk.next_token()? else {
            break;
        };
        match token {
            Token::Prop { name, value } if depth == 1 => match name {
                b"#address-cells" => address_cells = cells(value)?,
                b"#size-cells" => size_cells = cells(value)?,
                _ => {}
            },
            Token::BeginNode(_) if depth == 1 => (compatible, reg, irqs) = (&[], &[], &[]),
            Token::Prop { name, value } if depth == 2 => match name {
                b"compatible" => compatible = value,
                b"reg" => reg = value,
                b"interrupts" => irqs = value,
                _ => {}
            },
            Token::EndNode if depth == 2 => {
                if gic.is_none() && list_has(compatible, b"arm,gic-v3") {
                    if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
                        return Err(PlatformError::BadCells);
                    }
                    let pair = (address_cells + size_cells) * 4;
                    if reg.len() < 2 * pair {
                        return Err(PlatformError::NoGic);
                    }
                    let at = |i: usize| {
                        reg_entry(&reg[i * pair..(i + 1) * pair], address_cells, size_cells)
                    };
                    let maintenance = ppis(irqs).and_then(|v| v.first().copied());
                    gic = Some((at(0), at(1), maintenance));
                } else if timers.is_none() && list_has(compatible, b"arm,armv8-timer") {
                    let v = ppis(irqs).ok_or(PlatformError::NoGic)?;
                    let t: [u32; 4] = v
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(PlatformError::NoGic)?;
                    timers = Some(t);
                }
            }
            _ => {}
        }
    }
    match (gic, timers) {
        (Some((gicd, gicr, maintenance)), Some(timers)) => Ok(GicFacts {
            gicd,
            gicr,
            maintenance,
            timers,
        }),
        _ => Err(PlatformError::NoGic),
    }
}

#[cfg(test)]
mod gic_tests {
    use crate::qemu_virt;

    #[test]
    fn gic_and_timer_of_the_qemu_board() {
        let blob = crate::qemu_virt_fdt(0x4000_0000, 0x4000_0000);
        let g = super::gic_facts(&blob).unwrap();
        assert_eq!(g.gicd, (qemu_virt::GICD_BASE, qemu_virt::GICD_SIZE));
        assert_eq!(g.gicr, (qemu_virt::GICR_BASE, qemu_virt::GICR_SIZE));
        assert_eq!(g.maintenance, Some(25));
        assert_eq!(g.timers, [29, 30, 27, 26]);
        assert!(super::gic_facts(&[0u8; 16]).is_err());
    }

    #[test]
    fn ppi_specifiers() {
        let spec = |k: u32, n: u32| [k.to_be_bytes(), n.to_be_bytes(), 4u32.to_be_bytes()].concat();
        assert_eq!(super::ppis(&spec(1, 11)), Some(alloc::vec![27]));
        assert_eq!(super::ppis(&spec(0, 11)), None, "an SPI");
        assert_eq!(super::ppis(&spec(1, 16)), None, "not a PPI number");
        assert_eq!(super::ppis(&spec(1, 11)[..8]), None);
        assert_eq!(super::ppis(&[]), None);
    }
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn cpus_of_the_qemu_board() {
        let blob = crate::qemu_virt_fdt(0x4000_0000, 0x4000_0000);
        assert_eq!(super::cpu_mpidrs(&blob).unwrap(), [0, 1]);
        assert!(super::cpu_mpidrs(&[0u8; 16]).is_err());
    }
}
