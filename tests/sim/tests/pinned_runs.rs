//! More behaviour pinned down against mutants cargo-mutants showed
//! surviving (issue 13), for the run loop in `hyp/src/vcpu.rs`: what
//! `vcpu_run_begin` hands the world switch, and the exits and answers of
//! guest traps.

use core::mem::offset_of;

use host_interface::{fault_flags, ExitReason, HostCallId, RunPage, PAGE_SIZE};
use hyp::{GuestView, Trap, VcpuContext, VcpuExecutor};
use pagetables::PhysMem;
use scenario::{Machine, PageKind};
use sim::SimMachine;

const PAGE: u64 = PAGE_SIZE;

fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

/// A normal (or protected) VM with `n` vCPUs and its guest image shared
/// (donated) at the test guest's base; its handle and run pages.
fn vm(m: &mut SimMachine, protected: bool, n: u64) -> (u64, Vec<u64>) {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let h = ok(m.call(HostCallId::VmCreate, &[u64::from(protected), pool, 16]))[2];
    let img = m.alloc(PageKind::Ram, 1).unwrap();
    let give = if protected {
        HostCallId::GuestDonate
    } else {
        HostCallId::GuestShare
    };
    ok(m.call(give, &[h, img, sim::GUEST_BASE_IPA / PAGE, 1, 7]));
    let mut runs = Vec::new();
    for _ in 0..n {
        let run = m.alloc(PageKind::Ram, 1).unwrap();
        ok(m.call(HostCallId::ShareHyp, &[run, 1]));
        ok(m.call(HostCallId::VcpuCreate, &[h, run]));
        hyp::phys::write_u64(m.phys(), run * PAGE, sim::GUEST_BASE_IPA);
        runs.push(run);
    }
    (h, runs)
}

/// VTTBR_EL2 is the VM's stage-2 root with its VMID in bits 63:48.
#[test]
fn a_run_gets_the_vms_root_and_vmid() {
    let mut m = SimMachine::new("max").unwrap();
    let (a, _) = vm(&mut m, false, 1);
    let (b, _) = vm(&mut m, true, 1);
    for h in [a, b] {
        let (root, vmid) = {
            let (_, v) = m.hyp().vms().find(|(_, v)| v.handle() == h).unwrap();
            (v.stage2().root_pa(), v.stage2().vmid())
        };
        assert_ne!(vmid, 0);
        assert_ne!(root, 0);
        let run = m.hyp_mut().vcpu_run_begin(h, 0).unwrap().unwrap();
        assert_eq!(run.vttbr, root | (u64::from(vmid) << 48), "VM {h}");
    }
}

/// Plays traps in order, each after setting x0..x6 (then IRQ); records
/// the pc and x0..x3 it was entered with each time.
#[derive(Default)]
struct Script {
    traps: Vec<(Trap, [u64; 7])>,
    next: usize,
    seen: Vec<(u64, [u64; 4])>,
}

impl<P: PhysMem> VcpuExecutor<P> for Script {
    fn enter(&mut self, _: u64, _: u64, _: GuestView<'_, P>, ctx: &mut VcpuContext) -> Trap {
        let mut x = [0; 4];
        x.copy_from_slice(&ctx.x[..4]);
        self.seen.push((ctx.pc, x));
        let Some(&(trap, regs)) = self.traps.get(self.next) else {
            return Trap::Irq;
        };
        self.next += 1;
        ctx.x[..7].copy_from_slice(&regs);
        trap
    }
}

fn script(traps: &[(Trap, [u64; 7])]) -> Script {
    Script {
        traps: traps.to_vec(),
        ..Script::default()
    }
}

/// VCPU_RUN of vCPU `vcpu` with `exec`: the exit reason.
fn run(m: &mut SimMachine, h: u64, vcpu: u64, exec: &mut Script) -> ExitReason {
    let regs = [u64::from(HostCallId::VcpuRun.id()), h, vcpu, 0, 0, 0, 0];
    let r = m.hyp_mut().host_call(&regs, exec).regs;
    ExitReason::from_u64(ok(r)[2]).unwrap()
}

/// The run page's fault words: ipa, flags, size, esr, data.
fn fault(m: &SimMachine, run: u64) -> [u64; 5] {
    let w = |off: usize| hyp::phys::read_u64(m.phys(), run * PAGE + off as u64);
    [
        w(offset_of!(RunPage, fault_ipa)),
        w(offset_of!(RunPage, fault_flags)),
        w(offset_of!(RunPage, fault_size)),
        w(offset_of!(RunPage, fault_esr)),
        w(offset_of!(RunPage, fault_data)),
    ]
}

/// A trap and the registers x0..x6 it is taken with.
type Step = (Trap, [u64; 7]);

const ESR: u64 = 0x9300_0046;
const X3: u64 = 0x1122_3344_5566_7788;

fn data_abort(ipa: u64, write: bool, size: u8) -> (Trap, [u64; 7]) {
    let trap = Trap::DataAbort {
        ipa,
        write,
        size,
        reg: 3,
        esr: ESR,
    };
    (trap, [0, 0, 0, X3, 0, 0, 0])
}

/// A guest with its image at the base (RWX) and one more page at
/// `base + 1` mapped read-only (normal VMs) or RW (protected).
fn guest(protected: bool) -> (SimMachine, u64, u64) {
    let mut m = SimMachine::new("max").unwrap();
    let (h, runs) = vm(&mut m, protected, 2);
    let page = m.alloc(PageKind::Ram, 1).unwrap();
    let (id, prot) = if protected {
        (HostCallId::GuestDonate, 3)
    } else {
        (HostCallId::GuestShare, 1)
    };
    ok(m.call(id, &[h, page, sim::GUEST_BASE_IPA / PAGE + 1, 1, prot]));
    (m, h, runs[0])
}

/// Data aborts: allowed accesses go back into the guest; the others exit
/// MEM_FAULT with the exact words, syndrome and data only for a normal
/// VM, the data masked to the access size.
#[test]
fn data_aborts_exit_with_exact_fault_words() {
    let base = sim::GUEST_BASE_IPA;
    let unmapped = 0x8000_0123;
    let cases: [(bool, Step, [u64; 5]); 7] = [
        // Normal VM, write of 2 bytes to nothing.
        (
            false,
            data_abort(unmapped, true, 2),
            [
                unmapped,
                fault_flags::WRITE | fault_flags::SYNDROME_VALID,
                2,
                ESR,
                0x7788,
            ],
        ),
        (
            false,
            data_abort(unmapped, true, 4),
            [
                unmapped,
                fault_flags::WRITE | fault_flags::SYNDROME_VALID,
                4,
                ESR,
                0x5566_7788,
            ],
        ),
        (
            false,
            data_abort(unmapped, true, 1),
            [
                unmapped,
                fault_flags::WRITE | fault_flags::SYNDROME_VALID,
                1,
                ESR,
                0x88,
            ],
        ),
        (
            false,
            data_abort(unmapped, true, 8),
            [
                unmapped,
                fault_flags::WRITE | fault_flags::SYNDROME_VALID,
                8,
                ESR,
                X3,
            ],
        ),
        // A read: syndrome, no data.
        (
            false,
            data_abort(unmapped, false, 8),
            [unmapped, fault_flags::SYNDROME_VALID, 8, ESR, 0],
        ),
        // A write to the read-only page.
        (
            false,
            data_abort(base + PAGE + 8, true, 8),
            [
                base + PAGE + 8,
                fault_flags::WRITE | fault_flags::SYNDROME_VALID,
                8,
                ESR,
                X3,
            ],
        ),
        // A protected VM's write: no syndrome, no data.
        (
            true,
            data_abort(unmapped, true, 8),
            [unmapped, fault_flags::WRITE, 8, 0, 0],
        ),
    ];
    for (protected, trap, want) in cases {
        let (mut m, h, run_pfn) = guest(protected);
        let mut s = script(&[trap]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::MemFault, "{trap:x?}");
        assert_eq!(fault(&m, run_pfn), want, "{trap:x?}");
    }
    // Beyond the IPA space: a fault too, at that address.
    let far = 1u64 << host_interface::GUEST_IPA_BITS;
    let (mut m, h, run_pfn) = guest(false);
    let mut s = script(&[data_abort(far, false, 4)]);
    assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::MemFault);
    assert_eq!(
        fault(&m, run_pfn)[..3],
        [far, fault_flags::SYNDROME_VALID, 4]
    );
    // Reads of both pages and a write of the RWX one go back into the
    // guest: the run ends only at the IRQ after them.
    for protected in [false, true] {
        let (mut m, h, _) = guest(protected);
        let mut s = script(&[
            data_abort(base, false, 8),
            data_abort(base + PAGE, false, 8),
            data_abort(base + 16, true, 8),
        ]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
        assert_eq!(s.seen.len(), 4, "protected {protected}");
    }
    // A protected VM's RW page takes writes.
    let (mut m, h, _) = guest(true);
    let mut s = script(&[data_abort(base + PAGE, true, 8)]);
    assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
}

/// Instruction aborts: executable pages go back into the guest; others
/// exit MEM_FAULT, size 4, EXEC, with the syndrome for a normal VM only.
#[test]
fn instruction_aborts_exit_with_exact_fault_words() {
    let base = sim::GUEST_BASE_IPA;
    for protected in [false, true] {
        let (mut m, h, run_pfn) = guest(protected);
        let mut s = script(&[(
            Trap::InstAbort {
                ipa: base + 4,
                esr: ESR,
            },
            [0; 7],
        )]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
        let ipa = base + PAGE + 4;
        let mut s = script(&[(Trap::InstAbort { ipa, esr: ESR }, [0; 7])]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::MemFault);
        let want = if protected {
            [ipa, fault_flags::EXEC, 4, 0, 0]
        } else {
            [
                ipa,
                fault_flags::EXEC | fault_flags::SYNDROME_VALID,
                4,
                ESR,
                0,
            ]
        };
        assert_eq!(fault(&m, run_pfn), want, "protected {protected}");
        let far = 1u64 << host_interface::GUEST_IPA_BITS;
        let mut s = script(&[(Trap::InstAbort { ipa: far, esr: ESR }, [0; 7])]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::MemFault);
        assert_eq!(fault(&m, run_pfn)[0], far);
    }
}

/// WFI exits with the pc past it; RESUME and SGIs go on; IRQ exits
/// INTERRUPTED; FATAL kills the VM, whose vCPUs then exit FATAL unrun.
#[test]
fn wfi_resume_irq_and_fatal() {
    let base = sim::GUEST_BASE_IPA;
    let (mut m, h, _) = guest(false);
    let mut s = script(&[(Trap::Resume, [0; 7]), (Trap::Wfi, [0; 7])]);
    assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Wfi);
    assert_eq!(s.seen.len(), 2);
    assert_eq!(s.seen[0].0, base);
    let mut s = script(&[]);
    assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
    assert_eq!(s.seen[0].0, base + 4, "WFI returns past itself");
    let mut s = script(&[(Trap::Fatal, [0; 7])]);
    assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Fatal);
    for vcpu in [0, 1] {
        let mut s = script(&[]);
        assert_eq!(run(&mut m, h, vcpu, &mut s), ExitReason::Fatal);
        assert!(s.seen.is_empty(), "a dead VM's vCPU {vcpu} ran");
    }
}

const CPU_ON: u64 = 0xC400_0003;

/// PSCI CPU_ON from a guest: exact answers, and the target starts at the
/// entry with the context in x0, once.
#[test]
fn guest_cpu_on_answers_and_starts_the_target() {
    let base = sim::GUEST_BASE_IPA;
    let hvc = |x1: u64, x2: u64, x3: u64| (Trap::Hvc, [CPU_ON, x1, x2, x3, 0, 0, 0]);
    let answer = |m: &mut SimMachine, h: u64, t: (Trap, [u64; 7])| {
        let mut s = script(&[t]);
        run(m, h, 0, &mut s);
        if s.seen.len() < 2 {
            // The run ended at the call (CPU_ON kicks its target): the
            // answer is there at the next entry.
            let mut next = script(&[]);
            run(m, h, 0, &mut next);
            s.seen.push(next.seen[0]);
        }
        s.seen[1].1[0] as i64
    };
    for protected in [false, true] {
        let (mut m, h, _) = guest(protected);
        // Start vCPU 0 (it runs first).
        let mut s = script(&[]);
        run(&mut m, h, 0, &mut s);
        // No such vCPU: 2 is one past the last, 0x100 has Aff1 set.
        assert_eq!(answer(&mut m, h, hvc(2, base, 0)), -2, "INVALID_PARAMETERS");
        assert_eq!(answer(&mut m, h, hvc(0x100, base, 0)), -2);
        assert_eq!(answer(&mut m, h, hvc(0x101, base, 0)), -2);
        // Itself: already on.
        assert_eq!(answer(&mut m, h, hvc(0, base, 0)), -4, "ALREADY_ON");
        // A protected VM's entry must be its own memory.
        if protected {
            assert_eq!(answer(&mut m, h, hvc(1, 0x8000_0000, 0)), -2);
        }
        assert_eq!(answer(&mut m, h, hvc(1, base + 8, 0x77)), 0, "SUCCESS");
        let mut s = script(&[]);
        assert_eq!(run(&mut m, h, 1, &mut s), ExitReason::Interrupted);
        assert_eq!(s.seen[0].0, base + 8);
        assert_eq!(s.seen[0].1[0], 0x77);
        // Now on and started.
        assert_eq!(answer(&mut m, h, hvc(1, base, 0)), -4);
    }
}

/// A guest's CPU_ON ends the run (INTERRUPTED, for the host to run the
/// target) only when it succeeds; a refused one goes straight back into
/// the guest with its answer. The SMC32 form takes W1..W3: the upper
/// halves of x1..x3 are not part of the call.
#[test]
fn only_a_successful_cpu_on_ends_the_run() {
    let base = sim::GUEST_BASE_IPA;
    let junk = 0xdead_beef_u64 << 32;
    for protected in [false, true] {
        let (mut m, h, _) = guest(protected);
        let mut s = script(&[]);
        run(&mut m, h, 0, &mut s);
        // Refused: no such vCPU, then itself (already on).
        for (x1, answer) in [(2u64, -2i64), (0, -4)] {
            let mut s = script(&[(Trap::Hvc, [CPU_ON, x1, base, 0, 0, 0, 0])]);
            run(&mut m, h, 0, &mut s);
            assert_eq!(
                s.seen.len(),
                2,
                "protected {protected}: CPU_ON({x1}) ended the run"
            );
            assert_eq!(s.seen[1].1[0] as i64, answer);
        }
        // The SMC32 form, with junk above each argument's 32 bits.
        let call = [
            0x8400_0003,
            junk | 1,
            junk | (base + 8),
            junk | 0x77,
            0,
            0,
            0,
        ];
        let mut s = script(&[(Trap::Hvc, call)]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
        assert_eq!(s.seen.len(), 1, "protected {protected}: the run went on");
        let mut next = script(&[]);
        run(&mut m, h, 0, &mut next);
        assert_eq!(next.seen[0].1[0], 0, "SUCCESS");
        let mut s = script(&[]);
        assert_eq!(run(&mut m, h, 1, &mut s), ExitReason::Interrupted);
        assert_eq!(s.seen[0].0, base + 8);
        assert_eq!(s.seen[0].1[0], 0x77);
    }
}

/// PSCI AFFINITY_INFO from a guest: a vCPU is ON (0) from its CPU_ON (or
/// first run) until its CPU_OFF, OFF (1) before and after;
/// INVALID_PARAMETERS for a
/// vCPU the VM does not have.
#[test]
fn affinity_info_follows_cpu_on_and_cpu_off() {
    let base = sim::GUEST_BASE_IPA;
    let ask = |m: &mut SimMachine, h: u64, x1: u64| {
        let mut s = script(&[(Trap::Hvc, [0xC400_0004, x1, 0, 0, 0, 0, 0])]);
        run(m, h, 0, &mut s);
        s.seen[1].1[0] as i64
    };
    for protected in [false, true] {
        let (mut m, h, _) = guest(protected);
        let mut s = script(&[]);
        run(&mut m, h, 0, &mut s);
        assert_eq!(ask(&mut m, h, 0), 0, "itself");
        assert_eq!(ask(&mut m, h, 1), 1, "never started");
        assert_eq!(ask(&mut m, h, 2), -2, "no such vCPU");
        let mut s = script(&[(Trap::Hvc, [CPU_ON, 1, base, 0, 0, 0, 0])]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Interrupted);
        assert_eq!(ask(&mut m, h, 1), 0, "on, not run yet");
        let mut s = script(&[]);
        run(&mut m, h, 1, &mut s);
        assert_eq!(ask(&mut m, h, 1), 0, "running");
        let mut s = script(&[(Trap::Hvc, [0x8400_0002, 0, 0, 0, 0, 0, 0])]);
        assert_eq!(run(&mut m, h, 1, &mut s), ExitReason::Wfi);
        assert_eq!(ask(&mut m, h, 1), 1, "after CPU_OFF");
    }
}

/// After a MEM_FAULT exit, the next run completes the access only for a
/// normal VM's fault on an unmapped IPA (the host may have emulated it):
/// a read gets the run page's data, masked to its size, and the pc moves
/// past it. A protected VM's fault, or one on a mapped page, is retried.
#[test]
fn only_a_normal_vms_unmapped_fault_is_completed_on_resume() {
    let base = sim::GUEST_BASE_IPA;
    let unmapped = 0x8000_0000;
    let data = offset_of!(RunPage, mmio_read_data) as u64;
    let cases = [
        // (protected, trap, completed)
        (false, data_abort(unmapped, false, 2), true),
        (true, data_abort(unmapped, false, 2), false),
        (false, data_abort(base + PAGE, true, 8), false),
    ];
    for (protected, trap, completed) in cases {
        let (mut m, h, run_pfn) = guest(protected);
        let mut s = script(&[trap]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::MemFault);
        hyp::phys::write_u64(m.phys(), run_pfn * PAGE + data, 0xAABB_CCDD);
        let mut s = script(&[]);
        run(&mut m, h, 0, &mut s);
        let (pc, x) = s.seen[0];
        if completed {
            assert_eq!((pc, x[3]), (base + 4, 0xCCDD), "{trap:x?}");
        } else {
            assert_eq!((pc, x[3]), (base, X3), "{trap:x?}, protected {protected}");
        }
    }
}

/// A write to an MMIO_GUARD page exits MMIO with the data masked to the
/// access size; a read carries no data.
#[test]
fn mmio_guard_exits_carry_the_masked_write_data() {
    let guard = 0x9000_0000u64;
    for (size, write, want) in [
        (1u8, true, 0x88),
        (2, true, 0x7788),
        (4, true, 0x5566_7788),
        (8, true, X3),
        (8, false, 0),
    ] {
        let (mut m, h, run_pfn) = guest(false);
        let register = (Trap::Hvc, [0xC600_0007, guard, 0, 0, 0, 0, 0]);
        let mut s = script(&[register, data_abort(guard + 8, write, size)]);
        assert_eq!(run(&mut m, h, 0, &mut s), ExitReason::Mmio);
        let flags = if write { fault_flags::WRITE } else { 0 };
        assert_eq!(
            fault(&m, run_pfn),
            [guard + 8, flags, u64::from(size), 0, want],
            "size {size}, write {write}"
        );
    }
}
