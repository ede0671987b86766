//! GUEST_MAP_DEVICE pinned down against mutants cargo-mutants showed
//! surviving (issue 13) in `guest_map_device` (`hyp/src/hypervisor.rs`):
//! the exact errno of each refusal, in the order of the checks, with
//! nothing changed, and the exact entries of a success.

use host_interface::{vm_flags, Errno, HostCallId, MEMTYPE_SHIFT, PAGE_SIZE};
use pagetables::{Entry, MemType, PageState};
use scenario::{Machine, PageKind};
use sim::fuzzing::oracle::{named_frames, Snapshot};
use sim::SimMachine;

const PAGE: u64 = PAGE_SIZE;
const G: u64 = 0x9_0000;
const DEVICE: u64 = 0;
const NC: u64 = 1 << MEMTYPE_SHIFT;
const WB: u64 = 2 << MEMTYPE_SHIFT;
const RW: u64 = 3;
const RWX: u64 = 7;

fn ok(r: [u64; 5]) -> [u64; 5] {
    assert_eq!(&r[..2], &[0, 0], "call failed: {r:x?}");
    r
}

fn vm(m: &mut SimMachine, flags: u64) -> Option<u64> {
    let pool = m.alloc(PageKind::Ram, 16).unwrap();
    let r = m.call(HostCallId::VmCreate, &[flags, pool, 16]);
    (r[1] == 0).then_some(r[2])
}

/// GUEST_MAP_DEVICE that must fail with `want` and change nothing.
fn refused(m: &mut SimMachine, args: [u64; 5], want: Errno, what: &str) {
    let mut regs = [u64::from(HostCallId::GuestMapDevice.id()), 0, 0, 0, 0, 0, 0];
    regs[1..6].copy_from_slice(&args);
    let frames = named_frames(&regs);
    let before = Snapshot::take(m.hyp_mut(), &frames);
    let r = m.call(HostCallId::GuestMapDevice, &args);
    assert_eq!(Errno::from_x1(r[1]), Some(want), "{what}: {r:x?}");
    let after = Snapshot::take(m.hyp_mut(), &frames);
    before
        .unchanged(&after)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn refusals_have_exact_errnos_in_check_order() {
    for model in ["max", "cortex-a57"] {
        let mut m = SimMachine::new(model).unwrap();
        let cacheable = m.hyp().cpu().cacheable_device();
        let h = vm(&mut m, 0).unwrap();
        let ram = m.alloc(PageKind::Ram, 1).unwrap();
        let dev = m.alloc(PageKind::Mmio, 4).unwrap();
        let uc = m.alloc(PageKind::MmioUc, 4).unwrap();
        let coh = m.alloc(PageKind::Coherent, 4).unwrap();
        let uart = 0x0900_0000 / PAGE;
        let hyp = m.hyp_pfn();
        // Unknown handle first.
        refused(
            &mut m,
            [h + 100, dev, G, 1, RW | DEVICE],
            Errno::ENOENT,
            "handle",
        );
        // D1: RAM and HYP memory are no devices, whatever the type.
        for mt in [DEVICE, NC, WB] {
            refused(&mut m, [h, ram, G, 1, RW | mt], Errno::EINVAL, "RAM");
            refused(&mut m, [h, hyp, G, 1, RW | mt], Errno::EINVAL, "HYP");
        }
        // Unassignable MMIO, whatever the type.
        refused(&mut m, [h, uart, G, 1, RW | DEVICE], Errno::EINVAL, "UART");
        // D2: NORMAL_NC only where the region allows it; never WB on MMIO.
        refused(&mut m, [h, dev, G, 1, RW | NC], Errno::EINVAL, "NC on MMIO");
        refused(&mut m, [h, dev, G, 1, RW | WB], Errno::EINVAL, "WB on MMIO");
        refused(
            &mut m,
            [h, uc, G, 1, RW | WB],
            Errno::EINVAL,
            "WB on MMIO-UC",
        );
        // D5: COHERENT only as NORMAL_WB.
        refused(
            &mut m,
            [h, coh, G, 1, RW | DEVICE],
            Errno::EINVAL,
            "COHERENT DEVICE",
        );
        refused(
            &mut m,
            [h, coh, G, 1, RW | NC],
            Errno::EINVAL,
            "COHERENT NC",
        );
        // A range across two classes.
        refused(&mut m, [h, coh - 1, G, 2, RW | WB], Errno::EINVAL, "across");
        // D3 before D4: cacheable device memory needs FWB and DIC.
        if !cacheable {
            refused(&mut m, [h, coh, G, 1, RWX | WB], Errno::EFAULT, "D3");
        }
        // D4: executable only when cacheable.
        refused(
            &mut m,
            [h, dev, G, 1, RWX | DEVICE],
            Errno::ENOEXEC,
            "X DEVICE",
        );
        refused(&mut m, [h, uc, G, 1, RWX | NC], Errno::ENOEXEC, "X NC");
        // Step 6: the gfns must be free.
        ok(m.call(HostCallId::GuestMapDevice, &[h, dev, G, 1, RW | DEVICE]));
        refused(
            &mut m,
            [h, dev + 1, G, 2, RW | DEVICE],
            Errno::EEXIST,
            "gfn used",
        );
        // Already the VM's at another gfn is fine for a normal VM (a second
        // borrower); the types must agree (D7).
        ok(m.call(HostCallId::GuestMapDevice, &[h, dev, G + 4, 1, RW | DEVICE]));
        ok(m.call(HostCallId::GuestMapDevice, &[h, uc, G + 8, 1, RW | NC]));
        refused(&mut m, [h, uc, G + 9, 1, RW | DEVICE], Errno::EINVAL, "D7");
        // A MTE VM maps no device (D8), when MTE VMs exist at all.
        if let Some(t) = vm(&mut m, vm_flags::MTE) {
            refused(&mut m, [t, dev + 2, G, 1, RW | DEVICE], Errno::EINVAL, "D8");
        }
        // A protected VM owns what it maps: not a page a normal VM has.
        let p = vm(&mut m, vm_flags::PROTECTED).unwrap();
        refused(
            &mut m,
            [p, dev, G, 1, RW | DEVICE],
            Errno::EPERM,
            "lent page",
        );
        // The successful maps: the host's entries and the VM's.
        let (_, v) = m.hyp().vms().find(|(_, v)| v.handle() == h).unwrap();
        for (gfn, pfn, mt) in [(G, dev, MemType::Device), (G + 8, uc, MemType::NormalNc)] {
            match v.stage2().lookup(gfn * PAGE) {
                Entry::Mapped { pa, leaf, .. } => {
                    assert_eq!(pa, pfn * PAGE);
                    assert_eq!(leaf.state, PageState::SharedBorrowed);
                    assert_eq!(leaf.memtype, mt);
                    assert!(leaf.perms.r && leaf.perms.w && !leaf.perms.x);
                }
                e => panic!("{model}: gfn {gfn:#x}: {e:?}"),
            }
        }
        drop(v);
        assert_eq!(m.hyp().page_meta(dev).0, 2);
        assert_eq!(m.hyp().page_meta(uc).0, 1);
        // Protected: the page leaves the host.
        ok(m.call(HostCallId::GuestMapDevice, &[p, dev + 3, G, 1, RW | DEVICE]));
        assert!(matches!(
            m.hyp().host_stage2().lookup((dev + 3) * PAGE),
            Entry::Invalid { annotation } if annotation != 0
        ));
        assert!(m.host_read((dev + 3) * PAGE).is_err());
        // COHERENT, cacheable and executable where allowed.
        if cacheable {
            ok(m.call(HostCallId::GuestMapDevice, &[h, coh, G + 16, 1, RWX | WB]));
        }
    }
}
