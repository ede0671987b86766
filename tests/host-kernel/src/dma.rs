//! `dma` mode (RULES.md S1): QEMU's `edu` PCIe device, behind the
//! hypervisor's SMMU, copies pages with its DMA engine to and from every
//! kind of page, and the host pokes the bus masters the hypervisor
//! withholds (fw_cfg's DMA interface, the GIC ITS).
//!
//! The host finds edu at 00:01.0 through the ECAM (`highmem-ecam=off` puts
//! it at 0x3f00_0000), gives its BAR 0 an address in the PCIe MMIO window
//! and enables it as a bus master. A DMA the SMMU blocks hands the device
//! zeros (read) or is dropped (write); so "blocked" is checked on the data,
//! and on the SMMU's fault report: around each DMA the host prints
//! `dma: expect fault: WHAT` or `dma: expect no fault: WHAT`, makes a
//! PAGE_QUERY (on which the hypervisor drains the SMMU's event queue, printing
//! one `hyp: SMMU fault:` line per fault) and prints `dma: end`. The xtask
//! step checks the fault lines between each pair.

use alloc::format;
use alloc::string::String;

use host_interface::{prot, HostCallId as C, PAGE_SHIFT, PAGE_SIZE};
use platform::qemu_virt;
use scenario::Tally;

use crate::edu::Edu;
use crate::ram::RamPool;
use crate::test_guest::op;
use crate::vm::{call, call_ok, take, TestVm};
use crate::{access, println};

/// The guest IPA where donated and shared test pages go.
const TEST_GFN: u64 = 0x4010_0000 >> PAGE_SHIFT;
/// SMCCC MEM_SHARE / MEM_UNSHARE (ABI.md 2).
const MEM_SHARE: u64 = 0xC600_0003;
/// Words in a page.
const WORDS: u64 = PAGE_SIZE / 8;

/// Read a 32-bit device register.
fn mmio_read32(pa: u64) -> u32 {
    // SAFETY: `pa` is a redistributor's register frame (which the
    // hypervisor emulates), in the low 4 GiB the test host maps
    // Device-nGnRE; no Rust object lives there.
    unsafe { (pa as *const u32).read_volatile() }
}

/// Write a 32-bit device register.
fn mmio_write32(pa: u64, v: u32) {
    // SAFETY: as in `mmio_read32`.
    unsafe { (pa as *mut u32).write_volatile(v) }
}

/// A page DMA bracketed by the markers the xtask step checks: the SMMU
/// should let it through (`fault` false) or block it.
fn attempt(edu: &Edu, what: &str, pa: u64, to_ram: bool, fault: bool) -> Result<(), String> {
    println!(
        "dma: expect {}fault: {what}",
        if fault { "" } else { "no " }
    );
    let r = edu.page(pa, to_ram);
    // PAGE_QUERY has the hypervisor drain the SMMU's events.
    let _ = call(C::PageQuery, &[0]);
    println!("dma: end");
    r
}

/// Word `i` of the test pattern `tag`.
fn pattern(tag: u64, i: u64) -> u64 {
    tag.rotate_left(i as u32) ^ (i * 0x0101_0101_0101_0101)
}

/// Fill the host page `pfn` with pattern `tag` (0: zeros).
fn fill(pfn: u64, tag: u64) -> Result<(), String> {
    for i in 0..WORDS {
        let v = if tag == 0 { 0 } else { pattern(tag, i) };
        access::write((pfn << PAGE_SHIFT) + 8 * i, v)
            .map_err(|_| format!("host write to pfn {pfn:#x} aborted"))?;
    }
    Ok(())
}

/// The host page `pfn` holds pattern `tag` (0: zeros).
fn holds(pfn: u64, tag: u64) -> Result<(), String> {
    for i in 0..WORDS {
        let want = if tag == 0 { 0 } else { pattern(tag, i) };
        let got = access::read((pfn << PAGE_SHIFT) + 8 * i)
            .map_err(|_| format!("host read of pfn {pfn:#x} aborted"))?;
        if got != want {
            return Err(format!(
                "pfn {pfn:#x} word {i}: {got:#x}, expected {want:#x} (pattern {tag:#x})"
            ));
        }
    }
    Ok(())
}

/// No word of the host page `pfn` comes from pattern `tag`.
fn has_none_of(pfn: u64, tag: u64) -> Result<(), String> {
    for i in 0..WORDS {
        let got = access::read((pfn << PAGE_SHIFT) + 8 * i)
            .map_err(|_| format!("host read of pfn {pfn:#x} aborted"))?;
        if got == pattern(tag, i) {
            return Err(format!("pfn {pfn:#x} word {i} holds the secret {got:#x}"));
        }
    }
    Ok(())
}

/// What the guest reads at word `i` of its page at `TEST_GFN + page`.
fn guest_read(vm: &mut TestVm, page: u64, i: u64) -> Result<u64, String> {
    vm.post(op::READ, ((TEST_GFN + page) << PAGE_SHIFT) + 8 * i, 0)?;
    let r = vm.run_through();
    vm.done(r)
}

/// The guest's page at `TEST_GFN + page` holds pattern `tag` (first, a
/// middle and the last word).
fn guest_holds(vm: &mut TestVm, page: u64, tag: u64) -> Result<(), String> {
    for i in [0, WORDS / 2 + 3, WORDS - 1] {
        let got = guest_read(vm, page, i)?;
        if got != pattern(tag, i) {
            return Err(format!(
                "the guest reads {got:#x} at word {i}, expected {:#x}",
                pattern(tag, i)
            ));
        }
    }
    Ok(())
}

/// PAGE_QUERY of `pfn` gives (owner, host state).
fn query(pfn: u64, want: (u64, u64)) -> Result<(), String> {
    let q = call_ok(C::PageQuery, &[pfn])?;
    if (q[2], q[3]) == want {
        Ok(())
    } else {
        Err(format!(
            "PAGE_QUERY {pfn:#x}: owner {} state {}, expected {want:?}",
            q[2], q[3]
        ))
    }
}

const HOST_OWNED: (u64, u64) = (0, 0);
const GUEST_NOPAGE: (u64, u64) = (2, 3);
const HYP_NOPAGE: (u64, u64) = (1, 3);

struct Checks {
    tally: Tally,
}

impl Checks {
    fn check_with(&mut self, what: &str, f: impl FnOnce() -> Result<(), String>) {
        self.check(what, f());
    }

    fn check(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.tally.passed += 1;
                println!("dma: ok: {what}");
            }
            Err(e) => {
                self.tally.failed += 1;
                println!("dma: FAILED {what}: {e}");
            }
        }
    }
}

/// Run every check; the tally counts one per check.
pub fn run(pool: &mut RamPool) -> Tally {
    let mut c = Checks {
        tally: Tally::default(),
    };
    let edu = match Edu::probe() {
        Ok(e) => e,
        Err(e) => {
            c.check("edu found and enabled", Err(e));
            return c.tally;
        }
    };
    c.check("edu found and enabled", Ok(()));
    if let Err(e) = device_checks(&edu, pool, &mut c) {
        c.check("setting up the DMA checks", Err(e));
    }
    withheld_checks(pool, &mut c);
    c.tally
}

fn device_checks(edu: &Edu, pool: &mut RamPool, c: &mut Checks) -> Result<(), String> {
    let a = take(pool, 1)?;
    let b = take(pool, 1)?;
    let scratch = take(pool, 1)?;

    // 1. A host page, both ways.
    c.check_with("host page, RAM to device and back", || {
        fill(a, 0xA1).and_then(|()| fill(b, 0))?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(edu, "device to host page", b << PAGE_SHIFT, true, false)?;
        holds(b, 0xA1)
    });

    // 2. A page donated to a protected VM: blocked both ways.
    let mut pvm = TestVm::create(pool, true)?;
    pvm.boot()?;
    let secret = take(pool, 1)?;
    fill(secret, 0x5EC2E7)?;
    call_ok(
        C::GuestDonate,
        &[pvm.handle, secret, TEST_GFN, 1, prot::MASK],
    )?;
    c.check(
        "the protected guest sees its secret",
        guest_holds(&mut pvm, 0, 0x5EC2E7),
    );
    c.check_with("device read of a protected guest's page", || {
        // Fill the device's buffer with a known pattern first, then let
        // the blocked read replace it, then copy it out.
        fill(a, 0xB2)?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(
            edu,
            "protected page to device",
            secret << PAGE_SHIFT,
            false,
            true,
        )?;
        fill(scratch, 0)?;
        attempt(
            edu,
            "device to host page",
            scratch << PAGE_SHIFT,
            true,
            false,
        )?;
        has_none_of(scratch, 0x5EC2E7)
    });
    c.check_with("device write into a protected guest's page", || {
        fill(a, 0xC3)?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(
            edu,
            "device to protected page",
            secret << PAGE_SHIFT,
            true,
            true,
        )?;
        guest_holds(&mut pvm, 0, 0x5EC2E7)
    });
    c.check(
        "PAGE_QUERY of the protected page",
        query(secret, GUEST_NOPAGE),
    );

    // 3. Hypervisor memory: the image, the host stage-2 tables, the SMMU's
    // own stream table.
    for (what, pa) in [
        ("hypervisor image", qemu_virt::HYP_BASE + 0x8_0000),
        ("host stage-2 tables", 0x4180_0000),
        ("SMMU stream table", 0x4300_0000),
    ] {
        c.check_with(&format!("device read of {what}"), || {
            fill(a, 0xD4)?;
            attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
            attempt(edu, what, pa, false, true)?;
            fill(scratch, 0)?;
            attempt(
                edu,
                "device to host page",
                scratch << PAGE_SHIFT,
                true,
                false,
            )?;
            // Blocked reads hand the device zeros: nothing of the
            // hypervisor's memory comes out.
            holds(scratch, 0)
        });
        c.check_with(&format!("device write into {what}"), || {
            fill(a, 0xE5)?;
            attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
            attempt(edu, what, pa, true, true)?;
            query(pa >> PAGE_SHIFT, HYP_NOPAGE)?;
            // The hypervisor still answers and still knows who owns what.
            query(a, HOST_OWNED)?;
            query(secret, GUEST_NOPAGE)
        });
    }

    // 4. A page shared into a normal VM: works both ways.
    let mut nvm = TestVm::create(pool, false)?;
    nvm.boot()?;
    let shared = take(pool, 1)?;
    call_ok(
        C::GuestShare,
        &[nvm.handle, shared, TEST_GFN, 1, prot::MASK],
    )?;
    c.check_with("device write into a page shared into a normal VM", || {
        fill(a, 0xF6)?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(
            edu,
            "device to shared page",
            shared << PAGE_SHIFT,
            true,
            false,
        )?;
        holds(shared, 0xF6)?;
        guest_holds(&mut nvm, 0, 0xF6)
    });

    // 5. The page the protected guest shares back (MEM_SHARE): works.
    c.check_with("device write into a page the guest shared", || {
        pvm.post_hvc([MEM_SHARE, (TEST_GFN << PAGE_SHIFT), 0, 0, 0, 0, 0])?;
        let r = pvm.run_through();
        match pvm.done(r)? {
            0 => {}
            x => return Err(format!("MEM_SHARE answered {x:#x}")),
        }
        // The two blocked DMAs above left the secret as it was.
        holds(secret, 0x5EC2E7)?;
        fill(a, 0x17)?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(
            edu,
            "device to guest-shared page",
            secret << PAGE_SHIFT,
            true,
            false,
        )?;
        guest_holds(&mut pvm, 0, 0x17)
    });

    // 6. Teardown: the donated page is reclaimable (blocked), then after
    // RECLAIM the host's again (works).
    pvm.teardown()?;
    c.check_with("device write into a page not yet reclaimed", || {
        attempt(
            edu,
            "device to reclaimable page",
            secret << PAGE_SHIFT,
            true,
            true,
        )
    });
    c.check_with("device write after VM_DESTROY + RECLAIM", || {
        call_ok(C::Reclaim, &[secret, 1])?;
        holds(secret, 0)?;
        fill(a, 0x28)?;
        attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
        attempt(
            edu,
            "device to reclaimed page",
            secret << PAGE_SHIFT,
            true,
            false,
        )?;
        holds(secret, 0x28)
    });

    // 7. A page the device has just used, donated: blocked at once (the
    // SMMU's TLB was invalidated before GUEST_DONATE returned).
    let used = take(pool, 1)?;
    c.check_with(
        "device write right after GUEST_DONATE of a page it used",
        || {
            fill(a, 0x39)?;
            attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
            attempt(edu, "device to host page", used << PAGE_SHIFT, true, false)?;
            holds(used, 0x39)?;
            fill(a, 0x4A)?;
            attempt(edu, "host page to device", a << PAGE_SHIFT, false, false)?;
            call_ok(
                C::GuestDonate,
                &[nvm.handle, used, TEST_GFN + 1, 1, prot::MASK],
            )?;
            attempt(
                edu,
                "device to just-donated page",
                used << PAGE_SHIFT,
                true,
                true,
            )?;
            guest_holds(&mut nvm, 1, 0x39)
        },
    );
    call_ok(C::GuestUnshare, &[nvm.handle, TEST_GFN, 1])?;
    nvm.teardown()?;
    call_ok(C::Reclaim, &[used, 1])?;
    c.check_with("every page back with the host", || {
        for p in [a, b, scratch, secret, shared, used] {
            query(p, HOST_OWNED)?;
        }
        Ok(())
    });
    Ok(())
}

/// The withheld bus masters: every access aborts, and the hypervisor's
/// view of memory is unchanged afterwards.
fn withheld_checks(pool: &mut RamPool, c: &mut Checks) {
    let Ok(target) = take(pool, 1) else {
        c.check("a page for the fw_cfg attack", Err("no RAM".into()));
        return;
    };
    let Ok(pvm) = TestVm::create(pool, true) else {
        c.check("a protected VM for the attacks", Err("VM_CREATE".into()));
        return;
    };
    let donated = take(pool, 1).and_then(|p| {
        fill(p, 0x5EC2E7)?;
        call_ok(C::GuestDonate, &[pvm.handle, p, TEST_GFN, 1, prot::MASK])?;
        Ok(p)
    });
    let Ok(donated) = donated else {
        c.check("a donated page for the attacks", Err("GUEST_DONATE".into()));
        return;
    };
    // fw_cfg's DMA interface: FWCfgDmaAccess at `target`, control = write
    // (bit 4), aimed at the donated page; the address register is at 0x10
    // (big-endian). Every access must abort.
    let fw = qemu_virt::FW_CFG_BASE;
    let desc = (target << PAGE_SHIFT).to_be();
    let _ = fill(target, 0);
    let _ = access::write(target << PAGE_SHIFT, (1u64 << 4).to_be() as u32 as u64);
    c.check_with("fw_cfg data register aborts", || match access::read(fw) {
        Err(_) => Ok(()),
        Ok(v) => Err(format!("fw_cfg read {v:#x}")),
    });
    c.check_with(
        "fw_cfg DMA address register aborts",
        || match access::write(fw + 0x10, desc) {
            Err(_) => Ok(()),
            Ok(()) => Err("fw_cfg DMA register written".into()),
        },
    );
    c.check_with("the SMMU's registers abort", || {
        let smmu = qemu_virt::SMMU_BASE;
        match (
            access::read(smmu),
            access::write(smmu + 0x40, 0),
            access::read(smmu + 0x1_00a8),
        ) {
            (Err(_), Err(_), Err(_)) => Ok(()),
            r => Err(format!("SMMU access answered {r:?}")),
        }
    });
    c.check_with("the ITS's registers abort", || {
        let its = qemu_virt::ITS_BASE;
        // GITS_CTLR, GITS_CBASER, GITS_BASER0.
        match (
            access::read(its),
            access::write(its + 0x80, target << PAGE_SHIFT),
            access::write(its + 0x100, target << PAGE_SHIFT),
        ) {
            (Err(_), Err(_), Err(_)) => Ok(()),
            r => Err(format!("ITS access answered {r:?}")),
        }
    });
    c.check_with("LPI tables of the redistributors refused", || {
        // CPU 0's RD_base frame: aim both LPI tables at the donated page
        // and enable LPIs; the hypervisor drops the bases and keeps
        // EnableLPIs at 0.
        let rd = qemu_virt::GICR_BASE;
        let page = donated << PAGE_SHIFT;
        access::write(rd + 0x70, page | 0xf)
            .and_then(|()| access::write(rd + 0x78, page))
            .map_err(|_| String::from("GICR_PROPBASER/PENDBASER write aborted"))?;
        mmio_write32(rd, mmio_read32(rd) | 1);
        let ctlr = mmio_read32(rd);
        let typer = access::read(rd + 0x8).map_err(|_| String::from("GICR_TYPER aborted"))?;
        let prop = access::read(rd + 0x70).map_err(|_| String::from("GICR_PROPBASER aborted"))?;
        let pend = access::read(rd + 0x78).map_err(|_| String::from("GICR_PENDBASER aborted"))?;
        if ctlr & 1 != 0 {
            return Err(format!("GICR_CTLR {ctlr:#x}: LPIs enabled"));
        }
        if typer & 1 != 0 {
            return Err(format!("GICR_TYPER {typer:#x} offers LPIs"));
        }
        if prop & !0xfff == page || pend & !0xfff == page {
            return Err(format!(
                "LPI tables point at the donated page: PROPBASER {prop:#x} PENDBASER {pend:#x}"
            ));
        }
        // The rest of the frame still works: GICR_WAKER reads.
        let _ = mmio_read32(rd + 0x14);
        Ok(())
    });
    c.check_with("PAGE_QUERY after the attacks", || {
        query(donated, GUEST_NOPAGE)?;
        query(target, HOST_OWNED)?;
        query(qemu_virt::HYP_BASE >> PAGE_SHIFT, HYP_NOPAGE)
    });
    c.check_with("the protected VM tears down", || {
        pvm.teardown()
            .and_then(|()| call_ok(C::Reclaim, &[donated, 1]).map(|_| ()))
    });
}
