//! Targets `device_tree` and `manifest`: the platform description the
//! hypervisor builds at boot from a device tree and its boot manifest. A
//! malformed one must give an error, never a panic, and one that is
//! accepted must describe a consistent board.

use std::sync::OnceLock;

use platform::{MemClass, Platform, QEMU_VIRT_MANIFEST};

/// PA sizes the boards are built with (QEMU's models have 40, 44 and 48).
const PA_BITS: [u32; 3] = [40, 44, 48];

/// Target `device_tree`: the input is a flattened device tree (the seeds
/// are QEMU's `virt` tree and the simulator's). Built into a board with the
/// QEMU manifest; CPUs and GIC facts read; the host's `/memory` rewritten
/// and read back.
pub fn device_tree(data: &[u8]) -> Result<(), String> {
    let _ = platform::cpu_mpidrs(data);
    let _ = platform::gic_facts(data);
    for pa_bits in PA_BITS {
        let Ok(p) = Platform::new(data, QEMU_VIRT_MANIFEST, &[], pa_bits) else {
            continue;
        };
        consistent(&p).map_err(|e| format!("pa_bits {pa_bits}: {e}"))?;
        let ram: Vec<(u64, u64)> = p.host_ram().collect();
        let mut patched = data.to_vec();
        if platform::patch_host_memory(&mut patched, &ram).is_err() {
            if patched != data {
                return Err("a failed /memory rewrite changed the tree".into());
            }
            continue;
        }
        let again = Platform::new(&patched, QEMU_VIRT_MANIFEST, &[], pa_bits)
            .map_err(|e| format!("pa_bits {pa_bits}: the rewritten tree is refused: {e:?}"))?;
        let ram_again: Vec<(u64, u64)> = again.host_ram().collect();
        if ram_again != ram {
            return Err(format!(
                "pa_bits {pa_bits}: /memory rewritten as {ram:x?} reads back as {ram_again:x?}"
            ));
        }
    }
    Ok(())
}

/// Target `manifest`: the input is manifest text (bytes that are not UTF-8
/// are replaced). Parsed alone, then built into a board with the
/// simulator's QEMU `virt` tree.
pub fn manifest(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    static FDT: OnceLock<Vec<u8>> = OnceLock::new();
    let fdt = FDT.get_or_init(super::corpus::sim_device_tree);
    for pa_bits in PA_BITS {
        if let Ok(m) = platform::Manifest::parse(&text, pa_bits) {
            for e in m.entries() {
                let end = e.base.checked_add(e.size);
                if end.is_none_or(|end| end > 1u64 << pa_bits) {
                    return Err(format!(
                        "pa_bits {pa_bits}: entry {e:?} leaves the PA space"
                    ));
                }
            }
        }
        if let Ok(p) = Platform::new(fdt, &text, &[], pa_bits) {
            consistent(&p).map_err(|e| format!("pa_bits {pa_bits}: {e}"))?;
        }
    }
    Ok(())
}

/// Regions sorted, not overlapping, inside the PA space, and each page
/// classified as its region says; tracked pages indexed densely.
fn consistent(p: &Platform) -> Result<(), String> {
    let mut end = 0;
    let mut dense = 0;
    for r in p.regions() {
        if r.nr_pages == 0 || r.base_pfn < end {
            return Err(format!("region {r:?} empty or overlaps the one before"));
        }
        end = r
            .base_pfn
            .checked_add(r.nr_pages)
            .filter(|&e| e <= p.pa_pages())
            .ok_or_else(|| format!("region {r:?} leaves the PA space"))?;
        for pfn in [r.base_pfn, end - 1] {
            if p.classify(pfn).0 != r.class {
                return Err(format!(
                    "page {pfn:#x} of {r:?} classified {:?}",
                    p.classify(pfn)
                ));
            }
        }
        if p.range_class(r.base_pfn, r.nr_pages).map(|c| c.0) != Ok(r.class) {
            return Err(format!("region {r:?} is not one range"));
        }
        let tracked = r.class != MemClass::Hyp && (r.class != MemClass::Mmio || r.assignable);
        match (tracked, p.tracked_index(r.base_pfn)) {
            (true, Some(i)) if i == dense => dense += r.nr_pages,
            (false, None) => {}
            (t, i) => return Err(format!("region {r:?}: tracked {t}, dense index {i:?}")),
        }
    }
    if dense != p.tracked_pages() {
        return Err(format!(
            "{dense} tracked pages counted, {} reported",
            p.tracked_pages()
        ));
    }
    Ok(())
}
