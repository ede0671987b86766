//! The QEMU `virt` board the project runs on
//! (`-machine virt,virtualization=on,gic-version=3 -m 1G`): its addresses,
//! the boot manifest the project uses for it (`manifests/qemu-virt.manifest`)
//! and, for the simulator, a device tree shaped like the one QEMU generates.

/// Base of RAM (QEMU's `virt` memory map).
pub const RAM_BASE: u64 = 0x4000_0000;
/// Size of RAM, as set by `-m 1G`.
pub const RAM_SIZE: u64 = 0x4000_0000;
/// The manifest's `hyp` range: the first 64 MiB of RAM.
pub const HYP_BASE: u64 = 0x4000_0000;
/// Size of the manifest's `hyp` range.
pub const HYP_SIZE: u64 = 0x0400_0000;
/// The manifest's `coherent` range: the last 64 MiB of RAM, carved out.
pub const COHERENT_BASE: u64 = 0x7C00_0000;
/// Size of the manifest's `coherent` range.
pub const COHERENT_SIZE: u64 = 0x0400_0000;
/// The manifest's `mmio` range (DEVICE only), in the PCIe MMIO window.
pub const MMIO_BASE: u64 = 0x1000_0000;
/// Size of the manifest's `mmio` range.
pub const MMIO_SIZE: u64 = 0x0100_0000;
/// The manifest's `mmio-uc` range (NORMAL_NC allowed), in the PCIe MMIO window.
pub const MMIO_UC_BASE: u64 = 0x1100_0000;
/// Size of the manifest's `mmio-uc` range.
pub const MMIO_UC_SIZE: u64 = 0x0100_0000;
/// The PL011 UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the PL011's register window.
pub const UART_SIZE: u64 = 0x1000;
/// GICv3 distributor.
pub const GICD_BASE: u64 = 0x0800_0000;
/// Size of the distributor's window.
pub const GICD_SIZE: u64 = 0x1_0000;
/// GICv3 redistributors.
pub const GICR_BASE: u64 = 0x080A_0000;
/// Size of the redistributor region.
pub const GICR_SIZE: u64 = 0x00F6_0000;

/// The SMMUv3 (`iommu=smmuv3`), withheld from the host.
pub const SMMU_BASE: u64 = 0x0905_0000;
/// Size of the SMMU's register window (two 64 KiB pages).
pub const SMMU_SIZE: u64 = 0x2_0000;
/// fw_cfg, whose DMA interface is a bus master: withheld from the host.
pub const FW_CFG_BASE: u64 = 0x0902_0000;
/// Size of the part of fw_cfg's window the manifest withholds.
pub const FW_CFG_SIZE: u64 = 0x1000;
/// The GIC ITS: withheld from the host.
pub const ITS_BASE: u64 = 0x0808_0000;
/// Size of the ITS's register window.
pub const ITS_SIZE: u64 = 0x2_0000;
/// PCIe ECAM with `highmem-ecam=off`: 256 buses of 1 MiB.
pub const PCIE_ECAM_BASE: u64 = 0x3f00_0000;

/// The boot manifest the project uses on QEMU `virt`.
pub const MANIFEST: &str = include_str!("../manifests/qemu-virt.manifest");

/// A flattened device tree like the one QEMU's `virt` machine generates
/// (root `#address-cells`/`#size-cells` 2, `/memory@...`, two CPUs, PL011,
/// GICv3, PSCI over SMC, architected timer, `/chosen`), with one memory
/// node for `[ram_base, ram_base + ram_size)`. For the simulator and tests.
#[cfg(any(test, feature = "std"))]
pub fn qemu_virt_fdt(ram_base: u64, ram_size: u64) -> alloc::vec::Vec<u8> {
    build_fdt(ram_base, ram_size).expect("fixed device tree layout is valid")
}

#[cfg(any(test, feature = "std"))]
fn build_fdt(ram_base: u64, ram_size: u64) -> Result<alloc::vec::Vec<u8>, vm_fdt::Error> {
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    const GIC_PHANDLE: u32 = 0x8002;
    const CLOCK_PHANDLE: u32 = 0x8000;
    // Interrupt specifier: type (0 SPI, 1 PPI), number, flags (4: level high).
    const SPI: u32 = 0;
    const PPI: u32 = 1;
    const LEVEL_HIGH: u32 = 4;

    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut fdt = vm_fdt::FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        strings(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]),
    )?;
    fdt.property_string("method", "smc")?;
    fdt.property_u32("cpu_suspend", 0xc400_0001)?;
    fdt.property_u32("cpu_off", 0x8400_0002)?;
    fdt.property_u32("cpu_on", 0xc400_0003)?;
    fdt.property_u32("migrate", 0xc400_0005)?;
    fdt.end_node(psci)?;

    let memory = fdt.begin_node(&format!("memory@{ram_base:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[ram_base, ram_size])?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for n in 0..2u32 {
        let cpu = fdt.begin_node(&format!("cpu@{n}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,cortex-a57")?;
        fdt.property_u32("reg", n)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&format!("pl011@{UART_BASE:x}"))?;
    fdt.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
    fdt.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    fdt.property_array_u32("interrupts", &[SPI, 1, LEVEL_HIGH])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
    fdt.end_node(uart)?;

    let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, GICR_SIZE])?;
    fdt.property_u32("#redistributor-regions", 1)?;
    // The virtual CPU interface's maintenance interrupt (virtualization=on).
    fdt.property_array_u32("interrupts", &[PPI, 9, LEVEL_HIGH])?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string_list(
        "compatible",
        strings(&["arm,armv8-timer", "arm,armv7-timer"]),
    )?;
    // Secure, non-secure, virtual and hypervisor physical timer PPIs.
    fdt.property_array_u32(
        "interrupts",
        &[
            PPI, 13, LEVEL_HIGH, PPI, 14, LEVEL_HIGH, PPI, 11, LEVEL_HIGH, PPI, 10, LEVEL_HIGH,
        ],
    )?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART_BASE:x}"))?;
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    fdt.finish()
}
