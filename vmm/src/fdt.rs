//! The guest's device tree, written with `vm-fdt`: CPUs started through
//! PSCI over HVC, RAM, the GICv3, the architected timer, the UART, the
//! virtio-mmio devices and the boot arguments.

use vm_fdt::{Error, FdtWriter};

use crate::gic::{DIST_SIZE, REDIST_SIZE};
use crate::layout::*;
use crate::virtio::MMIO_SIZE;

const GIC_PHANDLE: u32 = 1;
const DMA_POOL_PHANDLE: u32 = 2;
/// Interrupt specifier types and flags (the GIC binding).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
const IRQ_LEVEL_LOW: u32 = 8;

/// What the device tree describes.
pub struct Config<'a> {
    pub vcpus: usize,
    pub ram_size: u64,
    pub cmdline: &'a str,
    /// Start and end (exclusive) of the initrd in guest memory.
    pub initrd: Option<(u64, u64)>,
    /// Number of virtio-mmio devices (at VIRTIO_BASE upward).
    pub virtio_devices: usize,
    /// A protected VM's restricted DMA pool (base, size) for the virtio
    /// devices, as crosvm gives protected VMs.
    pub dma_pool: Option<(u64, u64)>,
}

/// Builds the flattened device tree.
pub fn build(c: &Config) -> Result<Vec<u8>, Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", c.cmdline)?;
    f.property_string("stdout-path", &format!("/uart@{UART_BASE:x}"))?;
    if let Some((start, end)) = c.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, c.ram_size])?;
    f.end_node(mem)?;

    if let Some((base, size)) = c.dma_pool {
        let rsv = f.begin_node("reserved-memory")?;
        f.property_u32("#address-cells", 2)?;
        f.property_u32("#size-cells", 2)?;
        f.property_null("ranges")?;
        let pool = f.begin_node(&format!("restricted_dma_reserved@{base:x}"))?;
        f.property_string("compatible", "restricted-dma-pool")?;
        f.property_array_u64("reg", &[base, size])?;
        f.property_phandle(DMA_POOL_PHANDLE)?;
        f.end_node(pool)?;
        f.end_node(rsv)?;
    }

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    for i in 0..c.vcpus {
        let cpu = f.begin_node(&format!("cpu@{i}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        // vCPU n has MPIDR affinity 0.0.0.n (the hypervisor's VMPIDR).
        f.property_u32("reg", i as u32)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let gic = f.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_u32("#redistributor-regions", 1)?;
    f.property_array_u64(
        "reg",
        &[
            GICD_BASE,
            DIST_SIZE,
            GICR_BASE,
            REDIST_SIZE * c.vcpus as u64,
        ],
    )?;
    f.property_phandle(GIC_PHANDLE)?;
    f.end_node(gic)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    f.property_null("always-on")?;
    // Secure and non-secure physical, virtual, hypervisor timer PPIs.
    let mut cells = Vec::new();
    for ppi in [13, 14, 11, 10] {
        cells.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_LOW]);
    }
    f.property_array_u32("interrupts", &cells)?;
    f.end_node(timer)?;

    let uart = f.begin_node(&format!("uart@{UART_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    f.property_u32("clock-frequency", 1_843_200)?;
    f.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    f.end_node(uart)?;

    for i in 0..c.virtio_devices {
        let base = VIRTIO_BASE + i as u64 * MMIO_SIZE;
        let dev = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, MMIO_SIZE])?;
        f.property_null("dma-coherent")?;
        if c.dma_pool.is_some() {
            f.property_u32("memory-region", DMA_POOL_PHANDLE)?;
        }
        f.property_array_u32(
            "interrupts",
            &[GIC_SPI, VIRTIO_SPI_BASE + i as u32, IRQ_LEVEL_HIGH],
        )?;
        f.end_node(dev)?;
    }

    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tree_names_what_the_guest_needs() {
        let dtb = build(&Config {
            vcpus: 2,
            ram_size: 256 << 20,
            cmdline: "console=ttyS0",
            initrd: Some((0x9000_0000, 0x9010_0000)),
            virtio_devices: 2,
            dma_pool: None,
        })
        .unwrap();
        // FDT magic, big-endian.
        assert_eq!(&dtb[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        for s in [
            &b"arm,gic-v3"[..],
            b"arm,psci-1.0",
            b"console=ttyS0",
            b"cpu@1",
            b"virtio_mmio@a000200",
            b"linux,initrd-start",
            b"ns16550a",
        ] {
            assert!(find(&dtb, s), "{}", String::from_utf8_lossy(s));
        }
        assert!(!find(&dtb, b"cpu@2"));
        assert!(!find(&dtb, b"restricted-dma-pool"));
        assert!(dtb.len() as u64 <= FDT_MAX_SIZE);
    }

    #[test]
    fn protected_vms_get_a_restricted_dma_pool_for_virtio() {
        let dtb = build(&Config {
            vcpus: 1,
            ram_size: 256 << 20,
            cmdline: "",
            initrd: None,
            virtio_devices: 1,
            dma_pool: Some((0x8f80_0000, 8 << 20)),
        })
        .unwrap();
        assert!(find(&dtb, b"restricted-dma-pool"));
        assert!(find(&dtb, b"restricted_dma_reserved@8f800000"));
        assert!(find(&dtb, b"memory-region"));
    }
}
