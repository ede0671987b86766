//! The bus masters of the device tree (RULES.md S1): where the SMMUv3 is
//! and how many PCIe buses it serves, and the rewrite that takes withheld
//! devices out of the host's tree.

use alloc::vec::Vec;

use crate::dt::{cells, list_has, read_cells, reg_entry, Fdt, Token};
use crate::error::PlatformError;

const FDT_NOP: [u8; 4] = 4u32.to_be_bytes();

/// Where the SMMUv3 is, and which StreamIDs it can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuFacts {
    /// Register window: (base, size) in bytes.
    pub regs: (u64, u64),
    /// PCIe buses behind it (the host bridge's `bus-range`, 1..=256):
    /// StreamIDs are requester IDs, bus << 8 | devfn.
    pub buses: u32,
}

/// The first `arm,smmu-v3` node under the root, with the `bus-range` of the
/// first `pci-host-ecam-generic` node (256 buses without one). `None` when
/// the board has no SMMUv3.
pub fn smmu_facts(blob: &[u8]) -> Result<Option<SmmuFacts>, PlatformError> {
    let fdt = Fdt::new(blob)?;
    let mut walk = fdt.walk();
    let (mut address_cells, mut size_cells) = (2, 1);
    let (mut compatible, mut reg, mut bus_range): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut smmu, mut buses) = (None, None);
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
            Token::BeginNode(_) if depth == 1 => (compatible, reg, bus_range) = (&[], &[], &[]),
            Token::Prop { name, value } if depth == 2 => match name {
                b"compatible" => compatible = value,
                b"reg" => reg = value,
                b"bus-range" => bus_range = value,
                _ => {}
            },
            Token::EndNode if depth == 2 => {
                if smmu.is_none() && list_has(compatible, b"arm,smmu-v3") {
                    if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
                        return Err(PlatformError::BadCells);
                    }
                    let pair = (address_cells + size_cells) * 4;
                    let entry = reg.get(..pair).ok_or(PlatformError::BadCells)?;
                    smmu = Some(reg_entry(entry, address_cells, size_cells));
                } else if buses.is_none() && list_has(compatible, b"pci-host-ecam-generic") {
                    buses = Some(match bus_range.len() {
                        8 => {
                            let (lo, hi) =
                                (read_cells(bus_range, 1), read_cells(&bus_range[4..], 1));
                            (hi.min(255) + 1).saturating_sub(lo.min(255)).max(1) as u32
                        }
                        _ => 256,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(smmu.map(|regs| SmmuFacts {
        regs,
        buses: buses.unwrap_or(256),
    }))
}

/// The unit address of a node name `name@hex`, if it has one.
fn unit_address(name: &[u8]) -> Option<u64> {
    let at = name.iter().position(|&b| b == b'@')?;
    let hex = name.get(at + 1..)?;
    let hex = hex.split(|&b| b == b',').next()?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    hex.iter().try_fold(0u64, |acc, &b| {
        Some(acc << 4 | u64::from((b as char).to_digit(16)?))
    })
}

/// Properties that point at another device by phandle: (name, entry size
/// in cells, cell of the phandle in each entry).
const PHANDLE_PROPS: [(&[u8], usize, usize); 4] = [
    (b"iommu-map", 4, 1),
    (b"msi-map", 4, 1),
    (b"msi-parent", 1, 0),
    (b"iommus", 2, 0),
];

/// Take the withheld devices out of the host's tree, in place: every node
/// (at any depth below the root) whose unit address lies in one of
/// `withheld` (base, size in bytes) becomes NOPs, with its children, and so
/// does every `iommu-map`, `msi-map`, `msi-parent` or `iommus` property that
/// names one of those nodes' phandles. The blob keeps its size and stays
/// valid (DTSpec 5.4.1: NOP tokens are ignored). QEMU's `virt` names its
/// devices by their physical base, and its interrupt controller's children
/// (the ITS) live in the same address space. Returns the number of nodes
/// removed.
pub fn withhold_nodes(blob: &mut [u8], withheld: &[(u64, u64)]) -> Result<usize, PlatformError> {
    let inside = |a: u64| withheld.iter().any(|&(b, s)| a >= b && a - b < s);
    // Pass 1: the nodes and their phandles.
    let mut nodes: Vec<(usize, usize)> = Vec::new();
    let mut phandles: Vec<u32> = Vec::new();
    {
        let fdt = Fdt::new(blob)?;
        let mut walk = fdt.walk();
        // (start offset, depth) of the node being removed.
        let mut open: Option<(usize, usize)> = None;
        loop {
            let depth = walk.depth();
            let at = walk.offset_in(blob);
            let Some(token) = walk.next_token()? else {
                break;
            };
            match token {
                Token::BeginNode(name)
                    if open.is_none() && depth >= 1 && unit_address(name).is_some_and(inside) =>
                {
                    open = Some((at, depth));
                }
                Token::Prop { name, value }
                    if open.is_some_and(|(_, d)| d + 1 == depth)
                        && name == b"phandle"
                        && value.len() == 4 =>
                {
                    phandles.push(read_cells(value, 1) as u32);
                }
                Token::EndNode => {
                    if let Some((start, d)) = open {
                        if depth == d + 1 {
                            nodes.push((start, walk.offset_in(blob)));
                            open = None;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Pass 2: properties elsewhere that point at them.
    let mut props: Vec<(usize, usize)> = Vec::new();
    {
        let fdt = Fdt::new(blob)?;
        let mut walk = fdt.walk();
        loop {
            let at = walk.offset_in(blob);
            let Some(token) = walk.next_token()? else {
                break;
            };
            if let Token::Prop { name, value } = token {
                let refers = PHANDLE_PROPS.iter().any(|&(n, entry, cell)| {
                    n == name
                        && value
                            .chunks(entry * 4)
                            .filter_map(|e| e.get(cell * 4..cell * 4 + 4))
                            .any(|c| phandles.contains(&(read_cells(c, 1) as u32)))
                });
                let inside_removed = nodes.iter().any(|&(s, e)| at >= s && at < e);
                if refers && !inside_removed {
                    props.push((at, walk.offset_in(blob)));
                }
            }
        }
    }
    for &(start, end) in nodes.iter().chain(&props) {
        for word in blob
            .get_mut(start..end)
            .into_iter()
            .flat_map(|r| r.chunks_exact_mut(4))
        {
            word.copy_from_slice(&FDT_NOP);
        }
    }
    Ok(nodes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree shaped like QEMU's virt with an SMMU: an ITS under the GIC,
    /// fw-cfg, the SMMU and a PCIe host that points at both.
    fn tree() -> Vec<u8> {
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000])
            .unwrap();
        w.end_node(mem).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        w.property_null("ranges").unwrap();
        let its = w.begin_node("its@8080000").unwrap();
        w.property_string("compatible", "arm,gic-v3-its").unwrap();
        w.property_array_u64("reg", &[0x808_0000, 0x2_0000])
            .unwrap();
        w.property_u32("phandle", 0x8004).unwrap();
        w.end_node(its).unwrap();
        w.end_node(gic).unwrap();
        let fw = w.begin_node("fw-cfg@9020000").unwrap();
        w.property_array_u64("reg", &[0x902_0000, 0x18]).unwrap();
        w.end_node(fw).unwrap();
        let smmu = w.begin_node("smmuv3@9050000").unwrap();
        w.property_string("compatible", "arm,smmu-v3").unwrap();
        w.property_array_u64("reg", &[0x905_0000, 0x2_0000])
            .unwrap();
        w.property_u32("phandle", 0x8005).unwrap();
        w.end_node(smmu).unwrap();
        let pcie = w.begin_node("pcie@10000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic")
            .unwrap();
        w.property_array_u32("bus-range", &[0, 0xff]).unwrap();
        w.property_array_u32("msi-map", &[0, 0x8004, 0, 0x10000])
            .unwrap();
        w.property_array_u32("iommu-map", &[0, 0x8005, 0, 0x10000])
            .unwrap();
        w.property_u32("linux,pci-domain", 0).unwrap();
        w.end_node(pcie).unwrap();
        let uart = w.begin_node("pl011@9000000").unwrap();
        w.property_array_u64("reg", &[0x900_0000, 0x1000]).unwrap();
        w.end_node(uart).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    fn names(blob: &[u8]) -> Vec<Vec<u8>> {
        let fdt = Fdt::new(blob).unwrap();
        let mut walk = fdt.walk();
        let mut out = Vec::new();
        while let Some(t) = walk.next_token().unwrap() {
            match t {
                Token::BeginNode(n) => out.push(n.to_vec()),
                Token::Prop { name, .. } => out.push(name.to_vec()),
                Token::EndNode => {}
            }
        }
        out
    }

    #[test]
    fn smmu_and_buses() {
        let f = smmu_facts(&tree()).unwrap().unwrap();
        assert_eq!(f.regs, (0x905_0000, 0x2_0000));
        assert_eq!(f.buses, 256);
        let plain = crate::qemu_virt_fdt(0x4000_0000, 0x4000_0000);
        assert_eq!(smmu_facts(&plain).unwrap(), None);
        assert!(smmu_facts(&[0u8; 8]).is_err());
    }

    #[test]
    fn withheld_nodes_and_references_go() {
        let mut blob = tree();
        let len = blob.len();
        let n = withhold_nodes(
            &mut blob,
            &[
                (0x808_0000, 0x2_0000),
                (0x902_0000, 0x1000),
                (0x905_0000, 0x2_0000),
            ],
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(blob.len(), len);
        let left = names(&blob);
        for gone in [
            &b"its@8080000"[..],
            b"fw-cfg@9020000",
            b"smmuv3@9050000",
            b"msi-map",
            b"iommu-map",
        ] {
            assert!(!left.iter().any(|n| n == gone), "{gone:?} left");
        }
        for kept in [
            &b"intc@8000000"[..],
            b"pcie@10000000",
            b"pl011@9000000",
            b"linux,pci-domain",
            b"bus-range",
        ] {
            assert!(left.iter().any(|n| n == kept), "{kept:?} removed");
        }
        // The rewritten tree still parses for everything else.
        assert_eq!(
            crate::dt::memory_ranges(&blob).unwrap(),
            [(0x4000_0000, 0x4000_0000)]
        );
        assert_eq!(smmu_facts(&blob).unwrap(), None);
        // Nothing withheld: nothing changes.
        let mut again = tree();
        assert_eq!(withhold_nodes(&mut again, &[]).unwrap(), 0);
        assert_eq!(again, tree());
        assert!(withhold_nodes(&mut [0u8; 8], &[]).is_err());
    }

    #[test]
    fn unit_addresses() {
        assert_eq!(unit_address(b"its@8080000"), Some(0x808_0000));
        assert_eq!(unit_address(b"pcie@10000000"), Some(0x1000_0000));
        assert_eq!(unit_address(b"flash@0"), Some(0));
        assert_eq!(unit_address(b"cpus"), None);
        assert_eq!(unit_address(b"x@zz"), None);
        assert_eq!(unit_address(b"x@"), None);
    }
}
