//! `isolation` mode: a hostile host and hostile guests try to reach each
//! other's CPU state, and the hypervisor's resources (RULES.md S2 to S5,
//! ABI.md's SMCCC paragraph), on the real image.
//!
//! - **Registers that are switched** (PAC keys where the CPU has them,
//!   TPIDR_EL0/TPIDRRO_EL0/TPIDR_EL1, CONTEXTIDR_EL1, the MTE registers of an
//!   MTE VM): the host sets values of its own; a protected guest reads them
//!   (it must find its reset values, never the host's), writes distinctive
//!   values and reads them back; the host finds its own values unchanged;
//!   a second VM run next on the same CPU finds reset values, never the
//!   first VM's.
//! - **What is trapped** is FATAL for the guest, and hidden in the ID
//!   registers it reads: SVE, SME and TPIDR2_EL0, LORegions, the MTE
//!   registers of a VM without MTE. The host's own SVE and MTE state (ZCR,
//!   GCR) is unchanged afterwards.
//! - **The PMU**: the host's cycle counter, counting EL1, does not advance
//!   while a protected guest spins; it does for a normal VM (so the check
//!   can fail).
//! - **vCPU start** (S4): a protected VM's second vCPU, created with the
//!   host's entry point, answers WFI and runs nothing; the guest's own
//!   CPU_ON starts it at the guest's entry.
//! - **SMCCC**: every host call goes through [`arch::smccc_call`], which
//!   checks the registers the call must keep; here also SMCs the hypervisor
//!   answers or passes on, known and refused.
//! - **Bounded resources** (S5): the largest VM the machine allows (all the
//!   test host's free RAM donated), destroyed and reclaimed page by page,
//!   with the hypervisor answering after.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::{asm, global_asm};
use core::mem::offset_of;

use host_interface::{prot, vm_flags, ExitReason, HostCallId, RunPage, PAGE_SHIFT};
use scenario::Tally;

use crate::arch::{self, Conduit};
use crate::ram::RamPool;
use crate::vm::{self, call, call_ok, TestVm, EXTRA_CODE_IPA};
use crate::{println, test_guest};

/// HVC the guest routines report with: x1..x6 in the run page.
const REPORT: u64 = 0xC600_0F10;

global_asm!(
    r#"
.section .rodata.iso_guest, "a"
.balign 8
.global iso_guest_start
iso_guest_start:

// Each routine: x20 = the mailbox (VALUE at [x20, #24]); reports with
// `hvc` (x0 = 0xC6000F10, x1..x6); returns with `ret` (x30 is the test
// guest's, never changed here).

// PAC keys: report the ten keys (two reports), then, if VALUE != 0, write
// VALUE + i into key i and report them again.
.global iso_pac
iso_pac:
    mrs     x1, S3_0_C2_C1_0
    mrs     x2, S3_0_C2_C1_1
    mrs     x3, S3_0_C2_C1_2
    mrs     x4, S3_0_C2_C1_3
    mrs     x5, S3_0_C2_C2_0
    mrs     x6, S3_0_C2_C2_1
    movz    x0, #0x0f10
    movk    x0, #0xc600, lsl #16
    hvc     #0
    mrs     x1, S3_0_C2_C2_2
    mrs     x2, S3_0_C2_C2_3
    mrs     x3, S3_0_C2_C3_0
    mrs     x4, S3_0_C2_C3_1
    mov     x5, xzr
    mov     x6, xzr
    movz    x0, #0x0f10
    movk    x0, #0xc600, lsl #16
    hvc     #0
    ldr     x9, [x20, #24]
    cbz     x9, 1f
    msr     S3_0_C2_C1_0, x9
    add     x9, x9, #1
    msr     S3_0_C2_C1_1, x9
    add     x9, x9, #1
    msr     S3_0_C2_C1_2, x9
    add     x9, x9, #1
    msr     S3_0_C2_C1_3, x9
    add     x9, x9, #1
    msr     S3_0_C2_C2_0, x9
    add     x9, x9, #1
    msr     S3_0_C2_C2_1, x9
    add     x9, x9, #1
    msr     S3_0_C2_C2_2, x9
    add     x9, x9, #1
    msr     S3_0_C2_C2_3, x9
    add     x9, x9, #1
    msr     S3_0_C2_C3_0, x9
    add     x9, x9, #1
    msr     S3_0_C2_C3_1, x9
    isb
    str     xzr, [x20, #24]
    b       iso_pac
1:  ret

// Thread and context registers: report TPIDR_EL0, TPIDRRO_EL0,
// TPIDR_EL1, CONTEXTIDR_EL1; if VALUE != 0, set them to VALUE, VALUE+1,
// VALUE+2, (VALUE+3) & 0xffffffff and report again.
.global iso_tpidr
iso_tpidr:
    mrs     x1, tpidr_el0
    mrs     x2, tpidrro_el0
    mrs     x3, tpidr_el1
    mrs     x4, contextidr_el1
    mov     x5, xzr
    mov     x6, xzr
    movz    x0, #0x0f10
    movk    x0, #0xc600, lsl #16
    hvc     #0
    ldr     x9, [x20, #24]
    cbz     x9, 1f
    msr     tpidr_el0, x9
    add     x9, x9, #1
    msr     tpidrro_el0, x9
    add     x9, x9, #1
    msr     tpidr_el1, x9
    add     x9, x9, #1
    mov     w9, w9
    msr     contextidr_el1, x9
    str     xzr, [x20, #24]
    b       iso_tpidr
1:  ret

// The MTE registers (an MTE VM's): report GCR_EL1, RGSR_EL1, TFSR_EL1,
// TFSRE0_EL1; if VALUE != 0, set GCR = VALUE & 0xffff, RGSR's seed =
// VALUE & 0xffff, TFSR = TFSRE0 = 1, and report again. For a VM without
// MTE the first read traps: FATAL.
.global iso_mte
iso_mte:
    mrs     x1, S3_0_C1_C0_6
    mrs     x2, S3_0_C1_C0_5
    mrs     x3, S3_0_C5_C6_0
    mrs     x4, S3_0_C5_C6_1
    mov     x5, xzr
    mov     x6, xzr
    movz    x0, #0x0f10
    movk    x0, #0xc600, lsl #16
    hvc     #0
    ldr     x9, [x20, #24]
    cbz     x9, 1f
    and     x9, x9, #0xffff
    msr     S3_0_C1_C0_6, x9
    lsl     x10, x9, #8
    msr     S3_0_C1_C0_5, x10
    mov     x10, #1
    msr     S3_0_C5_C6_0, x10
    msr     S3_0_C5_C6_1, x10
    isb
    str     xzr, [x20, #24]
    b       iso_mte
1:  ret

// ID registers the guest sees: ID_AA64PFR0, PFR1, ZFR0, SMFR0, DFR0,
// MMFR1.
.global iso_id
iso_id:
    mrs     x1, id_aa64pfr0_el1
    mrs     x2, id_aa64pfr1_el1
    mrs     x3, S3_0_C0_C4_4
    mrs     x4, S3_0_C0_C4_5
    mrs     x5, id_aa64dfr0_el1
    mrs     x6, id_aa64mmfr1_el1
    movz    x0, #0x0f10
    movk    x0, #0xc600, lsl #16
    hvc     #0
    ret

// Trapped features, one instruction each (FATAL where the CPU has them).
.global iso_sve
iso_sve:
    mrs     x1, cpacr_el1       // ZEN, FPEN: SVE not trapped at EL1
    orr     x1, x1, #(3 << 16)
    orr     x1, x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    .inst   0x04bf5021          // rdvl x1, #1
    ret
.global iso_sme
iso_sme:
    mrs     x1, cpacr_el1       // SMEN, FPEN: SME not trapped at EL1
    orr     x1, x1, #(3 << 24)
    orr     x1, x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    .inst   0xd503477f          // smstart
    ret
.global iso_tpidr2
iso_tpidr2:
    mrs     x1, S3_3_C13_C0_5   // TPIDR2_EL0
    ret
.global iso_lor
iso_lor:
    mrs     x1, S3_0_C10_C4_7   // LORID_EL1
    ret

// Spin without trapping for VALUE counter ticks.
.global iso_spin
iso_spin:
    ldr     x10, [x20, #24]
    isb
    mrs     x11, cntvct_el0
1:  isb
    mrs     x12, cntvct_el0
    sub     x12, x12, x11
    cmp     x12, x10
    b.lo    1b
    ret

.balign 8
.global iso_guest_end
iso_guest_end:
"#
);

extern "C" {
    static iso_guest_start: u8;
    static iso_guest_end: u8;
    static iso_pac: u8;
    static iso_tpidr: u8;
    static iso_mte: u8;
    static iso_id: u8;
    static iso_sve: u8;
    static iso_sme: u8;
    static iso_tpidr2: u8;
    static iso_lor: u8;
    static iso_spin: u8;
}

/// The routines' code, for [`TestVm::create_with`].
fn code() -> &'static [u8] {
    // SAFETY: the two symbols delimit the assembled code above in read-only
    // data; the bytes are never written.
    unsafe {
        let start = &raw const iso_guest_start;
        let end = &raw const iso_guest_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The guest IPA of a routine.
fn ipa(routine: *const u8) -> u64 {
    EXTRA_CODE_IPA + (routine as u64 - (&raw const iso_guest_start) as u64)
}

/// Optional CPU state on this machine, from the host's ID registers.
#[derive(Clone, Copy)]
struct Cpu {
    pauth: bool,
    sve: bool,
    sme: bool,
    mte2: bool,
    /// ID_AA64PFR1_EL1.MTE as the host reads it: what an MTE VM sees.
    mte_field: u64,
    lor: bool,
}

fn id(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

impl Cpu {
    fn probe() -> Self {
        let (pfr0, pfr1, isar1, mmfr1): (u64, u64, u64, u64);
        // SAFETY: reading ID registers at EL1 has no side effects.
        unsafe {
            asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack));
            asm!("mrs {}, id_aa64pfr1_el1", out(reg) pfr1, options(nomem, nostack));
            asm!("mrs {}, id_aa64isar1_el1", out(reg) isar1, options(nomem, nostack));
            asm!("mrs {}, id_aa64mmfr1_el1", out(reg) mmfr1, options(nomem, nostack));
        }
        Cpu {
            pauth: id(isar1, 4) | id(isar1, 8) | id(isar1, 24) | id(isar1, 28) != 0,
            sve: id(pfr0, 32) != 0,
            sme: id(pfr1, 24) != 0,
            mte2: id(pfr1, 8) >= 2,
            mte_field: id(pfr1, 8),
            lor: id(mmfr1, 16) != 0,
        }
    }
}

macro_rules! sysregs {
    ($($get:ident, $set:ident, $reg:literal;)*) => {$(
        fn $get() -> u64 {
            let v: u64;
            // SAFETY: reading an EL1 register the caller knows exists.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
        #[allow(dead_code)] // not every register is written
        fn $set(v: u64) {
            // SAFETY: the test host uses none of these registers itself
            // (no pointer authentication, no thread pointers, no tags);
            // they hold values only this test reads.
            unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack, preserves_flags)) };
        }
    )*};
}

sysregs! {
    apia_lo, set_apia_lo, "S3_0_C2_C1_0";
    apia_hi, set_apia_hi, "S3_0_C2_C1_1";
    apib_lo, set_apib_lo, "S3_0_C2_C1_2";
    apib_hi, set_apib_hi, "S3_0_C2_C1_3";
    apda_lo, set_apda_lo, "S3_0_C2_C2_0";
    apda_hi, set_apda_hi, "S3_0_C2_C2_1";
    apdb_lo, set_apdb_lo, "S3_0_C2_C2_2";
    apdb_hi, set_apdb_hi, "S3_0_C2_C2_3";
    apga_lo, set_apga_lo, "S3_0_C2_C3_0";
    apga_hi, set_apga_hi, "S3_0_C2_C3_1";
    tpidr0, set_tpidr0, "tpidr_el0";
    tpidrro0, set_tpidrro0, "tpidrro_el0";
    contextidr, set_contextidr, "contextidr_el1";
    gcr, set_gcr, "S3_0_C1_C0_6";
    zcr_raw, set_zcr_raw, "S3_0_C1_C2_0";
    cpacr, set_cpacr, "cpacr_el1";
    pmccntr, set_pmccntr, "pmccntr_el0";
    pmccfiltr, set_pmccfiltr, "pmccfiltr_el0";
    pmcntenset, set_pmcntenset, "pmcntenset_el0";
    pmcr, set_pmcr, "pmcr_el0";
}

/// The host's ZCR_EL1 (SVE enabled at EL1 for the read: CPACR_EL1.ZEN).
fn zcr() -> u64 {
    let c = cpacr();
    set_cpacr(c | (3 << 16));
    let v = zcr_raw();
    set_cpacr(c);
    v
}

/// Set the host's ZCR_EL1.
fn set_zcr(v: u64) {
    let c = cpacr();
    set_cpacr(c | (3 << 16));
    set_zcr_raw(v);
    set_cpacr(c);
}

fn pac_keys() -> [u64; 10] {
    [
        apia_lo(),
        apia_hi(),
        apib_lo(),
        apib_hi(),
        apda_lo(),
        apda_hi(),
        apdb_lo(),
        apdb_hi(),
        apga_lo(),
        apga_hi(),
    ]
}

fn set_pac_keys(k: [u64; 10]) {
    let setters = [
        set_apia_lo,
        set_apia_hi,
        set_apib_lo,
        set_apib_hi,
        set_apda_lo,
        set_apda_hi,
        set_apdb_lo,
        set_apdb_hi,
        set_apga_lo,
        set_apga_hi,
    ];
    for (set, v) in setters.iter().zip(k) {
        set(v);
    }
}

/// Run the guest's routine at `routine` with VALUE `value`: the reports it
/// made (x1..x6 each), and how it ended (DONE, or another exit reason).
fn exec(
    vm: &mut TestVm,
    routine: *const u8,
    value: u64,
) -> Result<(Vec<[u64; 6]>, ExitReason), String> {
    vm.post(test_guest::op::EXEC, ipa(routine), value)?;
    let mut reports = Vec::new();
    loop {
        let r = vm.run_through();
        if r[0] != 0 || r[1] != 0 {
            return Err(format!("VCPU_RUN answered {r:x?}"));
        }
        let reason = ExitReason::from_u64(r[2]).ok_or_else(|| format!("exit {r:x?}"))?;
        if reason != ExitReason::Hvc {
            return Ok((reports, reason));
        }
        match vm.hvc_arg(0) {
            REPORT => {
                let mut x = [0u64; 6];
                for (k, v) in x.iter_mut().enumerate() {
                    *v = vm.hvc_arg(k + 1);
                }
                reports.push(x);
            }
            test_guest::TG_DONE => return Ok((reports, ExitReason::Hvc)),
            other => return Err(format!("unexpected guest HVC {other:#x}")),
        }
    }
}

/// One named check, counted in `t`.
fn check(t: &mut Tally, name: &str, r: Result<(), String>) {
    match r {
        Ok(()) => {
            t.passed += 1;
        }
        Err(e) => {
            t.failed += 1;
            println!("isolation: FAILED {name}: {e}");
        }
    }
}

fn expect<T: PartialEq + core::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got:x?}, want {want:x?}"))
    }
}

/// The whole mode: the tally of its checks.
pub fn run(pool: &mut RamPool) -> Tally {
    let cpu = Cpu::probe();
    println!(
        "isolation: PAC {}, SVE {}, SME {}, MTE2 {}, LOR {}",
        cpu.pauth, cpu.sve, cpu.sme, cpu.mte2, cpu.lor
    );
    let mut t = Tally::default();
    check(&mut t, "SMCs keep x4..x30", smcs());
    check(&mut t, "PAC keys", pac(pool, cpu));
    check(&mut t, "thread and context registers", tpidr(pool));
    if cpu.mte2 {
        check(&mut t, "MTE registers of an MTE VM", mte(pool));
        check(&mut t, "tags scrubbed by RECLAIM", tags(pool));
    }
    check(&mut t, "ID registers", id_registers(pool, cpu));
    check(&mut t, "trapped features", trapped(pool, cpu));
    check(&mut t, "the host's PMU", pmu(pool));
    check(&mut t, "protected vCPU start", vcpu_start(pool));
    check(&mut t, "largest VM", largest_vm(pool));
    t
}

/// SMCs the hypervisor answers or passes on, and refused ones: x0..x3 at
/// most change (x0 only for a refused ID); [`arch::smccc_call`] panics
/// otherwise.
fn smcs() -> Result<(), String> {
    let smc = |regs: [u64; 7]| arch::smccc_call(Conduit::Smc, regs);
    expect(
        "PSCI_VERSION",
        smc([0x8400_0000, 0, 0, 0, 0, 0, 0])[0] >> 16,
        1,
    )?;
    let v = smc([0x8000_0000, 7, 7, 7, 7, 7, 7])[0];
    if v != u64::MAX && v >> 16 != 1 {
        return Err(format!("SMCCC_VERSION answered {v:#x}"));
    }
    smc([0x8000_0001, 0x8000_0000, 1, 2, 3, 4, 5]);
    expect(
        "PSCI_FEATURES",
        smc([0x8400_000a, 0x8400_0000, 9, 9, 9, 9, 9])[0],
        0,
    )?;
    expect(
        "AFFINITY_INFO of CPU 0",
        smc([0xC400_0004, 0, 0, 0, 4, 5, 6])[0],
        0,
    )?;
    for id in [
        0xC200_0000,
        0x8200_0010,
        0xC400_00FF,
        0x8600_FF01,
        0xC600_0100,
        0,
    ] {
        let r = smc([id, 1, 2, 3, 4, 5, 6]);
        expect(&format!("refused SMC {id:#x}"), r, [u64::MAX, 1, 2, 3, 4])?;
    }
    Ok(())
}

/// The host's keys survive a protected guest that sets its own; the guest
/// never sees the host's; a second VM sees zeros, never the first's.
fn pac(pool: &mut RamPool, cpu: Cpu) -> Result<(), String> {
    if !cpu.pauth {
        println!("isolation: no pointer authentication on this CPU: PAC keys not tested");
        return Ok(());
    }
    let saved = pac_keys();
    let host: [u64; 10] = core::array::from_fn(|i| 0x4057_0000_0000_0000 | i as u64);
    set_pac_keys(host);
    let r = (|| {
        let mut a = TestVm::create_with(pool, vm_flags::PROTECTED, code())?;
        a.boot()?;
        let (rep, end) = exec(&mut a, &raw const iso_pac, 0x9a57_0000_0000_0000)?;
        expect("protected guest's routine", end, ExitReason::Hvc)?;
        expect("reports", rep.len(), 4)?;
        let seen: Vec<u64> = rep[0].iter().chain(&rep[1][..4]).copied().collect();
        expect("keys a new guest sees", seen, alloc::vec![0; 10])?;
        let set: Vec<u64> = rep[2].iter().chain(&rep[3][..4]).copied().collect();
        let want: Vec<u64> = (0..10).map(|i| 0x9a57_0000_0000_0000 + i).collect();
        expect("keys the guest set", set, want)?;
        expect("host keys after the guest", pac_keys(), host)?;
        let mut b = TestVm::create_with(pool, 0, code())?;
        b.boot()?;
        let (rep, _) = exec(&mut b, &raw const iso_pac, 0)?;
        let seen: Vec<u64> = rep
            .iter()
            .flat_map(|r| r.iter())
            .take(10)
            .copied()
            .collect();
        expect("keys the next VM sees", seen, alloc::vec![0; 10])?;
        // The first guest's keys were kept for it.
        let (rep, _) = exec(&mut a, &raw const iso_pac, 0)?;
        let seen: Vec<u64> = rep[0].iter().chain(&rep[1][..4]).copied().collect();
        let want: Vec<u64> = (0..10).map(|i| 0x9a57_0000_0000_0000 + i).collect();
        expect("the protected guest's keys when it runs again", seen, want)?;
        expect("host keys at the end", pac_keys(), host)?;
        a.teardown()?;
        b.teardown()
    })();
    set_pac_keys(saved);
    r
}

/// TPIDR_EL0, TPIDRRO_EL0, TPIDR_EL1 (the guest's) and CONTEXTIDR_EL1.
fn tpidr(pool: &mut RamPool) -> Result<(), String> {
    let saved = (tpidr0(), tpidrro0(), contextidr());
    set_tpidr0(0x4057_0001);
    set_tpidrro0(0x4057_0002);
    set_contextidr(0x4057_0003);
    let r = (|| {
        let mut a = TestVm::create_with(pool, vm_flags::PROTECTED, code())?;
        a.boot()?;
        let (rep, _) = exec(&mut a, &raw const iso_tpidr, 0x7e57_0000)?;
        expect("reports", rep.len(), 2)?;
        expect(
            "what a new guest sees",
            rep[0][..4].to_vec(),
            alloc::vec![0, 0, 0, 0],
        )?;
        expect(
            "what the guest set",
            rep[1][..4].to_vec(),
            alloc::vec![0x7e57_0000, 0x7e57_0001, 0x7e57_0002, 0x7e57_0003],
        )?;
        expect(
            "the host's after the guest",
            (tpidr0(), tpidrro0(), contextidr()),
            (0x4057_0001, 0x4057_0002, 0x4057_0003),
        )?;
        let mut b = TestVm::create_with(pool, 0, code())?;
        b.boot()?;
        let (rep, _) = exec(&mut b, &raw const iso_tpidr, 0)?;
        expect(
            "what the next VM sees",
            rep[0][..4].to_vec(),
            alloc::vec![0, 0, 0, 0],
        )?;
        a.teardown()?;
        b.teardown()
    })();
    set_tpidr0(saved.0);
    set_tpidrro0(saved.1);
    set_contextidr(saved.2);
    r
}

/// The MTE registers: an MTE VM's own, the host's kept, the next MTE VM
/// sees reset values; a VM without MTE traps on them (FATAL).
fn mte(pool: &mut RamPool) -> Result<(), String> {
    let saved = gcr();
    set_gcr(0x1_5a5a);
    let r = (|| {
        let flags = vm_flags::PROTECTED | vm_flags::MTE;
        let mut a = TestVm::create_with(pool, flags, code())?;
        a.boot()?;
        let (rep, end) = exec(&mut a, &raw const iso_mte, 0xbeef)?;
        expect("MTE VM's routine", end, ExitReason::Hvc)?;
        expect("reports", rep.len(), 2)?;
        expect("GCR a new guest sees", rep[0][0], 0)?;
        expect("GCR the guest set", rep[1][0], 0xbeef)?;
        expect("TFSR the guest set", rep[1][2] & 3, 1)?;
        expect("the host's GCR after the guest", gcr(), 0x1_5a5a)?;
        let mut b = TestVm::create_with(pool, vm_flags::MTE, code())?;
        b.boot()?;
        let (rep, _) = exec(&mut b, &raw const iso_mte, 0)?;
        expect(
            "what the next MTE VM sees",
            rep[0][..4].to_vec(),
            alloc::vec![0, 0, 0, 0],
        )?;
        let mut c = TestVm::create_with(pool, vm_flags::PROTECTED, code())?;
        c.boot()?;
        let (rep, end) = exec(&mut c, &raw const iso_mte, 0)?;
        expect("a VM without MTE reading GCR_EL1", end, ExitReason::Fatal)?;
        expect("reports", rep.len(), 0)?;
        a.teardown()?;
        b.teardown()?;
        c.teardown()
    })();
    set_gcr(saved);
    r
}

/// A page with allocation tags set, given to an MTE VM, comes back from
/// RECLAIM with every tag 0, like its data (RULES.md S3).
fn tags(pool: &mut RamPool) -> Result<(), String> {
    use HostCallId as C;
    let page = vm::take(pool, 1)?;
    let pa = page << PAGE_SHIFT;
    for g in 0..256 {
        arch::store_tag(pa + 16 * g, (g % 15) + 1);
    }
    expect("a tag the host set", arch::load_tag(pa + 16 * 7), 8)?;
    let v = TestVm::create_with(pool, vm_flags::PROTECTED | vm_flags::MTE, code())?;
    call_ok(C::GuestDonate, &[v.handle, page, 0x8_0000, 1, prot::MASK])?;
    v.teardown()?;
    call_ok(C::Reclaim, &[page, 1])?;
    let left = (0..256)
        .filter(|g| arch::load_tag(pa + 16 * g) != 0)
        .count();
    expect("granules still tagged after RECLAIM", left, 0)
}

/// What guests read in the ID registers: no SVE, SME, LOR, PMU; MTE only
/// with the flag.
fn id_registers(pool: &mut RamPool, cpu: Cpu) -> Result<(), String> {
    for flags in [vm_flags::PROTECTED, 0, vm_flags::MTE] {
        if flags & vm_flags::MTE != 0 && !cpu.mte2 {
            continue;
        }
        let mut v = TestVm::create_with(pool, flags, code())?;
        v.boot()?;
        let (rep, end) = exec(&mut v, &raw const iso_id, 0)?;
        expect("routine", end, ExitReason::Hvc)?;
        let [pfr0, pfr1, zfr0, smfr0, dfr0, mmfr1] = rep.first().copied().ok_or("no report")?;
        let what = format!("VM flags {flags}");
        expect(&format!("{what}: SVE"), id(pfr0, 32), 0)?;
        expect(&format!("{what}: SME"), id(pfr1, 24), 0)?;
        expect(&format!("{what}: ZFR0, SMFR0"), (zfr0, smfr0), (0, 0))?;
        expect(&format!("{what}: PMUVer"), id(dfr0, 8), 0)?;
        expect(&format!("{what}: LO"), id(mmfr1, 16), 0)?;
        let mte = if flags & vm_flags::MTE != 0 {
            cpu.mte_field
        } else {
            0
        };
        expect(&format!("{what}: MTE"), id(pfr1, 8), mte)?;
        v.teardown()?;
    }
    Ok(())
}

/// SVE, SME, TPIDR2_EL0 and LORegions end a guest (FATAL) where the CPU
/// has them; the host's SVE vector length is untouched.
fn trapped(pool: &mut RamPool, cpu: Cpu) -> Result<(), String> {
    // A vector length of the host's own, 256 bits (LEN 1), not the reset.
    let zcr_saved = if cpu.sve { zcr() } else { 0 };
    if cpu.sve {
        set_zcr(1);
    }
    let r = trapped_cases(pool, cpu);
    if cpu.sve {
        let now = zcr();
        set_zcr(zcr_saved);
        r?;
        return expect("the host's ZCR_EL1 after the guests", now & 0xf, 1);
    }
    r
}

fn trapped_cases(pool: &mut RamPool, cpu: Cpu) -> Result<(), String> {
    let cases: [(&str, *const u8, bool); 4] = [
        ("SVE", &raw const iso_sve, cpu.sve),
        ("SME", &raw const iso_sme, cpu.sme),
        ("TPIDR2_EL0", &raw const iso_tpidr2, cpu.sme),
        ("LORID_EL1", &raw const iso_lor, cpu.lor),
    ];
    for (name, routine, present) in cases {
        if !present {
            continue;
        }
        for flags in [vm_flags::PROTECTED, 0] {
            let mut v = TestVm::create_with(pool, flags, code())?;
            v.boot()?;
            let (_, end) = exec(&mut v, routine, 0)?;
            expect(
                &format!("{name} in a VM with flags {flags}"),
                end,
                ExitReason::Fatal,
            )?;
            v.teardown()?;
        }
    }
    Ok(())
}

/// The host's cycle counter, counting EL0 and EL1 (not EL2), stands still
/// while a protected guest spins, and counts while a normal one does.
fn pmu(pool: &mut RamPool) -> Result<(), String> {
    let hz = arch::cntfrq_el0().max(1);
    let spin_ticks = hz / 50; // 20 ms, two time slices
    let saved = (pmcr(), pmccfiltr(), pmcntenset());
    // PMCR.E; PMCCFILTR 0: count EL0 and EL1, not EL2 (NSH clear).
    set_pmcr(saved.0 | 1);
    set_pmccfiltr(0);
    set_pmcntenset(1 << 31);
    let r = (|| {
        let mut counts = [0u64; 2];
        for (k, flags) in [vm_flags::PROTECTED, 0].into_iter().enumerate() {
            let mut v = TestVm::create_with(pool, flags, code())?;
            v.boot()?;
            set_pmccntr(0);
            let (_, end) = exec(&mut v, &raw const iso_spin, spin_ticks)?;
            counts[k] = pmccntr();
            expect("spinning routine", end, ExitReason::Hvc)?;
            v.teardown()?;
        }
        println!(
            "isolation: cycle counter over a {} ms spin: protected guest {}, normal guest {}",
            spin_ticks * 1000 / hz,
            counts[0],
            counts[1]
        );
        if counts[1] <= 4 * counts[0] {
            return Err(format!(
                "the protected guest's spin counted {} cycles, the normal guest's {}: not hidden",
                counts[0], counts[1]
            ));
        }
        Ok(())
    })();
    set_pmcntenset(saved.2);
    set_pmccfiltr(saved.1);
    set_pmcr(saved.0);
    r
}

/// A protected VM's second vCPU answers WFI and runs nothing until the
/// guest starts it; the host's entry point in its run page is never used.
fn vcpu_start(pool: &mut RamPool) -> Result<(), String> {
    use HostCallId as C;
    let a = TestVm::create_with(pool, vm_flags::PROTECTED, code())?;
    a.boot()?;
    let run = vm::take(pool, 1)?;
    crate::access::fill(run << PAGE_SHIFT, 1 << PAGE_SHIFT, 0).map_err(|_| "run page")?;
    call_ok(C::ShareHyp, &[run, 1])?;
    let vcpu = call_ok(C::VcpuCreate, &[a.handle, run])?[2];
    // The host points it at the guest's own entry, with x0 at the mailbox:
    // what an attacker would do to replay the guest's boot.
    let field = |off: usize| (run << PAGE_SHIFT) + off as u64;
    crate::access::write(field(offset_of!(RunPage, entry)), test_guest::GUEST_BASE)
        .and_then(|()| {
            crate::access::write(
                field(offset_of!(RunPage, x0)),
                test_guest::GUEST_BASE + test_guest::MAILBOX_OFFSET,
            )
        })
        .map_err(|_| "run page")?;
    for _ in 0..3 {
        let r = call(C::VcpuRun, &[a.handle, vcpu]);
        expect(
            "VCPU_RUN of the never-started secondary",
            r,
            [0, 0, ExitReason::Wfi as u64, 0, 0],
        )?;
    }
    // Its run page was never written by a guest exit: no HVC arguments.
    let args = crate::access::read(field(offset_of!(RunPage, hvc_args))).unwrap_or(u64::MAX);
    expect("the secondary's HVC arguments", args, 0)?;
    // The run page stays pinned while the vCPU exists; the teardown
    // destroys the VM and unpins it.
    expect(
        "UNSHARE_HYP of its run page",
        call(C::UnshareHyp, &[run, 1])[1],
        (-16i64) as u64,
    )?;
    a.teardown()?;
    call_ok(C::UnshareHyp, &[run, 1])?;
    Ok(())
}

/// Every free page the test host has, donated to one protected VM in
/// 512-page calls, then VM_DESTROY and RECLAIM of every page: no EL2 heap
/// grows with the VM (S5), and the hypervisor still answers.
fn largest_vm(pool: &mut RamPool) -> Result<(), String> {
    use HostCallId as C;
    let meta = vm::take(pool, 8)?;
    let h = call_ok(C::VmCreate, &[vm_flags::PROTECTED, meta, 8])?[2];
    // Table pages: one last-level table per 512 pages and a few above.
    let want = pool.pages().saturating_sub(1024);
    let tables = want / 512 + 16;
    let topup = vm::take(pool, tables)?;
    for k in (0..tables).step_by(512) {
        call_ok(C::VmTopup, &[h, topup + k, (tables - k).min(512)])?;
    }
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    let mut gfn = 0x100_000u64;
    let mut donated = 0u64;
    'all: while pool.pages() > 0 {
        // The largest run the pool still has, up to 512 pages.
        let mut n = pool.pages().min(512);
        let pfn = loop {
            if let Some(p) = pool.take_low(n, 1) {
                break p;
            }
            if n == 1 {
                break 'all;
            }
            n /= 2;
        };
        let r = call(C::GuestDonate, &[h, pfn, gfn, n, prot::MASK]);
        if r != [0; 5] {
            return Err(format!(
                "GUEST_DONATE of {n} pages at {pfn:#x} answered {r:x?} after {donated} pages"
            ));
        }
        chunks.push((pfn, n));
        gfn += n;
        donated += n;
    }
    println!(
        "isolation: largest VM: {donated} pages donated in {} calls",
        chunks.len()
    );
    if donated < 150_000 {
        return Err(format!("only {donated} pages donated"));
    }
    call_ok(C::VmDestroy, &[h])?;
    call_ok(C::Reclaim, &[meta, 8])?;
    for k in (0..tables).step_by(512) {
        call_ok(C::Reclaim, &[topup + k, (tables - k).min(512)])?;
    }
    for &(pfn, n) in &chunks {
        call_ok(C::Reclaim, &[pfn, n])?;
    }
    for &(pfn, n) in chunks.iter().step_by(37) {
        for p in [pfn, pfn + n - 1] {
            let q = call_ok(C::PageQuery, &[p])?;
            expect(
                &format!("PAGE_QUERY of {p:#x} after RECLAIM"),
                [q[2], q[3], q[4]],
                [0, 0, 0],
            )?;
            expect(
                &format!("pfn {p:#x} after RECLAIM"),
                crate::access::read(p << PAGE_SHIFT).ok(),
                Some(0),
            )?;
        }
    }
    let v = call_ok(C::HypVersion, &[])?;
    expect("HYP_VERSION after", v[2], 0x1_0000)?;
    Ok(())
}
