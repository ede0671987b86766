//! An SMMUv3 that the hypervisor owns.
//!
//! This crate holds everything about the SMMU that can be tested on the
//! development machine: the register map ([`regs`]), stream table entries
//! ([`ste`]: stage 2 only, abort for everything else), commands ([`cmd`]),
//! queue index arithmetic ([`queue`]), event records ([`event`]) and the
//! driver ([`Smmu`]) that programs them. Register access goes through
//! [`SmmuRegs`], which the EL2 image implements with MMIO and the tests fake.
//!
//! Nothing here waits without a bound: every poll gives up after
//! [`Smmu::POLL_LIMIT`] reads, and the driver then turns the SMMU off with
//! GBPA set to abort ([`Smmu::fail_closed`]), so a wedged or hostile SMMU
//! blocks all DMA instead of hanging the hypervisor.
#![no_std]

pub mod cmd;
pub mod event;
pub mod queue;
pub mod regs;
pub mod ste;

pub use cmd::Command;
pub use event::Event;
pub use queue::QueueIndex;
pub use regs::Features;
pub use ste::Stage2Config;

use event::EVENT_WORDS;
use ste::STE_WORDS;

/// Access to the SMMU's registers.
pub trait SmmuRegs {
    /// Read a 32-bit register at `offset` from the base.
    fn read32(&mut self, offset: usize) -> u32;
    /// Write a 32-bit register.
    fn write32(&mut self, offset: usize, value: u32);
    /// Write a 64-bit register.
    fn write64(&mut self, offset: usize, value: u64);
    /// Make the CPU's earlier writes to memory (stream table entries,
    /// commands) visible to the SMMU before the next register write, and
    /// order later memory reads after earlier register reads (`dsb sy`).
    fn barrier(&mut self);
}

/// A piece of hypervisor memory the SMMU reads or writes: the stream table
/// or a queue.
#[derive(Clone, Copy, Debug)]
pub struct DmaBuffer {
    /// Where the hypervisor accesses it.
    pub va: *mut u64,
    /// Its physical address (aligned to its size).
    pub pa: u64,
    /// Its size in bytes (a power of two).
    pub bytes: usize,
}

// SAFETY: a DmaBuffer is memory given to one driver alone (see
// `Smmu::new`); moving the driver to another CPU moves that exclusive use.
unsafe impl Send for DmaBuffer {}

impl DmaBuffer {
    fn words(&self) -> usize {
        self.bytes / 8
    }
    fn write(&mut self, word: usize, v: u64) {
        if word < self.words() {
            // SAFETY: `word` is inside the buffer, which `Smmu::new`'s
            // caller guaranteed is valid, aligned and used by nothing else.
            unsafe { self.va.add(word).write_volatile(v) }
        }
    }
    fn read(&self, word: usize) -> u64 {
        if word < self.words() {
            // SAFETY: as in `write`.
            unsafe { self.va.add(word).read_volatile() }
        } else {
            0
        }
    }
}

/// Why the SMMU cannot be used, or a command did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The SMMU has no stage-2 translation (QEMU: `stage=2` or `nested`).
    NoStage2,
    /// No AArch64 tables or no 4 KiB granule.
    UnsupportedTables,
    /// Its base registers are preset, so the hypervisor cannot place the
    /// tables in its own memory.
    PresetTables,
    /// A buffer is too small, misaligned, or not a power of two.
    BadBuffer,
    /// A register did not take a value, or a command did not complete,
    /// within [`Smmu::POLL_LIMIT`] reads.
    Timeout(&'static str),
    /// The command queue stopped at an erroneous command (CMDQ_CONS.ERR).
    CommandError(u32),
    /// An earlier error turned the SMMU off (all DMA aborts).
    FailedClosed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NoStage2 => f.write_str("no stage-2 translation"),
            Error::UnsupportedTables => f.write_str("no AArch64 4 KiB tables"),
            Error::PresetTables => f.write_str("stream table or queues preset"),
            Error::BadBuffer => f.write_str("buffer too small or misaligned"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::CommandError(e) => write!(f, "command queue error {e:#x}"),
            Error::FailedClosed => f.write_str("SMMU turned off after an error"),
        }
    }
}

/// The memory the driver gives the SMMU.
#[derive(Clone, Copy, Debug)]
pub struct SmmuMemory {
    /// The linear stream table: 64 bytes per stream.
    pub strtab: DmaBuffer,
    /// The command queue: 16 bytes per command.
    pub cmdq: DmaBuffer,
    /// The event queue: 32 bytes per record.
    pub evtq: DmaBuffer,
}

/// The driver.
pub struct Smmu<R: SmmuRegs> {
    regs: R,
    features: Features,
    mem: SmmuMemory,
    /// Log2 of the number of streams the table covers.
    sid_log2: u32,
    cmdq: QueueIndex,
    cmd_prod: u32,
    evtq: QueueIndex,
    evt_cons: u32,
    faults: u64,
    failed: bool,
}

fn log2_exact(n: usize) -> Option<u32> {
    (n.is_power_of_two()).then(|| n.trailing_zeros())
}

impl<R: SmmuRegs> Smmu<R> {
    /// Most register reads any one wait makes.
    pub const POLL_LIMIT: u32 = 100_000;

    /// Read the ID registers and check that this SMMU can give streams a
    /// stage-2 translation in memory the hypervisor places. `streams_log2`
    /// bounds the stream table (StreamIDs at or above `1 << streams_log2`
    /// abort, C_BAD_STREAMID).
    ///
    /// # Safety
    ///
    /// `regs` accesses this SMMU's registers. Each buffer of `mem` is
    /// valid for reads and writes of `bytes` at `va`, 64-byte aligned,
    /// physically at `pa`, and used by nothing else for as long as the
    /// driver lives.
    pub unsafe fn new(mut regs: R, mem: SmmuMemory, streams_log2: u32) -> Result<Self, Error> {
        let features = Features::decode(
            regs.read32(regs::IDR0),
            regs.read32(regs::IDR1),
            regs.read32(regs::IDR3),
            regs.read32(regs::IDR5),
        );
        if !features.stage2 {
            return Err(Error::NoStage2);
        }
        if !features.aarch64_tables || !features.gran4k {
            return Err(Error::UnsupportedTables);
        }
        if features.preset {
            return Err(Error::PresetTables);
        }
        let buffers = [mem.strtab, mem.cmdq, mem.evtq];
        if buffers
            .iter()
            .any(|b| !b.bytes.is_power_of_two() || b.bytes < 64 || b.pa % b.bytes as u64 != 0)
        {
            return Err(Error::BadBuffer);
        }
        let fit =
            |bytes: usize, size: usize, max: u32| log2_exact(bytes / size).map(|l| l.min(max));
        let sid_log2 = fit(mem.strtab.bytes, 64, features.sid_bits)
            .ok_or(Error::BadBuffer)?
            .min(streams_log2);
        let cmd_log2 = fit(mem.cmdq.bytes, 16, features.cmdq_log2).ok_or(Error::BadBuffer)?;
        let evt_log2 = fit(mem.evtq.bytes, 32, features.evtq_log2).ok_or(Error::BadBuffer)?;
        Ok(Self {
            regs,
            features,
            mem,
            sid_log2,
            cmdq: QueueIndex::new(cmd_log2),
            cmd_prod: 0,
            evtq: QueueIndex::new(evt_log2),
            evt_cons: 0,
            faults: 0,
            failed: false,
        })
    }

    /// What the ID registers said.
    pub fn features(&self) -> &Features {
        &self.features
    }
    /// Number of streams the stream table covers.
    pub fn streams(&self) -> u32 {
        1 << self.sid_log2
    }
    /// Translation faults the event queue reported so far.
    pub fn faults(&self) -> u64 {
        self.faults
    }
    /// Whether an error turned the SMMU off.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn poll(
        &mut self,
        offset: usize,
        what: &'static str,
        done: impl Fn(u32) -> bool,
    ) -> Result<u32, Error> {
        for _ in 0..Self::POLL_LIMIT {
            let v = self.regs.read32(offset);
            if done(v) {
                return Ok(v);
            }
        }
        Err(Error::Timeout(what))
    }

    /// Set GBPA to abort: with SMMUEN clear, every transaction then aborts.
    fn gbpa_abort(&mut self) -> Result<(), Error> {
        self.regs
            .write32(regs::GBPA, regs::GBPA_ABORT | regs::GBPA_UPDATE);
        self.poll(regs::GBPA, "GBPA.UPDATE", |v| v & regs::GBPA_UPDATE == 0)?;
        Ok(())
    }

    fn set_cr0(&mut self, v: u32) -> Result<(), Error> {
        self.regs.write32(regs::CR0, v);
        self.poll(regs::CR0ACK, "CR0ACK", |a| a == v)?;
        Ok(())
    }

    /// Bring the SMMU up: abort everything while it is set up, give every
    /// stream of the table `ste` (the hypervisor's stage-2 view), enable
    /// the queues, invalidate every cache, then translate.
    pub fn enable(&mut self, ste: &[u64; STE_WORDS]) -> Result<(), Error> {
        let r = self.try_enable(ste);
        if r.is_err() {
            self.fail_closed();
        }
        r
    }

    fn try_enable(&mut self, ste: &[u64; STE_WORDS]) -> Result<(), Error> {
        // Before anything else: no transaction bypasses while the SMMU is
        // off (reset value of GBPA is bypass).
        self.gbpa_abort()?;
        self.set_cr0(0)?;
        for sid in 0..self.streams() as usize {
            for (i, &w) in ste.iter().enumerate() {
                self.mem.strtab.write(sid * STE_WORDS + i, w);
            }
        }
        // Clear the command and event queues.
        for w in 0..self.mem.cmdq.words() {
            self.mem.cmdq.write(w, 0);
        }
        for w in 0..self.mem.evtq.words() {
            self.mem.evtq.write(w, 0);
        }
        self.regs.barrier();
        self.regs.write32(regs::IRQ_CTRL, 0);
        self.poll(regs::IRQ_CTRLACK, "IRQ_CTRLACK", |a| a == 0)?;
        self.regs.write32(regs::CR1, regs::CR1_WB_ISH);
        self.regs.write32(regs::CR2, regs::CR2_RECINVSID);
        self.regs.write64(
            regs::STRTAB_BASE,
            regs::BASE_ALLOCATE | (self.mem.strtab.pa & regs::STRTAB_ADDR_MASK),
        );
        // FMT = 0 (linear), LOG2SIZE.
        self.regs.write32(regs::STRTAB_BASE_CFG, self.sid_log2);
        self.regs.write64(
            regs::CMDQ_BASE,
            regs::BASE_ALLOCATE
                | (self.mem.cmdq.pa & regs::QUEUE_ADDR_MASK)
                | u64::from(self.cmdq.log2()),
        );
        self.regs.write32(regs::CMDQ_PROD, 0);
        self.regs.write32(regs::CMDQ_CONS, 0);
        self.cmd_prod = 0;
        self.regs.write64(
            regs::EVENTQ_BASE,
            regs::BASE_ALLOCATE
                | (self.mem.evtq.pa & regs::QUEUE_ADDR_MASK)
                | u64::from(self.evtq.log2()),
        );
        self.regs.write32(regs::EVENTQ_PROD, 0);
        self.regs.write32(regs::EVENTQ_CONS, 0);
        self.evt_cons = 0;
        self.set_cr0(regs::CR0_CMDQEN | regs::CR0_EVTQEN)?;
        self.submit(&[Command::CfgiAll, Command::TlbiNsnhAll])?;
        self.sync()?;
        self.set_cr0(regs::CR0_CMDQEN | regs::CR0_EVTQEN | regs::CR0_SMMUEN)
    }

    /// Turn translation off with GBPA at abort, so every transaction
    /// aborts, and refuse every later command. Best effort: a register that
    /// does not answer is not waited for again.
    pub fn fail_closed(&mut self) {
        self.failed = true;
        self.regs
            .write32(regs::GBPA, regs::GBPA_ABORT | regs::GBPA_UPDATE);
        self.regs.write32(regs::CR0, 0);
    }

    /// Queue commands (waiting, with a bound, for free slots). They take
    /// effect in order; [`Smmu::sync`] waits for them.
    pub fn submit(&mut self, cmds: &[Command]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::FailedClosed);
        }
        for c in cmds {
            let words = c.encode();
            let mut tries = 0;
            while self
                .cmdq
                .is_full(self.cmd_prod, self.regs.read32(regs::CMDQ_CONS))
            {
                tries += 1;
                if tries >= Self::POLL_LIMIT {
                    self.fail_closed();
                    return Err(Error::Timeout("a free command slot"));
                }
            }
            let slot = self.cmdq.slot(self.cmd_prod);
            self.mem.cmdq.write(slot * 2, words[0]);
            self.mem.cmdq.write(slot * 2 + 1, words[1]);
            self.cmd_prod = self.cmdq.next(self.cmd_prod);
            self.regs.barrier();
            self.regs.write32(regs::CMDQ_PROD, self.cmd_prod);
        }
        Ok(())
    }

    /// Issue CMD_SYNC and wait (bounded) until the SMMU has consumed it:
    /// every earlier command has then taken effect. A timeout or a command
    /// error turns the SMMU off ([`Smmu::fail_closed`]).
    pub fn sync(&mut self) -> Result<(), Error> {
        let target = self.cmd_prod;
        self.submit(&[Command::Sync])?;
        let q = self.cmdq;
        let r = self.poll(regs::CMDQ_CONS, "CMD_SYNC", |c| {
            q.consumed(target, c) || c & (0x7f << 24) != 0
        });
        let r = match r {
            Ok(c) if c & (0x7f << 24) != 0 => Err(Error::CommandError((c >> 24) & 0x7f)),
            Ok(_) => {
                let pending = self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN);
                if pending & regs::GERROR_CMDQ_ERR != 0 {
                    Err(Error::CommandError(0))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.fail_closed();
        }
        r
    }

    /// Read every event the SMMU recorded since the last call (at most one
    /// queue's worth), count the translation faults and pass each event to
    /// `report`. Returns the number of events read.
    pub fn drain_events(&mut self, report: &mut dyn FnMut(&Event)) -> u32 {
        let mut n = 0;
        let prod = self.evtq.clean(self.regs.read32(regs::EVENTQ_PROD));
        self.regs.barrier();
        while !self.evtq.is_empty(prod, self.evt_cons) && n < self.evtq.entries() {
            let base = self.evtq.slot(self.evt_cons) * EVENT_WORDS;
            let mut w = [0u64; EVENT_WORDS];
            for (i, x) in w.iter_mut().enumerate() {
                *x = self.mem.evtq.read(base + i);
            }
            let e = Event::decode(&w);
            if e.is_translation_fault() {
                self.faults += 1;
            }
            report(&e);
            self.evt_cons = self.evtq.next(self.evt_cons);
            n += 1;
        }
        if n > 0 {
            self.regs.barrier();
            self.regs.write32(regs::EVENTQ_CONS, self.evt_cons);
        }
        n
    }
}

#[cfg(test)]
mod tests;
