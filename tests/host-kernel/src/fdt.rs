//! The device-tree facts the test host needs, read in one pass over the
//! flattened blob (DTSpec v0.4, chapter 5) without the heap, so it can run
//! before the MMU is on: the `/memory` ranges, the memory reservation block,
//! the initrd (`/chosen/linux,initrd-start` and `-end`), the PSCI conduit
//! (`/psci` `method`), the PL011's address and the CPUs' MPIDRs (the `reg`
//! of each `/cpus` child with `device_type = "cpu"`).
//!
//! Every read is bounds-checked; a malformed blob gives a [`DtError`].

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Size of the version 17 header.
pub const HEADER_SIZE: usize = 40;
/// Largest blob accepted.
pub const MAX_SIZE: usize = 2 << 20;
/// Most `/memory` (or reserved) ranges kept.
pub const MAX_RANGES: usize = 8;
/// Most CPUs kept (further ones are ignored).
pub const MAX_CPUS: usize = 8;

/// Why the blob could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtError {
    /// No device tree magic at the address.
    BadMagic,
    /// The header's size is out of range, or a block leaves the blob.
    BadLayout,
    /// The structure block is malformed at this offset.
    BadStructure(usize),
    /// More than [`MAX_RANGES`] memory or reserved ranges.
    TooManyRanges,
}

/// Up to [`MAX_RANGES`] `(base, size)` byte ranges.
#[derive(Clone, Copy, Debug)]
pub struct Ranges {
    items: [(u64, u64); MAX_RANGES],
    len: usize,
}

impl Ranges {
    const EMPTY: Ranges = Ranges {
        items: [(0, 0); MAX_RANGES],
        len: 0,
    };

    fn push(&mut self, base: u64, size: u64) -> Result<(), DtError> {
        let slot = self.items.get_mut(self.len).ok_or(DtError::TooManyRanges)?;
        *slot = (base, size);
        self.len += 1;
        Ok(())
    }

    /// The ranges, `(base, size)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + Clone + '_ {
        self.items.iter().take(self.len).copied()
    }
}

/// Up to [`MAX_CPUS`] MPIDRs, in device-tree order.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    mpidrs: [u64; MAX_CPUS],
    len: usize,
}

impl Cpus {
    const EMPTY: Cpus = Cpus {
        mpidrs: [0; MAX_CPUS],
        len: 0,
    };

    /// The `i`th CPU's MPIDR (its `reg`), device-tree order.
    pub fn get(&self, i: usize) -> Option<u64> {
        self.mpidrs.get(..self.len)?.get(i).copied()
    }

    /// How many CPUs the device tree lists (at most [`MAX_CPUS`]).
    pub fn len(&self) -> usize {
        self.len
    }
}

/// What the test host learns from the device tree.
#[derive(Clone, Copy, Debug)]
pub struct DtFacts {
    /// The blob's size (header `totalsize`).
    pub size: usize,
    /// RAM: the `reg` ranges of the root's `device_type = "memory"` nodes.
    pub memory: Ranges,
    /// The memory reservation block's ranges.
    pub reserved: Ranges,
    /// The initrd, `[start, end)`, when `/chosen` names one.
    pub initrd: Option<(u64, u64)>,
    /// Whether `/psci` says `method = "hvc"` (else SMC).
    pub psci_hvc: bool,
    /// Base of the first `arm,pl011` node's registers.
    pub uart: Option<u64>,
    /// The CPUs of `/cpus`.
    pub cpus: Cpus,
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn be64(bytes: &[u8], at: usize) -> Option<u64> {
    let word: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(word))
}

/// The blob's size from the first 8 bytes of its header.
pub fn total_size(header: [u8; 8]) -> Result<usize, DtError> {
    if be32(&header, 0) != Some(FDT_MAGIC) {
        return Err(DtError::BadMagic);
    }
    let size = be32(&header, 4).ok_or(DtError::BadLayout)? as usize;
    if !(HEADER_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DtError::BadLayout);
    }
    Ok(size)
}

/// A NUL-terminated string at `at`, without its NUL.
fn c_str(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = bytes.get(at..)?;
    rest.get(..rest.iter().position(|&b| b == 0)?)
}

/// A `#address-cells` / `#size-cells` sized number (1 or 2 cells).
fn cells(bytes: &[u8], at: usize, n: u32) -> Option<u64> {
    match n {
        1 => be32(bytes, at).map(u64::from),
        2 => be64(bytes, at),
        _ => None,
    }
}

/// A `linux,initrd-*` value: 32 or 64 bits.
fn address_value(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => be32(value, 0).map(u64::from),
        8 => be64(value, 0),
        _ => None,
    }
}

/// Whether a string-list property contains `s`.
fn has_string(list: &[u8], s: &[u8]) -> bool {
    list.split(|&b| b == 0).any(|item| item == s)
}

/// What the walk keeps of one child of the root.
#[derive(Default)]
struct Node<'a> {
    name: &'a [u8],
    device_type: &'a [u8],
    status: Option<&'a [u8]>,
    reg: &'a [u8],
    compatible: &'a [u8],
    method: &'a [u8],
    initrd_start: Option<u64>,
    initrd_end: Option<u64>,
}

impl Node<'_> {
    fn base_name(&self) -> &[u8] {
        self.name.split(|&b| b == b'@').next().unwrap_or_default()
    }
}

/// Read the facts from a whole blob.
pub fn read(blob: &[u8]) -> Result<DtFacts, DtError> {
    let header: [u8; 8] = blob
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .ok_or(DtError::BadLayout)?;
    let size = total_size(header)?;
    let blob = blob.get(..size).ok_or(DtError::BadLayout)?;
    let field = |i: usize| {
        be32(blob, i * 4)
            .map(|v| v as usize)
            .ok_or(DtError::BadLayout)
    };
    let (off_struct, off_strings, off_rsvmap) = (field(2)?, field(3)?, field(4)?);
    let (size_strings, size_struct) = (field(8)?, field(9)?);
    let block = |off: usize, len: usize| {
        off.checked_add(len)
            .and_then(|end| blob.get(off..end))
            .ok_or(DtError::BadLayout)
    };
    let structs = block(off_struct, size_struct)?;
    let strings = block(off_strings, size_strings)?;

    let mut facts = DtFacts {
        size,
        memory: Ranges::EMPTY,
        reserved: Ranges::EMPTY,
        initrd: None,
        psci_hvc: false,
        uart: None,
        cpus: Cpus::EMPTY,
    };

    // The memory reservation block: (address, size) pairs up to (0, 0).
    let mut at = off_rsvmap;
    loop {
        let (Some(base), Some(len)) = (be64(blob, at), be64(blob, at + 8)) else {
            return Err(DtError::BadLayout);
        };
        if base == 0 && len == 0 {
            break;
        }
        facts.reserved.push(base, len)?;
        at += 16;
    }

    let (mut address_cells, mut size_cells) = (2u32, 1u32);
    let mut depth = 0usize;
    let mut node = Node::default();
    // Inside /cpus: its #address-cells, and the current child's
    // device_type and reg.
    let mut in_cpus = false;
    let mut cpu_cells = 1u32;
    let (mut cpu_type, mut cpu_reg): (&[u8], &[u8]) = (&[], &[]);
    let mut pos = 0usize;
    loop {
        let bad = DtError::BadStructure(pos);
        let token = be32(structs, pos).ok_or(bad)?;
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name = c_str(structs, pos).ok_or(bad)?;
                pos = (pos + name.len() + 1 + 3) & !3;
                depth += 1;
                if depth == 2 {
                    node = Node {
                        name,
                        ..Node::default()
                    };
                    in_cpus = name == b"cpus";
                }
                if depth == 3 {
                    (cpu_type, cpu_reg) = (&[], &[]);
                }
            }
            FDT_END_NODE => {
                if depth == 2 {
                    finish_node(&node, address_cells, size_cells, &mut facts)?;
                    in_cpus = false;
                }
                if depth == 3 && in_cpus && cpu_type == b"cpu\0" {
                    if let Some(mpidr) = cells(cpu_reg, 0, cpu_cells) {
                        if let Some(slot) = facts.cpus.mpidrs.get_mut(facts.cpus.len) {
                            *slot = mpidr;
                            facts.cpus.len += 1;
                        }
                    }
                }
                depth = depth.checked_sub(1).ok_or(bad)?;
            }
            FDT_PROP => {
                let len = be32(structs, pos).ok_or(bad)? as usize;
                let name_off = be32(structs, pos + 4).ok_or(bad)? as usize;
                let value = structs.get(pos + 8..pos + 8 + len).ok_or(bad)?;
                pos = (pos + 8 + len + 3) & !3;
                let name = c_str(strings, name_off).ok_or(bad)?;
                match (depth, name) {
                    (1, b"#address-cells") => address_cells = be32(value, 0).ok_or(bad)?,
                    (1, b"#size-cells") => size_cells = be32(value, 0).ok_or(bad)?,
                    (2, b"device_type") => node.device_type = value,
                    (2, b"status") => node.status = Some(value),
                    (2, b"reg") => node.reg = value,
                    (2, b"compatible") => node.compatible = value,
                    (2, b"method") => node.method = value,
                    (2, b"linux,initrd-start") => node.initrd_start = address_value(value),
                    (2, b"linux,initrd-end") => node.initrd_end = address_value(value),
                    (2, b"#address-cells") if in_cpus => {
                        cpu_cells = be32(value, 0).ok_or(bad)?;
                    }
                    (3, b"device_type") if in_cpus => cpu_type = value,
                    (3, b"reg") if in_cpus => cpu_reg = value,
                    _ => {}
                }
            }
            FDT_NOP => {}
            FDT_END => return Ok(facts),
            _ => return Err(bad),
        }
    }
}

fn finish_node(
    node: &Node,
    address_cells: u32,
    size_cells: u32,
    facts: &mut DtFacts,
) -> Result<(), DtError> {
    let okay = node.status.is_none_or(|s| s == b"okay\0" || s == b"ok\0");
    if node.device_type == b"memory\0" && okay {
        let entry = (address_cells + size_cells) as usize * 4;
        if entry == 0 {
            return Ok(());
        }
        for at in (0..node.reg.len() / entry).map(|i| i * entry) {
            let base = cells(node.reg, at, address_cells);
            let size = cells(node.reg, at + address_cells as usize * 4, size_cells);
            if let (Some(base), Some(size)) = (base, size) {
                if size > 0 {
                    facts.memory.push(base, size)?;
                }
            }
        }
    }
    match node.base_name() {
        b"chosen" => {
            if let (Some(start), Some(end)) = (node.initrd_start, node.initrd_end) {
                if end > start {
                    facts.initrd = Some((start, end));
                }
            }
        }
        b"psci" => facts.psci_hvc = node.method == b"hvc\0",
        _ => {}
    }
    if facts.uart.is_none() && okay && has_string(node.compatible, b"arm,pl011") {
        facts.uart = cells(node.reg, 0, address_cells);
    }
    Ok(())
}
