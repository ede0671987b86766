//! The driver against a fake SMMU that consumes commands the moment PROD is
//! written, or never (a wedged or hostile SMMU).
#![allow(clippy::drop_non_drop)] // drops end the driver's borrow of the fake

extern crate std;

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use super::*;

/// QEMU 10's SMMUv3 with `stage=nested`: S1P, S2P, AArch64 tables, COHACC,
/// VMID16, 16-bit StreamIDs, 2^19 queues, OAS 44, GRAN4K, no FWB.
const IDR0: u32 = 0b11 | (0b10 << 2) | (1 << 4) | (1 << 18);
const IDR1: u32 = 16 | (19 << 16) | (19 << 21);
const IDR5: u32 = 4 | (1 << 4);

#[derive(Default)]
struct Fake {
    idr0: u32,
    regs: std::collections::BTreeMap<usize, u64>,
    /// Commands the SMMU executed.
    executed: Vec<Command>,
    raw: Vec<[u64; 2]>,
    /// Never consume commands.
    stuck: bool,
    /// GBPA.UPDATE never clears.
    gbpa_stuck: bool,
    /// Report this CMDQ_CONS.ERR at the next command.
    error: Option<u32>,
    barriers: usize,
}

fn decode(w: [u64; 2]) -> Option<Command> {
    let op = w[0] as u8;
    Some(match op {
        cmd::OP_CFGI_STE => Command::CfgiSte {
            sid: (w[0] >> 32) as u32,
        },
        cmd::OP_CFGI_ALL => Command::CfgiAll,
        cmd::OP_TLBI_S2_IPA => Command::TlbiS2Ipa {
            vmid: (w[0] >> 32) as u16,
            ipa: w[1],
        },
        cmd::OP_TLBI_S12_VMALL => Command::TlbiS12Vmall {
            vmid: (w[0] >> 32) as u16,
        },
        cmd::OP_TLBI_NSNH_ALL => Command::TlbiNsnhAll,
        cmd::OP_SYNC => Command::Sync,
        _ => return None,
    })
}

impl SmmuRegs for &mut Fake {
    fn read32(&mut self, offset: usize) -> u32 {
        match offset {
            regs::IDR0 => self.idr0,
            regs::IDR1 => IDR1,
            regs::IDR3 => 0,
            regs::IDR5 => IDR5,
            regs::CR0ACK => self.regs.get(&regs::CR0).copied().unwrap_or(0) as u32,
            regs::IRQ_CTRLACK => self.regs.get(&regs::IRQ_CTRL).copied().unwrap_or(0) as u32,
            o => self.regs.get(&o).copied().unwrap_or(0) as u32,
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        let mut value = u64::from(value);
        if offset == regs::GBPA && !self.gbpa_stuck {
            value &= !u64::from(regs::GBPA_UPDATE);
        }
        self.regs.insert(offset, value);
        if offset == regs::CMDQ_PROD && !self.stuck {
            // Execute from CONS to PROD, reading the queue the driver
            // placed at CMDQ_BASE (in these tests va == pa).
            let base = self.regs[&regs::CMDQ_BASE];
            let q = QueueIndex::new((base & 0x1f) as u32);
            let mem = (base & regs::QUEUE_ADDR_MASK) as *const u64;
            let mut cons = self.regs.get(&regs::CMDQ_CONS).copied().unwrap_or(0) as u32;
            while !q.is_empty(value as u32, cons) {
                let slot = q.slot(cons);
                // SAFETY: the test's command queue buffer, alive for the test.
                let w = unsafe { [mem.add(slot * 2).read(), mem.add(slot * 2 + 1).read()] };
                if let Some(e) = self.error.take() {
                    self.regs.insert(regs::CMDQ_CONS, u64::from(cons | e << 24));
                    return;
                }
                self.raw.push(w);
                if let Some(c) = decode(w) {
                    self.executed.push(c);
                }
                cons = q.next(cons);
            }
            self.regs.insert(regs::CMDQ_CONS, u64::from(cons));
        }
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.regs.insert(offset, value);
    }
    fn barrier(&mut self) {
        self.barriers += 1;
    }
}

/// An aligned buffer of `bytes`, whose address stands for its PA.
fn buffer(bytes: usize) -> (Box<[u64]>, DmaBuffer) {
    let mut b = vec![0u64; bytes / 4].into_boxed_slice();
    let va = b.as_mut_ptr();
    let off = (bytes - (va as usize % bytes)) % bytes;
    // SAFETY: `off` < `bytes`, and the box holds 2 * bytes.
    let va = unsafe { va.byte_add(off) };
    (
        b,
        DmaBuffer {
            va,
            pa: va as u64,
            bytes,
        },
    )
}

struct Bufs {
    _keep: Vec<Box<[u64]>>,
    mem: SmmuMemory,
}

fn bufs(streams: usize) -> Bufs {
    let (a, strtab) = buffer(streams * 64);
    let (b, cmdq) = buffer(4 * 16);
    let (c, evtq) = buffer(4 * 32);
    Bufs {
        _keep: vec![a, b, c],
        mem: SmmuMemory { strtab, cmdq, evtq },
    }
}

fn fake() -> Fake {
    Fake {
        idr0: IDR0,
        ..Default::default()
    }
}

const STE: [u64; 8] = [0x1d, 1 << 44, 7, 0x1000, 0, 0, 0, 0];

#[test]
fn enable_sets_gbpa_abort_fills_every_stream_and_invalidates() {
    let b = bufs(16);
    let mut f = fake();
    // SAFETY: the buffers live until the end of the test.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 4) }.unwrap();
    assert_eq!(s.streams(), 16);
    s.enable(&STE).unwrap();
    assert!(!s.failed());
    drop(s);
    assert_eq!(f.regs[&regs::GBPA] as u32, regs::GBPA_ABORT);
    assert_eq!(
        f.regs[&regs::CR0] as u32,
        regs::CR0_SMMUEN | regs::CR0_CMDQEN | regs::CR0_EVTQEN
    );
    assert_eq!(f.regs[&regs::STRTAB_BASE_CFG], 4);
    assert_eq!(
        f.regs[&regs::STRTAB_BASE] & regs::STRTAB_ADDR_MASK,
        b.mem.strtab.pa
    );
    for sid in 0..16 {
        for (i, &w) in STE.iter().enumerate() {
            assert_eq!(b.mem.strtab.read(sid * 8 + i), w);
        }
    }
    assert_eq!(
        f.executed,
        [Command::CfgiAll, Command::TlbiNsnhAll, Command::Sync]
    );
    assert!(f.barriers > 0);
}

#[test]
fn stream_table_is_bounded_by_the_bus_range_and_the_buffer() {
    let b = bufs(16);
    let mut f = fake();
    // SAFETY: as above.
    let s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    assert_eq!(s.streams(), 4);
    let b = bufs(16);
    let mut f = fake();
    // SAFETY: as above.
    let s = unsafe { Smmu::new(&mut f, b.mem, 16) }.unwrap();
    assert_eq!(s.streams(), 16);
}

#[test]
fn refuses_an_smmu_without_stage_2_and_bad_buffers() {
    let b = bufs(16);
    let mut f = fake();
    f.idr0 = IDR0 & !1;
    assert_eq!(
        // SAFETY: as above.
        unsafe { Smmu::new(&mut f, b.mem, 4) }.err(),
        Some(Error::NoStage2)
    );
    let mut mem = bufs(16).mem;
    mem.cmdq.pa += 16;
    let mut f = fake();
    assert_eq!(
        // SAFETY: as above (the buffer is refused before use).
        unsafe { Smmu::new(&mut f, mem, 4) }.err(),
        Some(Error::BadBuffer)
    );
}

#[test]
fn commands_wrap_around_the_queue() {
    let b = bufs(4);
    let mut f = fake();
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    s.enable(&STE).unwrap();
    for i in 0..10u64 {
        s.submit(&[Command::TlbiS2Ipa {
            vmid: 3,
            ipa: i << 12,
        }])
        .unwrap();
        s.sync().unwrap();
    }
    drop(s);
    let tlbis: Vec<_> = f
        .executed
        .iter()
        .filter_map(|c| match c {
            Command::TlbiS2Ipa { vmid: 3, ipa } => Some(ipa >> 12),
            _ => None,
        })
        .collect();
    assert_eq!(tlbis, (0..10).collect::<Vec<_>>());
    // 4-entry queue: PROD wrapped several times.
    assert_eq!(f.raw.len(), 3 + 20);
}

#[test]
fn a_stuck_smmu_times_out_and_fails_closed() {
    let b = bufs(4);
    let mut f = fake();
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    s.enable(&STE).unwrap();
    s.regs.stuck = true;
    assert_eq!(s.sync(), Err(Error::Timeout("CMD_SYNC")));
    assert!(s.failed());
    assert_eq!(s.sync(), Err(Error::FailedClosed));
    assert_eq!(s.submit(&[Command::CfgiAll]), Err(Error::FailedClosed));
    drop(s);
    assert_eq!(f.regs[&regs::CR0], 0, "translation off");
    assert_ne!(
        f.regs[&regs::GBPA] as u32 & regs::GBPA_ABORT,
        0,
        "and aborting"
    );
}

#[test]
fn a_full_queue_that_never_drains_times_out() {
    let b = bufs(4);
    let mut f = fake();
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    s.enable(&STE).unwrap();
    s.regs.stuck = true;
    let c = [Command::TlbiNsnhAll; 5];
    assert_eq!(s.submit(&c), Err(Error::Timeout("a free command slot")));
    assert!(s.failed());
}

#[test]
fn gbpa_that_never_updates_fails_enable() {
    let b = bufs(4);
    let mut f = fake();
    f.gbpa_stuck = true;
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    assert_eq!(s.enable(&STE), Err(Error::Timeout("GBPA.UPDATE")));
    assert!(s.failed());
}

#[test]
fn command_errors_are_reported() {
    let b = bufs(4);
    let mut f = fake();
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    s.enable(&STE).unwrap();
    s.regs.error = Some(1);
    assert_eq!(s.sync(), Err(Error::CommandError(1)));
    assert!(s.failed());
}

#[test]
fn events_are_drained_and_faults_counted() {
    let b = bufs(4);
    let mut f = fake();
    // SAFETY: as above.
    let mut s = unsafe { Smmu::new(&mut f, b.mem, 2) }.unwrap();
    s.enable(&STE).unwrap();
    let mut evtq = b.mem.evtq;
    // The SMMU writes three records: two translation faults and a bad STE.
    let recs = [
        [0x0000_0008_0000_0010u64, 1 << 35, 0x4500_0000, 0],
        [0x0000_0008_0000_0004, 0, 0, 0],
        [0x0000_0008_0000_0013, 0, 0x4000_0000, 0],
    ];
    for (i, r) in recs.iter().enumerate() {
        for (j, &w) in r.iter().enumerate() {
            evtq.write(i * 4 + j, w);
        }
    }
    s.regs.regs.insert(regs::EVENTQ_PROD, 3);
    let mut seen = Vec::new();
    assert_eq!(s.drain_events(&mut |e| seen.push(*e)), 3);
    assert_eq!(s.faults(), 2);
    assert_eq!(seen[0].addr, 0x4500_0000);
    assert!(seen[0].read);
    assert_eq!(seen[1].name(), "C_BAD_STE");
    assert_eq!(s.drain_events(&mut |_| {}), 0);
    // A hostile PROD far outside the queue reads at most one queue.
    s.regs.regs.insert(regs::EVENTQ_PROD, 0xffff_ffff);
    assert!(s.drain_events(&mut |_| {}) <= 4);
    drop(s);
    assert_eq!(f.regs[&regs::EVENTQ_CONS] & 0x7, 0xffff_ffff & 0x7);
}
