//! Register offsets and fields (Arm IHI 0070, SMMUv3 architecture
//! specification, chapter 6 "Memory map and registers"). Offsets are from
//! the base of register page 0; page 1 starts at 0x1_0000.

/// ID register 0: S2P, S1P, TTF, COHACC, VMID16, ST_LEVEL, ...
pub const IDR0: usize = 0x00;
/// ID register 1: SIDSIZE, EVENTQS, CMDQS, TABLES_PRESET, QUEUES_PRESET.
pub const IDR1: usize = 0x04;
/// ID register 3: FWB (bit 8).
pub const IDR3: usize = 0x0C;
/// ID register 5: OAS, GRAN4K.
pub const IDR5: usize = 0x14;
/// Control register 0: SMMUEN, EVTQEN, CMDQEN.
pub const CR0: usize = 0x20;
/// Acknowledges CR0 changes.
pub const CR0ACK: usize = 0x24;
/// Control register 1: table and queue cacheability and shareability.
pub const CR1: usize = 0x28;
/// Control register 2: RECINVSID, PTM.
pub const CR2: usize = 0x2C;
/// Global bypass attribute: ABORT (bit 20), UPDATE (bit 31).
pub const GBPA: usize = 0x44;
/// Interrupt enables: GERROR_IRQEN, EVTQ_IRQEN.
pub const IRQ_CTRL: usize = 0x50;
/// Acknowledges IRQ_CTRL changes.
pub const IRQ_CTRLACK: usize = 0x54;
/// Global errors: toggled by the SMMU.
pub const GERROR: usize = 0x60;
/// Global errors acknowledged: toggled by software.
pub const GERRORN: usize = 0x64;
/// Stream table base (64-bit): RA, ADDR\[51:6\].
pub const STRTAB_BASE: usize = 0x80;
/// Stream table format: FMT\[17:16\] (0 linear), LOG2SIZE\[5:0\].
pub const STRTAB_BASE_CFG: usize = 0x88;
/// Command queue base (64-bit): RA, ADDR\[51:5\], LOG2SIZE\[4:0\].
pub const CMDQ_BASE: usize = 0x90;
/// Command queue producer index (software writes).
pub const CMDQ_PROD: usize = 0x98;
/// Command queue consumer index (the SMMU writes); ERR in \[30:24\].
pub const CMDQ_CONS: usize = 0x9C;
/// Event queue base (64-bit): WA, ADDR\[51:5\], LOG2SIZE\[4:0\].
pub const EVENTQ_BASE: usize = 0xA0;
/// Event queue producer index (the SMMU writes), in page 1.
pub const EVENTQ_PROD: usize = 0x1_00A8;
/// Event queue consumer index (software writes), in page 1.
pub const EVENTQ_CONS: usize = 0x1_00AC;

/// CR0.SMMUEN.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.EVTQEN.
pub const CR0_EVTQEN: u32 = 1 << 2;
/// CR0.CMDQEN.
pub const CR0_CMDQEN: u32 = 1 << 3;

/// GBPA.ABORT: transactions that bypass (SMMUEN = 0) abort.
pub const GBPA_ABORT: u32 = 1 << 20;
/// GBPA.UPDATE: set with a new value; cleared by the SMMU when it is taken.
pub const GBPA_UPDATE: u32 = 1 << 31;

/// GERROR.CMDQ_ERR: the command queue stopped at an erroneous command.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;

/// CR1: tables and queues inner shareable (0b11), write-back
/// read/write-allocate (0b01) for both inner and outer cacheability.
pub const CR1_WB_ISH: u32 = (0b11 << 10) | (0b01 << 8) | (0b01 << 6) // tables
    | (0b11 << 4) | (0b01 << 2) | 0b01; // queues

/// CR2.RECINVSID: record C_BAD_STREAMID events for streams out of range.
pub const CR2_RECINVSID: u32 = 1 << 1;

/// Base-register RA/WA bit (read/write-allocate hint).
pub const BASE_ALLOCATE: u64 = 1 << 62;
/// Address field of STRTAB_BASE (bits \[51:6\]).
pub const STRTAB_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x3f;
/// Address field of CMDQ_BASE / EVENTQ_BASE (bits \[51:5\]).
pub const QUEUE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1f;

/// What the ID registers say, as far as the hypervisor cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-2 translation (IDR0.S2P).
    pub stage2: bool,
    /// AArch64 translation tables (IDR0.TTF includes 0b10).
    pub aarch64_tables: bool,
    /// Coherent table walks and queue accesses (IDR0.COHACC).
    pub coherent: bool,
    /// 16-bit VMIDs (IDR0.VMID16).
    pub vmid16: bool,
    /// Two-level stream tables (IDR0.ST_LEVEL = 0b01).
    pub two_level_strtab: bool,
    /// StreamID bits (IDR1.SIDSIZE).
    pub sid_bits: u32,
    /// Log2 of the most command-queue entries (IDR1.CMDQS).
    pub cmdq_log2: u32,
    /// Log2 of the most event-queue entries (IDR1.EVENTQS).
    pub evtq_log2: u32,
    /// Base registers are fixed (IDR1.TABLES_PRESET / QUEUES_PRESET).
    pub preset: bool,
    /// Stage-2 forced write-back (IDR3.FWB).
    pub fwb: bool,
    /// Output address size in bits (IDR5.OAS).
    pub oas_bits: u32,
    /// 4 KiB translation granule (IDR5.GRAN4K).
    pub gran4k: bool,
}

impl Features {
    /// Decode IDR0, IDR1, IDR3 and IDR5.
    pub fn decode(idr0: u32, idr1: u32, idr3: u32, idr5: u32) -> Self {
        let oas_bits = match idr5 & 7 {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        };
        Self {
            stage2: idr0 & 1 != 0,
            aarch64_tables: (idr0 >> 2) & 0b10 != 0,
            coherent: idr0 & (1 << 4) != 0,
            vmid16: idr0 & (1 << 18) != 0,
            two_level_strtab: (idr0 >> 27) & 3 == 1,
            sid_bits: idr1 & 0x3f,
            cmdq_log2: (idr1 >> 21) & 0x1f,
            evtq_log2: (idr1 >> 16) & 0x1f,
            preset: idr1 & (3 << 29) != 0,
            fwb: idr3 & (1 << 8) != 0,
            oas_bits,
            gran4k: idr5 & (1 << 4) != 0,
        }
    }

    /// STE.S2PS / VTCR.PS encoding of `bits` (rounded down to a size the
    /// architecture names).
    pub fn ps_encoding(bits: u32) -> u64 {
        match bits {
            0..=35 => 0,
            36..=39 => 1,
            40..=41 => 2,
            42..=43 => 3,
            44..=47 => 4,
            48..=51 => 5,
            _ => 6,
        }
    }
}
