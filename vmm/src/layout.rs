//! The guest's physical address map: where the VMM puts the interrupt
//! controller, the devices and RAM, and which SPI each device raises.
//! The device tree ([`crate::fdt`]) tells the guest the same.

/// The GICv3 distributor (64 KiB).
pub const GICD_BASE: u64 = 0x0800_0000;
/// The first redistributor (128 KiB per vCPU).
pub const GICR_BASE: u64 = 0x080A_0000;
/// The 16550 UART (Linux's early console and `console=ttyS0`).
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
pub const UART_SPI: u32 = 1;
/// The virtio-mmio devices, [`crate::virtio::MMIO_SIZE`] apart, from
/// [`VIRTIO_SPI_BASE`] upward.
pub const VIRTIO_BASE: u64 = 0x0A00_0000;
pub const VIRTIO_SPI_BASE: u32 = 16;
/// A page outside the guest's RAM holding the code secondary vCPUs wait
/// in until the guest starts them with PSCI CPU_ON (see [`PEN_CODE`]).
pub const PEN_BASE: u64 = 0x0C00_0000;
/// RAM starts here (as on QEMU's `virt`).
pub const RAM_BASE: u64 = 0x8000_0000;
/// A protected VM's restricted DMA pool, at the end of its RAM: the only
/// guest memory its virtio devices reach (the guest shares it).
pub const DMA_POOL_SIZE: u64 = 8 << 20;
/// A normal VM's device tree goes into the last 2 MiB of RAM.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;

/// The INTID of SPI `n`.
pub const fn spi_intid(n: u32) -> u32 {
    32 + n
}

/// The holding pen: `movz x0, #0x0002; movk x0, #0x8400, lsl #16; hvc #0;
/// b .`: PSCI CPU_OFF (0x8400_0002). A secondary vCPU of a normal VM
/// would otherwise start at the host's entry point at its first run; this
/// turns it off at once, so that the guest's own CPU_ON (handled by the
/// hypervisor) starts it where the guest says, as on real hardware.
pub const PEN_CODE: [u32; 4] = [0xd280_0040, 0xf2b0_8000, 0xd400_0002, 0x1400_0000];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pen_code_encodes_cpu_off() {
        // MOVZ X0, #imm16: 0xd2800000 | imm16 << 5.
        assert_eq!(PEN_CODE[0], 0xd280_0000 | (0x0002 << 5));
        // MOVK X0, #imm16, LSL #16: 0xf2a00000 | imm16 << 5.
        assert_eq!(PEN_CODE[1], 0xf2a0_0000 | (0x8400 << 5));
        // HVC #0 and B . (offset 0).
        assert_eq!(PEN_CODE[2], 0xd400_0002);
        assert_eq!(PEN_CODE[3], 0x1400_0000);
    }
}
