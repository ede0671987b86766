//! Every statement form against a scripted machine: what the interpreter
//! asks of the machine, and exactly what it prints.

mod fake;

use fake::{id, run, run_on, tally, Event, Fake, FIRST_PFN, HANDLE, HYP_PFN, PA_LIMIT};
use host_interface::{Errno, ExitReason, GuestCallId, HostCallId};
use scenario::{summary_line, Abort, GuestOp, GuestOutcome, PageKind, Tally};

const EPERM: u64 = (-1i64) as u64;

fn exit(reason: ExitReason, ipa: Option<u64>) -> GuestOutcome {
    GuestOutcome::Exit {
        reason: reason.value(),
        ipa,
    }
}

fn errno(e: Errno) -> [u64; 5] {
    [0, e.to_x1(), 0, 0, 0]
}

#[test]
fn summary_and_tally() {
    assert_eq!(summary_line(&tally(12, 0, 0)), "12 passed, 0 failed");
    assert_eq!(
        summary_line(&tally(10, 1, 3)),
        "10 passed, 1 failed, 3 skipped"
    );
    let mut t = tally(1, 2, 3);
    t += tally(10, 20, 30);
    assert_eq!(t, tally(11, 22, 33));
    let mut t = tally(u32::MAX, 0, 0);
    t += tally(1, 0, 0);
    assert_eq!(t.passed, u32::MAX);
}

#[test]
fn blank_and_comment_lines_are_not_statements() {
    let (t, out, fake) = run("\n   \n# comment\n\t# indented comment\n");
    assert_eq!(t, Tally::default());
    assert!(out.is_empty());
    assert_eq!(fake.log, [Event::Begin("f".into()), Event::End]);
}

#[test]
fn let_pages_and_addresses() {
    let (t, out, fake) = run("\
let a = ram 4
let d = coherent 2   # comment
let m = mmio 1
let u = mmio_uc 0x1_0
let h = hyp
let top = pa_limit
let n = a + 2 | 1
call HYP_VERSION a d m u h top -> ok
call HYP_VERSION n -> ok
");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(9, 0, 0));
    let v = id(HostCallId::HypVersion);
    let a = FIRST_PFN;
    assert_eq!(
        fake.body(),
        [
            Event::Alloc(PageKind::Ram, 4),
            Event::Alloc(PageKind::Coherent, 2),
            Event::Alloc(PageKind::Mmio, 1),
            Event::Alloc(PageKind::MmioUc, 16),
            Event::HypPfn,
            Event::PaLimit,
            Event::HostCall([v, a, a + 4, a + 6, a + 7, HYP_PFN, PA_LIMIT]),
            Event::HostCall([v, (a + 2) | 1, 0, 0, 0, 0, 0]),
        ]
    );
}

#[test]
fn let_alloc_failure() {
    let mut fake = Fake {
        alloc_error: Some("no coherent region".into()),
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "let d = coherent 1\ncall HYP_VERSION d -> ok\n");
    assert_eq!(t, tally(0, 2, 0));
    assert_eq!(
        out,
        [
            "f:1: expected ok, got error: no coherent region",
            "f:2: expected a bound name, got `d`: unbound name d",
        ]
    );
}

#[test]
fn let_vm_and_vcpu() {
    let (t, out, fake) = run("\
let g = vm protected
let n = vm normal mte
let c = vcpu g
let c2 = vcpu g
call HYP_VERSION g c c2 -> ok
boot g c
boot n c2 -> ok
");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(7, 0, 0));
    let p = FIRST_PFN;
    let (create, topup) = (id(HostCallId::VmCreate), id(HostCallId::VmTopup));
    let (share, vcpu) = (id(HostCallId::ShareHyp), id(HostCallId::VcpuCreate));
    assert_eq!(
        fake.body(),
        [
            Event::Alloc(PageKind::Ram, 8),
            Event::HostCall([create, 1, p, 8, 0, 0, 0]),
            Event::Alloc(PageKind::Ram, 64),
            Event::HostCall([topup, HANDLE, p + 8, 64, 0, 0, 0]),
            Event::Alloc(PageKind::Ram, 8),
            Event::HostCall([create, 2, p + 72, 8, 0, 0, 0]),
            Event::Alloc(PageKind::Ram, 64),
            Event::HostCall([topup, HANDLE, p + 80, 64, 0, 0, 0]),
            Event::Alloc(PageKind::Ram, 1),
            Event::HostCall([share, p + 144, 1, 0, 0, 0, 0]),
            Event::HostCall([vcpu, HANDLE, p + 144, 0, 0, 0, 0]),
            Event::Alloc(PageKind::Ram, 1),
            Event::HostCall([share, p + 145, 1, 0, 0, 0, 0]),
            Event::HostCall([vcpu, HANDLE, p + 145, 0, 0, 0, 0]),
            Event::HostCall([id(HostCallId::HypVersion), HANDLE, 0, 1, 0, 0, 0]),
            // Both VMs got handle 5 from the fake; the last word wins.
            Event::Boot(HANDLE, 0, false),
            Event::Boot(HANDLE, 1, false),
        ]
    );
}

#[test]
fn let_vm_remembers_protection() {
    let mut fake = Fake {
        host: [[0, 0, 7, 0, 0], [0; 5], [0, 0, 9, 0, 0], [0; 5]].into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "let g = vm protected\nlet n = vm normal\nboot g 0\nboot n 0\nboot 99 0\n",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(5, 0, 0));
    let boots: Vec<_> = fake
        .log
        .iter()
        .filter(|e| matches!(e, Event::Boot(..)))
        .cloned()
        .collect();
    assert_eq!(
        boots,
        [
            Event::Boot(7, 0, true),
            Event::Boot(9, 0, false),
            Event::Boot(99, 0, false)
        ]
    );
}

#[test]
fn call_vm_create_remembers_protection() {
    let mut fake = Fake {
        host: [[0, 0, 3, 0, 0], [0, 0, 4, 0, 0]].into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "let a = ram 16\ncall VM_CREATE PROTECTED a 8 -> ok as p\ncall VM_CREATE 0 a+8 8 -> ok as q\nboot p 0\nboot q 0\n",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(5, 0, 0));
    assert!(fake.log.contains(&Event::Boot(3, 0, true)));
    assert!(fake.log.contains(&Event::Boot(4, 0, false)));
}

#[test]
fn let_vm_failures_show_the_errno() {
    let mut fake = Fake {
        host: [errno(Errno::ENOMEM)].into(),
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "let g = vm protected\n");
    assert_eq!(t, tally(0, 1, 0));
    assert_eq!(out, ["f:1: expected ok, got ENOMEM: VM_CREATE"]);

    let mut fake = Fake {
        host: [[0, 0, 2, 0, 0], errno(Errno::EINVAL)].into(),
        ..Fake::default()
    };
    let (_, out) = run_on(&mut fake, "let g = vm normal\n");
    assert_eq!(out, ["f:1: expected ok, got EINVAL: VM_TOPUP"]);

    let mut fake = Fake {
        host: [errno(Errno::EPERM)].into(),
        ..Fake::default()
    };
    let (_, out) = run_on(&mut fake, "let c = vcpu 1\ncall HYP_VERSION c -> ok\n");
    assert_eq!(
        out,
        [
            "f:1: expected ok, got EPERM: SHARE_HYP",
            "f:2: expected a bound name, got `c`: unbound name c",
        ]
    );

    let mut fake = Fake {
        host: [[0; 5], errno(Errno::ENOENT)].into(),
        ..Fake::default()
    };
    let (_, out) = run_on(&mut fake, "let c = vcpu 1\n");
    assert_eq!(out, ["f:1: expected ok, got ENOENT: VCPU_CREATE"]);
}

#[test]
fn binding_rules() {
    let (t, out, fake) = run("\
let a = ram 1
let a = ram 2
let b = 1
call SHARE_HYP a 1 -> ok as b
let R = 1
let ok = 1
let EPERM = 2
call HYP_VERSION zz -> ok
let x = zz + 1
");
    assert_eq!(t, tally(2, 7, 0));
    assert_eq!(
        out,
        [
            "f:2: expected a new name, got `a`: a is already bound",
            "f:4: expected a new name, got `b`: b is already bound",
            "f:5: expected a name, got `R`: R is reserved and cannot be bound",
            "f:6: expected a name, got `ok`: ok is reserved and cannot be bound",
            "f:7: expected a name, got `EPERM`: EPERM is reserved and cannot be bound",
            "f:8: expected a bound name, got `zz`: unbound name zz",
            "f:9: expected a bound name, got `zz`: unbound name zz",
        ]
    );
    // Nothing ran for the failed statements: one allocation, no host call.
    assert_eq!(fake.body(), [Event::Alloc(PageKind::Ram, 1)]);
}

#[test]
fn bindings_are_per_file() {
    let mut fake = Fake::default();
    let (t, _) = run_on(&mut fake, "let a = ram 1\n");
    assert_eq!(t, tally(1, 0, 0));
    let (t, out) = run_on(&mut fake, "let a = ram 1\ncall HYP_VERSION a -> ok\n");
    assert_eq!(t, tally(2, 0, 0), "{out:?}");
}

#[test]
fn call_results() {
    let mut fake = Fake {
        host: [
            [0; 5],                       // ok
            errno(Errno::EPERM),          // EPERM
            [u64::MAX, 0, 0, 0, 0],       // NOT_SUPPORTED
            [0, 0, 0, 1, 0],              // registers
            [0, 0, 0x10000, 0, 0],        // as
            errno(Errno::EPERM),          // expected ok
            [0; 5],                       // expected EPERM
            [u64::MAX, 0, 0, 0, 0],       // expected ok
            [0, (-5i64) as u64, 0, 0, 0], // unknown errno
            [7, 0, 0, 0, 0],              // odd x0
            [0, 0, 5, 1, 0],              // register mismatch
            [0, 0, 5, 1, 0],              // two mismatches
            [0, 0, 9, 0, 0],              // as, failing
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
let a = ram 1
call SHARE_HYP a 1 -> ok
call SHARE_HYP a 1 -> EPERM
call 0xC60001FF -> NOT_SUPPORTED
call PAGE_QUERY a -> ok x2=0 x3=1 x4=0 x0=0 x1=0
call HYP_VERSION -> ok as v
call UNSHARE_HYP a 1 -> ok
call UNSHARE_HYP a 1 -> EPERM
call UNSHARE_HYP a 1 -> ok
call RECLAIM a 1 -> ok
call RECLAIM a 1 -> ok
call PAGE_QUERY a -> ok x2=6 x3=1
call PAGE_QUERY a -> ok x2=6 x3=2 x4=0
call VM_CREATE PROTECTED a 8 -> ok x2=1 as g
call GUEST_MAP_DEVICE g a 0x90000 1 RW|WB -> ok x2=1
call HYP_VERSION v -> ok
",
    );
    assert_eq!(
        out,
        [
            "f:7: expected ok, got EPERM",
            "f:8: expected EPERM, got ok",
            "f:9: expected ok, got NOT_SUPPORTED",
            "f:10: expected ok, got x0=0x0 x1=0xfffffffffffffffb",
            "f:11: expected ok, got x0=0x7 x1=0x0",
            "f:12: expected x2=0x6, got x2=0x5",
            "f:13: expected x2=0x6 x3=0x2, got x2=0x5 x3=0x1",
            "f:14: expected x2=0x1, got x2=0x9",
            "f:15: expected a bound name, got `g`: unbound name g",
        ]
    );
    assert_eq!(t, tally(7, 9, 0));
    let calls = fake.host_calls();
    let a = FIRST_PFN;
    assert_eq!(calls[0], [id(HostCallId::ShareHyp), a, 1, 0, 0, 0, 0]);
    assert_eq!(calls[2], [0xC600_01FF, 0, 0, 0, 0, 0, 0]);
    assert_eq!(calls[12], [id(HostCallId::VmCreate), 1, a, 8, 0, 0, 0]);
    // `as v` bound x2 of HYP_VERSION.
    assert_eq!(
        calls[13],
        [id(HostCallId::HypVersion), 0x10000, 0, 0, 0, 0, 0]
    );
    assert_eq!(calls.len(), 14);
}

#[test]
fn call_arguments() {
    let (t, out, fake) = run("\
call GUEST_MAP_DEVICE 1 2 0x90000 1 RW|WB -> ok
call GUEST_SHARE 1 2 3 4 RWX 6 -> ok
call GUEST_SHARE 1 2 3 4 5 6 7 -> ok
call 0x1_0000_0000_0000_0000 -> ok
call SHARE_HYP 1 1 ok
call SHARE_HYP 1 1 -> fine
call SHARE_HYP 1 1 -> ok x5=0
call SHARE_HYP 1 1 -> ok x2 0
call SHARE_HYP 1 1 -> EPERM as z
call SHARE_HPY 1 1 -> ok
call -> ok
call share_hyp 1 1 -> ok
call SHARE_HYP 1 1 -> ok as
call SHARE_HYP 1 1 -> ok as y as z
");
    assert_eq!(
        out,
        [
            "f:3: expected at most 6 arguments, got `7`: too many arguments",
            "f:4: expected a number, got `0x1_0000_0000_0000_0000`: number too large",
            "f:5: expected `->`, got end of line",
            "f:6: expected ok, an errno name or NOT_SUPPORTED, got `fine`",
            "f:7: expected x0..x4=VALUE, `as NAME` or end of line, got `x5`",
            "f:8: expected `=`, got `0`",
            "f:9: expected -> ok, got `as`: `as NAME` binds x2 of a call that succeeds: it needs `-> ok`",
            "f:10: expected a host call name or function ID, got `SHARE_HPY`: unknown host call SHARE_HPY",
            "f:11: expected a host call name or function ID, got `->`",
            "f:12: expected a host call name or function ID, got `share_hyp`: unknown host call share_hyp",
            "f:13: expected a name, got end of line",
            "f:14: expected end of line, got `as`: only one `as NAME`",
        ]
    );
    assert_eq!(t, tally(2, 12, 0));
    let map = id(HostCallId::GuestMapDevice);
    let share = id(HostCallId::GuestShare);
    assert_eq!(
        fake.host_calls(),
        [[map, 1, 2, 0x90000, 1, 0x203, 0], [share, 1, 2, 3, 4, 7, 6]]
    );
}

#[test]
fn host_memory() {
    let mut fake = Fake {
        reads: [
            Ok(0x1122_3344_5566_7788),
            Err(Abort),
            Ok(5),
            Ok(5),
            Err(Abort),
            Ok(1),
        ]
        .into(),
        writes: [
            Ok(()),
            Err(Abort),
            Ok(()),
            Err(Abort),
            Ok(()),
            Err(Abort),
            Err(Abort),
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
let a = ram 2
host read a -> 0x1122334455667788
host read a@0x18 -> abort
host read a+1@8 -> ok
host read a -> 6
host read a -> ok
host read a -> abort
host write a 0x1122334455667788 -> ok
host write a@0x18 7 -> abort
host write a 1 -> abort
host write a 1 -> ok
host fill a 2 0xA5
host fill a 1 0 -> abort
host fill a 1 0
host read a@0x1000 -> ok
host read 0x10_0000_0000_0000 -> ok
host fill a 1 0x100
host fill a 0x10_0000_0000_0000 0
host write a -> ok
host read a 5
host copy a
host write a@ 1 -> ok
",
    );
    assert_eq!(
        out,
        [
            "f:5: expected 0x6, got 0x5",
            "f:6: expected ok, got abort",
            "f:7: expected abort, got 0x1",
            "f:10: expected abort, got ok",
            "f:11: expected ok, got abort",
            "f:14: expected ok, got abort",
            "f:15: expected a byte offset below 0x1000, got 0x1000: offset beyond the page",
            "f:16: expected a pfn, got 0x10000000000000: its address does not fit in 64 bits",
            "f:17: expected a byte value (0..=0xff), got 0x100",
            "f:18: expected a page count, got 0x10000000000000: fill length does not fit in 64 bits",
            "f:19: expected a number or name, got `->`",
            "f:20: expected `->`, got `5`",
            "f:21: expected read, write or fill, got `copy`",
            "f:22: expected a number or name, got `->`",
        ]
    );
    // Line 22 is `a@1` with no value.
    assert_eq!(t, tally(8, 14, 0));
    let a = FIRST_PFN << 12;
    assert_eq!(
        fake.body(),
        [
            Event::Alloc(PageKind::Ram, 2),
            Event::Read(a),
            Event::Read(a + 0x18),
            Event::Read(a + 0x1008),
            Event::Read(a),
            Event::Read(a),
            Event::Read(a),
            Event::Write(a, 0x1122_3344_5566_7788),
            Event::Write(a + 0x18, 7),
            Event::Write(a, 1),
            Event::Write(a, 1),
            Event::Fill(a, 0x2000, 0xa5),
            Event::Fill(a, 0x1000, 0),
            Event::Fill(a, 0x1000, 0),
        ]
    );
}

#[test]
fn guest_operations() {
    let mut fake = Fake {
        guest: [
            GuestOutcome::Done(0),                                        // boot
            GuestOutcome::Done(0),                                        // read -> 0x0
            GuestOutcome::Done(0x77),                                     // read -> ok
            GuestOutcome::Done(0),                                        // write -> ok
            exit(ExitReason::MemFault, Some(0x8020_0000)), // read -> exit MEM_FAULT ipa
            exit(ExitReason::MemFault, Some(0x9000_0000)), // exec -> exit MEM_FAULT
            GuestOutcome::Done(0),                         // hvc -> ok
            GuestOutcome::Done(u64::MAX),                  // hvc -> NOT_SUPPORTED
            GuestOutcome::Done((-3i64) as u64),            // hvc -> INVALID_PARAMETER
            GuestOutcome::Done(0x10001),                   // hvc -> 0x10001
            GuestOutcome::CallFailed([0, Errno::EPERM.to_x1(), 0, 0, 0]), // read -> EPERM
            exit(ExitReason::SystemEvent, None),           // hvc SYSTEM_OFF -> exit
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
boot 1 0 -> ok
guest 1 0 read 0x8010_0000 -> 0x0
guest 1 0 read 0x8010_0000 -> ok
guest 1 0 write 0x8010_0000 5 -> ok
guest 1 0 read 0x8020_0000 -> exit MEM_FAULT 0x8020_0000
guest 1 0 exec 0x9000_0000 -> exit MEM_FAULT
guest 1 0 hvc MEM_SHARE 0x8010_0000 -> ok
guest 1 0 hvc 0xC6000003 0x8030_0000 -> NOT_SUPPORTED
guest 1 0 hvc MEM_UNSHARE 1 2 3 4 5 6 -> INVALID_PARAMETER
guest 1 0 hvc SMCCC_VERSION -> 0x10001
guest 1 0 read 0 -> EPERM
guest 1 0 hvc SYSTEM_OFF -> exit SYSTEM_EVENT
",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(12, 0, 0));
    let share = u64::from(GuestCallId::MemShare.id());
    let unshare = u64::from(GuestCallId::MemUnshare.id());
    let off = u64::from(GuestCallId::PsciSystemOff.id());
    assert_eq!(
        fake.body(),
        [
            Event::Boot(1, 0, false),
            Event::Op(1, 0, GuestOp::Read { ipa: 0x8010_0000 }),
            Event::Op(1, 0, GuestOp::Read { ipa: 0x8010_0000 }),
            Event::Op(
                1,
                0,
                GuestOp::Write {
                    ipa: 0x8010_0000,
                    value: 5
                }
            ),
            Event::Op(1, 0, GuestOp::Read { ipa: 0x8020_0000 }),
            Event::Op(1, 0, GuestOp::Exec { ipa: 0x9000_0000 }),
            Event::Op(
                1,
                0,
                GuestOp::Hvc {
                    regs: [share, 0x8010_0000, 0, 0, 0, 0, 0]
                }
            ),
            Event::Op(
                1,
                0,
                GuestOp::Hvc {
                    regs: [0xC600_0003, 0x8030_0000, 0, 0, 0, 0, 0]
                }
            ),
            Event::Op(
                1,
                0,
                GuestOp::Hvc {
                    regs: [unshare, 1, 2, 3, 4, 5, 6]
                }
            ),
            Event::Op(
                1,
                0,
                GuestOp::Hvc {
                    regs: [0x8000_0000, 0, 0, 0, 0, 0, 0]
                }
            ),
            Event::Op(1, 0, GuestOp::Read { ipa: 0 }),
            Event::Op(
                1,
                0,
                GuestOp::Hvc {
                    regs: [off, 0, 0, 0, 0, 0, 0]
                }
            ),
        ]
    );
}

#[test]
fn guest_failures_are_rendered() {
    let mut fake = Fake {
        guest: [
            exit(ExitReason::MemFault, Some(0x8020_0000)), // read -> 0x0
            GuestOutcome::Done(5),                         // read -> exit MEM_FAULT
            exit(ExitReason::MemFault, Some(0x8030_0000)), // wrong IPA
            exit(ExitReason::Hvc, None),                   // wrong reason
            GuestOutcome::Done(5),                         // hvc -> ok
            GuestOutcome::Done(0),                         // hvc -> NOT_SUPPORTED
            GuestOutcome::Done(u64::MAX),                  // hvc -> INVALID_PARAMETER
            GuestOutcome::Done((-3i64) as u64),            // hvc -> ok
            GuestOutcome::Done(u64::MAX),                  // read -> 0x5
            GuestOutcome::CallFailed([0, EPERM, 0, 0, 0]), // read -> ok
            GuestOutcome::CallFailed([u64::MAX, 0, 0, 0, 0]),
            GuestOutcome::CallFailed([0, 3, 0, 0, 0]),
            GuestOutcome::Error("no test guest".into()),
            GuestOutcome::Done(0),         // -> EBUSY
            exit(ExitReason::Fatal, None), // -> ok
            GuestOutcome::Exit {
                reason: 42,
                ipa: Some(1),
            },
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
guest 1 0 read 0x8020_0000 -> 0x0
guest 1 0 read 0x8020_0000 -> exit MEM_FAULT 0x8020_0000
guest 1 0 read 0x8020_0000 -> exit MEM_FAULT 0x8020_0000
guest 1 0 read 0x8020_0000 -> exit MEM_FAULT
guest 1 0 hvc MEM_SHARE 0 -> ok
guest 1 0 hvc MEM_SHARE 0 -> NOT_SUPPORTED
guest 1 0 hvc MEM_SHARE 0 -> INVALID_PARAMETER
guest 1 0 hvc MEM_SHARE 0 -> ok
guest 1 0 read 0 -> 5
guest 1 0 read 0 -> ok
guest 1 0 read 0 -> ok
guest 1 0 read 0 -> ok
guest 1 0 read 0 -> ok
boot 1 0 -> EBUSY
boot 1 0
boot 1 0
",
    );
    assert_eq!(
        out,
        [
            "f:1: expected 0x0, got exit MEM_FAULT 0x80200000",
            "f:2: expected exit MEM_FAULT 0x80200000, got 0x5",
            "f:3: expected exit MEM_FAULT 0x80200000, got exit MEM_FAULT 0x80300000",
            "f:4: expected exit MEM_FAULT, got exit HVC",
            "f:5: expected ok, got 0x5",
            "f:6: expected NOT_SUPPORTED, got ok",
            "f:7: expected INVALID_PARAMETER, got NOT_SUPPORTED",
            "f:8: expected ok, got INVALID_PARAMETER",
            "f:9: expected 0x5, got 0xffffffffffffffff",
            "f:10: expected ok, got EPERM",
            "f:11: expected ok, got NOT_SUPPORTED: VCPU_RUN failed",
            "f:12: expected ok, got x0=0x0 x1=0x3: VCPU_RUN failed",
            "f:13: expected ok, got error: no test guest",
            "f:14: expected EBUSY, got 0x0",
            "f:15: expected ok, got exit FATAL",
            "f:16: expected ok, got exit 0x2a 0x1",
        ]
    );
    assert_eq!(t, tally(0, 16, 0));
}

#[test]
fn guest_syntax_errors() {
    let (t, out, fake) = run("\
guest 1 0 read 0x8010_0000
guest 1 0 jump 0 -> ok
guest 1 0 hvc MEM_SHAER 0 -> ok
guest 1 0 hvc 1 2 3 4 5 6 7 8 -> ok
guest 1 0 read 0 -> exit NOTHING
guest 1 0 read 0 -> exit
guest 1 0 read 0 -> ->
guest 1 -> ok
boot 1 0 ok
resume 1 0 -> exit MMIO 1 2
guest 1 0 read 0 -> exit mmio
");
    assert_eq!(
        out,
        [
            "f:1: expected `->`, got end of line",
            "f:2: expected read, write, exec or hvc, got `jump`",
            "f:3: expected a guest call name or function ID, got `MEM_SHAER`: unknown guest call MEM_SHAER",
            "f:4: expected at most 6 arguments, got `8`: too many arguments",
            "f:5: expected an exit reason (MMIO MEM_FAULT HVC SYSTEM_EVENT INTERRUPTED WFI FATAL), got `NOTHING`",
            "f:6: expected an exit reason (MMIO MEM_FAULT HVC SYSTEM_EVENT INTERRUPTED WFI FATAL), got end of line",
            "f:7: expected ok, NOT_SUPPORTED, INVALID_PARAMETER, a value, `exit REASON [IPA]` or an errno name, got `->`",
            "f:8: expected a number or name, got `->`",
            "f:9: expected `->`, got `ok`",
            "f:10: expected end of line, got `2`",
            "f:11: expected an exit reason (MMIO MEM_FAULT HVC SYSTEM_EVENT INTERRUPTED WFI FATAL), got `mmio`",
        ]
    );
    assert_eq!(t, tally(0, 11, 0));
    assert!(fake.body().is_empty());
}

#[test]
fn guest_expressions_use_bindings() {
    let mut fake = Fake {
        guest: [
            GuestOutcome::Done(0x8010_0008),
            exit(ExitReason::MemFault, Some(0x8010_1000)),
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
let base = 0x8010_0000
let g = 3
guest g 1 read base + 8 -> base + 8
guest g 1 write base 0x1000 -> exit MEM_FAULT base + 0x1000
",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(4, 0, 0));
    assert_eq!(
        fake.body()[0],
        Event::Op(3, 1, GuestOp::Read { ipa: 0x8010_0008 })
    );
    // `base 0x1000` are two arguments: IPA and value.
    assert_eq!(
        fake.body()[1],
        Event::Op(
            3,
            1,
            GuestOp::Write {
                ipa: 0x8010_0000,
                value: 0x1000
            }
        )
    );
}

#[test]
fn transparent_resume() {
    let mut fake = Fake {
        guest: [
            // read -> 7, through WFI, INTERRUPTED and MMIO exits.
            exit(ExitReason::Wfi, None),
            exit(ExitReason::Interrupted, None),
            exit(ExitReason::Mmio, Some(0x9000_0000)),
            GuestOutcome::Done(7),
            // An expected exit is returned as is, but INTERRUPTED is passed over.
            exit(ExitReason::Interrupted, None),
            exit(ExitReason::Mmio, Some(0x9000_0000)),
            // A named exit other than INTERRUPTED stops at WFI.
            exit(ExitReason::Wfi, None),
            // An errno expectation is resumed through too.
            exit(ExitReason::Interrupted, None),
            GuestOutcome::CallFailed([0, Errno::EBUSY.to_x1(), 0, 0, 0]),
            // An expected INTERRUPTED is not resumed.
            exit(ExitReason::Interrupted, None),
            // boot resumes as well.
            exit(ExitReason::Wfi, None),
            GuestOutcome::Done(0),
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
guest 1 0 read 0x9000_0000 -> 7
guest 1 0 read 0x9000_0000 -> exit MMIO 0x9000_0000
guest 1 0 read 0x9000_0000 -> exit MEM_FAULT
guest 1 0 read 0 -> EBUSY
guest 1 0 read 0 -> exit INTERRUPTED
boot 1 0
",
    );
    assert_eq!(out, ["f:3: expected exit MEM_FAULT, got exit WFI"]);
    assert_eq!(t, tally(5, 1, 0));
    let resumes = fake
        .log
        .iter()
        .filter(|e| matches!(e, Event::Resume(1, 0, 0)))
        .count();
    assert_eq!(resumes, 3 + 1 + 1 + 1);
}

#[test]
fn transparent_resume_is_bounded() {
    let mut fake = Fake {
        guest: std::iter::repeat_n(exit(ExitReason::Wfi, None), 64).collect(),
        ..Fake::default()
    };
    fake.guest.push_back(GuestOutcome::Done(0));
    let (t, out) = run_on(&mut fake, "guest 1 0 write 0 0 -> ok\n");
    assert_eq!(t, tally(1, 0, 0), "{out:?}");

    let mut fake = Fake {
        guest: std::iter::repeat_n(exit(ExitReason::Mmio, Some(0x9000_0000)), 100).collect(),
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "guest 1 0 write 0x9000_0000 0 -> ok\n");
    assert_eq!(t, tally(0, 1, 0));
    assert_eq!(
        out,
        ["f:1: expected ok, got exit MMIO 0x90000000: vCPU did not finish after 64 resumes"]
    );
    let resumes = fake
        .log
        .iter()
        .filter(|e| matches!(e, Event::Resume(..)))
        .count();
    assert_eq!(resumes, 64);
}

#[test]
fn resume_statement() {
    let mut fake = Fake {
        guest: [
            exit(ExitReason::Mmio, Some(0x9000_0000)), // guest read -> exit MMIO
            GuestOutcome::Done(0x1234),                // resume 0x1234 -> 0x1234
            exit(ExitReason::Hvc, None),               // guest hvc -> exit HVC
            GuestOutcome::Done(5),                     // resume -> ok: a call must give 0
            exit(ExitReason::Hvc, None),               // guest hvc -> exit HVC
            GuestOutcome::Done(0),                     // resume -> ok
            GuestOutcome::Done(9),                     // resume, nothing pending: any value
            exit(ExitReason::Wfi, None),               // resume (transparent)
            GuestOutcome::Done(0),
            exit(ExitReason::MemFault, Some(0x8000_0000)), // resume -> exit
        ]
        .into(),
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "\
guest 1 0 read 0x9000_0000 -> exit MMIO 0x9000_0000
resume 1 0 0x1234 -> 0x1234
guest 1 0 hvc 0x8600_0001 -> exit HVC
resume 1 0 -> ok
guest 1 0 hvc 0x8600_0001 -> exit HVC
resume 1 0
resume 1 0 -> ok
resume 1 0
resume 1 0 -> exit MEM_FAULT 0x8000_0000
",
    );
    assert_eq!(out, ["f:4: expected ok, got 0x5"]);
    assert_eq!(t, tally(8, 1, 0));
    let resumes: Vec<_> = fake
        .log
        .iter()
        .filter(|e| matches!(e, Event::Resume(..)))
        .cloned()
        .collect();
    assert_eq!(
        resumes,
        [
            Event::Resume(1, 0, 0x1234),
            Event::Resume(1, 0, 0),
            Event::Resume(1, 0, 0),
            Event::Resume(1, 0, 0),
            Event::Resume(1, 0, 0),
            Event::Resume(1, 0, 0),
            Event::Resume(1, 0, 0),
        ]
    );
}

#[test]
fn requires_met_runs_the_file() {
    let mut fake = Fake {
        features: 0b1011,
        ..Fake::default()
    };
    let (t, out) = run_on(
        &mut fake,
        "# header\nrequires: fwb dic\n\nrequires: !idc   # comment\nrequires:\nlet a = ram 1\n",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(1, 0, 0));
    assert_eq!(
        fake.log[0],
        Event::HostCall([id(HostCallId::HypFeatures), 0, 0, 0, 0, 0, 0])
    );
    assert_eq!(fake.log[1], Event::Begin("f".into()));
}

#[test]
fn requires_unmet_skips_the_file() {
    for (features, text) in [
        (
            0b0001,
            "requires: fwb dic\nlet a = ram 1\ncall HYP_VERSION -> ok\ngarbage $\n",
        ),
        (
            0b0100,
            "requires: fwb\nrequires: !idc\nlet a = ram 1\ncall HYP_VERSION -> ok\ngarbage $\n",
        ),
        (
            0b11111,
            "requires: !cacheable_device\nlet a = ram 1\ncall HYP_VERSION -> ok\ngarbage $\n",
        ),
    ] {
        let mut fake = Fake {
            features,
            ..Fake::default()
        };
        let (t, out) = run_on(&mut fake, text);
        assert_eq!(t, tally(0, 0, 3), "{text}");
        assert!(out.is_empty());
        // Only HYP_FEATURES: no begin_file, nothing else.
        assert_eq!(
            fake.log,
            [Event::HostCall([
                id(HostCallId::HypFeatures),
                0,
                0,
                0,
                0,
                0,
                0
            ])]
        );
    }
}

#[test]
fn requires_errors_fail_every_statement() {
    let (t, out, fake) =
        run("requires: fwb\nrequires: dic turbo\n\nlet a = ram 1\ncall HYP_VERSION -> ok\n");
    assert_eq!(t, tally(0, 2, 0));
    assert_eq!(
        out,
        [
            "f:4: expected a feature (fwb dic idc mte cacheable_device), got `turbo`: unknown feature in `requires:` at line 2",
            "f:5: expected a feature (fwb dic idc mte cacheable_device), got `turbo`: unknown feature in `requires:` at line 2",
        ]
    );
    assert!(fake.log.is_empty());

    let mut fake = Fake {
        features_result: Some([u64::MAX, 0, 0, 0, 0]),
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "requires: fwb\nlet a = ram 1\n");
    assert_eq!(t, tally(0, 1, 0));
    assert_eq!(
        out,
        ["f:2: expected ok, got NOT_SUPPORTED: HYP_FEATURES (for `requires:`) failed"]
    );
}

#[test]
fn requires_after_a_statement_is_a_failed_statement() {
    let mut fake = Fake {
        features: 0,
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "let a = ram 1\nrequires: fwb\n");
    assert_eq!(t, tally(1, 1, 0));
    assert_eq!(
        out,
        ["f:2: expected a statement, got `requires:`: requires: must come before the first statement"]
    );
    // No HYP_FEATURES was asked.
    assert!(fake.host_calls().is_empty());
}

#[test]
fn begin_file_error_fails_every_statement() {
    let mut fake = Fake {
        begin_error: Some("no guest image".into()),
        ..Fake::default()
    };
    let (t, out) = run_on(&mut fake, "let a = ram 1\n\n# c\ncall HYP_VERSION -> ok\n");
    assert_eq!(t, tally(0, 2, 0));
    assert_eq!(
        out,
        [
            "f:1: expected ok, got error: no guest image",
            "f:4: expected ok, got error: no guest image",
        ]
    );
    assert_eq!(fake.log, [Event::Begin("f".into())]);
}

#[test]
fn malformed_lines_fail_alone() {
    let long = format!("call HYP_VERSION {} -> ok", "1 + ".repeat(200) + "1");
    let text = format!(
        "\
let a = ram 1
frobnicate a
$%^&
{long}
call HYP_VERSION 99999999999999999999999 -> ok
call HYP_VERSION 12ab -> ok
call HYP_VERSION a@1 -> ok
let b = ram
let c = vm
let d = vm secret
let
let e
let f = ->
host
-> ok
call HYP_VERSION é -> ok
call HYP_VERSION \u{7} -> ok
host write a 1 -> ok
"
    );
    let (t, out, fake) = run(&text);
    assert_eq!(
        out,
        [
            "f:2: expected a statement (let, call, host, device, boot, guest, resume), got `frobnicate`: unknown statement",
            "f:3: expected a name, number or one of + - | -> @ = ! :, got `$`: unexpected character",
            "f:4: expected a statement of at most 512 bytes, got 824 bytes: line too long",
            "f:5: expected a number, got `99999999999999999999999`: number too large",
            "f:6: expected a number, got `12ab`: malformed number",
            "f:7: expected `->`, got `@`",
            "f:8: expected a number or name, got end of line",
            "f:9: expected `protected` or `normal`, got end of line",
            "f:10: expected `protected` or `normal`, got `secret`",
            "f:11: expected a name, got end of line",
            "f:12: expected `=`, got end of line",
            "f:13: expected ram, coherent, mmio, mmio_uc, hyp, pa_limit, vm, vcpu or a value, got `->`",
            "f:14: expected read, write or fill, got end of line",
            "f:15: expected a statement (let, call, host, device, boot, guest, resume), got `->`: unknown statement",
            "f:16: expected a name, number or one of + - | -> @ = ! :, got `é`: unexpected character",
            "f:17: expected a name, number or one of + - | -> @ = ! :, got '\\u{7}': unexpected character",
        ]
    );
    assert_eq!(t, tally(2, 16, 0));
    assert_eq!(
        fake.body(),
        [
            Event::Alloc(PageKind::Ram, 1),
            Event::Write(FIRST_PFN << 12, 1)
        ]
    );
}

#[test]
fn crlf_and_tabs() {
    let (t, out, _) = run("let a = ram 1\r\n\tcall\tSHARE_HYP a 1 -> ok\r\n# x\r\n");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t, tally(2, 0, 0));
}

#[test]
fn device_statements() {
    let mut fake = Fake::default();
    fake.reads.extend([Ok(0x77), Ok(0), Ok(5), Err(Abort)]);
    let (t, out) = run_on(
        &mut fake,
        "\
let a = ram 1
device write a@8 0x1234 -> ok
device write a 5
device read a@8 -> 0x77
device read a -> 0
device read a -> 6
device read a -> ok
device write a
device read a -> abort
",
    );
    let a = FIRST_PFN << 12;
    assert_eq!(
        fake.body(),
        [
            Event::Alloc(PageKind::Ram, 1),
            Event::DeviceWrite(a + 8, 0x1234),
            Event::DeviceWrite(a, 5),
            Event::DeviceRead(a + 8),
            Event::DeviceRead(a),
            Event::DeviceRead(a),
            Event::DeviceRead(a),
        ]
    );
    // `-> 6` got 5; the machine had no device for the fourth read; two
    // lines do not parse.
    assert_eq!(t, tally(5, 4, 0), "{out:?}");
    assert!(
        out.iter()
            .any(|l| l.contains("expected 0x6") && l.contains("0x5")),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l.contains("no device")), "{out:?}");
}
