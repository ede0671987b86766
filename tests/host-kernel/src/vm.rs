//! A VM running the test guest, for the bench and fuzz modes: created the
//! way the scenario interpreter's `vm` and `vcpu` statements create one
//! (VM_CREATE with 8 pages, VM_TOPUP with 64, a run page shared with the
//! hypervisor, VCPU_CREATE), with the test guest ([`test_guest`]) given to
//! it at `GUEST_BASE` like the scenario machine's `boot` does (GUEST_SHARE
//! into a normal VM, GUEST_DONATE into a protected one).
//!
//! Everything here that touches host memory goes through [`access`], whose
//! abort flag is global: only one CPU may use it at a time. [`TestVm::run`]
//! is a host call only, so another CPU may run the vCPU.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::offset_of;

use host_interface::{prot, vm_flags, ExitReason, HostCallId, RunPage, PAGE_SHIFT, PAGE_SIZE};

use crate::ram::RamPool;
use crate::{access, arch, test_guest};

/// Pages VM_CREATE gets (as the scenario interpreter's `vm`).
const CREATE_PAGES: u64 = 8;
/// Pages VM_TOPUP gets (as the scenario interpreter's `vm`).
const TOPUP_PAGES: u64 = 64;

/// Host call `id` with `args` in x1.., the other registers zero: its
/// answer ([`arch::host_call_answer`]).
pub fn call(id: HostCallId, args: &[u64]) -> [u64; 5] {
    let mut regs = [0u64; 7];
    regs[0] = u64::from(id.id());
    regs[1..=args.len()].copy_from_slice(args);
    arch::host_call_answer(regs)
}

/// Host call `id` with `args`, which must succeed (x0 = 0, x1 = 0).
pub fn call_ok(id: HostCallId, args: &[u64]) -> Result<[u64; 5], String> {
    let r = call(id, args);
    if r[0] == 0 && r[1] == 0 {
        Ok(r)
    } else {
        let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
        Err(format!(
            "{} [{}] answered x0 {:#x} x1 {:#x}",
            id.name(),
            args.join(", "),
            r[0],
            r[1]
        ))
    }
}

/// `pages` pages of free RAM.
pub fn take(pool: &mut RamPool, pages: u64) -> Result<u64, String> {
    pool.take_low(pages, 1)
        .ok_or_else(|| format!("no {pages} free RAM pages"))
}

/// Where [`TestVm::create_with`] puts extra guest code: the fifth page of
/// the guest's image.
pub const EXTRA_CODE_IPA: u64 = test_guest::GUEST_BASE + 0x4000;

/// A VM with one vCPU whose run page starts the test guest.
pub struct TestVm {
    /// The VM handle.
    pub handle: u64,
    /// The vCPU index.
    pub vcpu: u64,
    /// The run page's pfn.
    run: u64,
    /// First pfn of the guest's pages (its code, then the mailbox).
    image: u64,
    /// First pfns of the pages VM_CREATE and VM_TOPUP got.
    meta: u64,
    topup: u64,
    protected: bool,
    /// Sequence number of the last command posted.
    seq: u64,
}

impl TestVm {
    /// Create the VM and its vCPU, give it the test guest and set its entry
    /// point; the guest has not run yet ([`TestVm::boot`]).
    pub fn create(pool: &mut RamPool, protected: bool) -> Result<TestVm, String> {
        let flags = if protected { vm_flags::PROTECTED } else { 0 };
        Self::create_with(pool, flags, &[])
    }

    /// [`TestVm::create`] with VM_CREATE `flags`, and `extra` code placed
    /// at [`EXTRA_CODE_IPA`] in the guest's image before the VM gets it
    /// (a protected VM's host cannot write it afterwards).
    pub fn create_with(pool: &mut RamPool, flags: u64, extra: &[u8]) -> Result<TestVm, String> {
        use HostCallId as C;
        let protected = flags & vm_flags::PROTECTED != 0;
        let meta = take(pool, CREATE_PAGES)?;
        let handle = call_ok(C::VmCreate, &[flags, meta, CREATE_PAGES])?[2];
        let topup = take(pool, TOPUP_PAGES)?;
        call_ok(C::VmTopup, &[handle, topup, TOPUP_PAGES])?;
        let run = take(pool, 1)?;
        access::fill(run << PAGE_SHIFT, PAGE_SIZE, 0)
            .map_err(|_| String::from("cannot clear the run page"))?;
        call_ok(C::ShareHyp, &[run, 1])?;
        let vcpu = call_ok(C::VcpuCreate, &[handle, run])?[2];
        let image = take(pool, test_guest::GUEST_PAGES)?;
        test_guest::install(image << PAGE_SHIFT)?;
        if !extra.is_empty() {
            let at = (image << PAGE_SHIFT) + (EXTRA_CODE_IPA - test_guest::GUEST_BASE);
            if extra.len() as u64 > PAGE_SIZE {
                return Err("the extra guest code does not fit in a page".into());
            }
            access::fill(at, PAGE_SIZE, 0)
                .and_then(|()| test_guest::copy_code(at, extra))
                .map_err(|_| String::from("cannot write the extra guest code"))?;
            arch::dcache_clean(at as usize, (at + PAGE_SIZE) as usize);
        }
        let give = if protected {
            C::GuestDonate
        } else {
            C::GuestShare
        };
        call_ok(
            give,
            &[
                handle,
                image,
                test_guest::GUEST_BASE >> PAGE_SHIFT,
                test_guest::GUEST_PAGES,
                prot::MASK,
            ],
        )?;
        let vm = TestVm {
            handle,
            vcpu,
            run,
            image,
            meta,
            topup,
            protected,
            seq: 0,
        };
        vm.set_run_field(offset_of!(RunPage, entry), test_guest::GUEST_BASE)?;
        vm.set_run_field(
            offset_of!(RunPage, x0),
            test_guest::GUEST_BASE + test_guest::MAILBOX_OFFSET,
        )?;
        Ok(vm)
    }

    /// VCPU_RUN of the vCPU: x0..x4 of the answer. A host call only: any
    /// CPU may make it.
    pub fn run(&self) -> [u64; 5] {
        call(HostCallId::VcpuRun, &[self.handle, self.vcpu])
    }

    /// VCPU_RUN again after every INTERRUPTED exit (the hypervisor's time
    /// slice may end any run): the first other answer.
    pub fn run_through(&self) -> [u64; 5] {
        loop {
            let r = self.run();
            if r != [0, 0, ExitReason::Interrupted as u64, 0, 0] {
                return r;
            }
        }
    }

    /// First run: the guest must report READY.
    pub fn boot(&self) -> Result<(), String> {
        let r = self.run_through();
        self.expect_exit(r, ExitReason::Hvc)?;
        match self.hvc_arg(0) {
            test_guest::TG_READY => Ok(()),
            x0 => Err(format!("the guest's first exit was HVC {x0:#x}, not READY")),
        }
    }

    /// Post command `op` (a [`test_guest::op`]) with `ipa` and `value` in
    /// the mailbox, for the guest's next run.
    pub fn post(&mut self, op: u64, ipa: u64, value: u64) -> Result<(), String> {
        use test_guest::mailbox;
        let mb = self.mailbox();
        self.seq += 1;
        let ok = access::write(mb + mailbox::OP, op).is_ok()
            && access::write(mb + mailbox::IPA, ipa).is_ok()
            && access::write(mb + mailbox::VALUE, value).is_ok()
            && access::write(mb + mailbox::SEQ, self.seq).is_ok();
        if !ok {
            return Err("the host cannot write the guest's mailbox".into());
        }
        // The guest reads it with its MMU off.
        arch::dcache_clean(mb as usize, (mb + 32) as usize);
        Ok(())
    }

    /// Post an HVC command: the guest calls `hvc #0` with `regs` in x0..x6
    /// and reports x0 with DONE.
    pub fn post_hvc(&mut self, regs: [u64; 7]) -> Result<(), String> {
        let mb = self.mailbox();
        for (k, v) in regs.iter().enumerate() {
            access::write(mb + test_guest::mailbox::REGS + 8 * k as u64, *v)
                .map_err(|_| String::from("the host cannot write the guest's mailbox"))?;
        }
        arch::dcache_clean(mb as usize, (mb + 96) as usize);
        self.post(test_guest::op::HVC, 0, 0)
    }

    /// VM_DESTROY, then every page the VM had back with the host: RECLAIM
    /// of what it owned (its metadata and pool, a protected VM's image),
    /// UNSHARE_HYP of the run page; each page must then be host-owned.
    pub fn teardown(self) -> Result<(), String> {
        use HostCallId as C;
        call_ok(C::VmDestroy, &[self.handle])?;
        call_ok(C::Reclaim, &[self.meta, CREATE_PAGES])?;
        call_ok(C::Reclaim, &[self.topup, TOPUP_PAGES])?;
        if self.protected {
            call_ok(C::Reclaim, &[self.image, test_guest::GUEST_PAGES])?;
        }
        call_ok(C::UnshareHyp, &[self.run, 1])?;
        let ranges = [
            (self.meta, CREATE_PAGES),
            (self.topup, TOPUP_PAGES),
            (self.image, test_guest::GUEST_PAGES),
            (self.run, 1),
        ];
        for (first, n) in ranges {
            for pfn in first..first + n {
                let q = call_ok(C::PageQuery, &[pfn])?;
                if q[2..4] != [0, 0] {
                    return Err(format!(
                        "pfn {pfn:#x} after teardown: owner {}, host state {}",
                        q[2], q[3]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The VCPU_RUN answer `r` must be a success with exit `want`.
    pub fn expect_exit(&self, r: [u64; 5], want: ExitReason) -> Result<(), String> {
        if r == [0, 0, want as u64, 0, 0] {
            Ok(())
        } else {
            let [x0, x1, x2, x3, x4] = r;
            Err(format!(
                "VCPU_RUN of VM {} answered [{x0:#x}, {x1:#x}, {x2:#x}, {x3:#x}, {x4:#x}], not exit {} ({}); run page exit reason {:#x}",
                self.handle,
                want.name(),
                want as u64,
                self.run_field(offset_of!(RunPage, exit_reason))
            ))
        }
    }

    /// The VCPU_RUN answer `r` must be the guest's DONE report: its result.
    pub fn done(&self, r: [u64; 5]) -> Result<u64, String> {
        self.expect_exit(r, ExitReason::Hvc)?;
        match self.hvc_arg(0) {
            test_guest::TG_DONE => Ok(self.hvc_arg(1)),
            x0 => Err(format!("the guest exited with HVC {x0:#x}, not DONE")),
        }
    }

    /// x`k` of the guest's last HVC exit.
    pub fn hvc_arg(&self, k: usize) -> u64 {
        self.run_field(offset_of!(RunPage, hvc_args) + 8 * k)
    }

    /// The IPA of the last MMIO or MEM_FAULT exit.
    pub fn fault_ipa(&self) -> u64 {
        self.run_field(offset_of!(RunPage, fault_ipa))
    }

    /// Physical address of the guest's image (its first page).
    pub fn image_pa(&self) -> u64 {
        self.image << PAGE_SHIFT
    }

    /// Whether the host can still read the guest's mailbox (a protected
    /// guest may have unshared it).
    pub fn mailbox_reachable(&self) -> bool {
        access::read(self.mailbox()).is_ok()
    }

    /// Physical address of the guest's mailbox.
    fn mailbox(&self) -> u64 {
        (self.image << PAGE_SHIFT) + test_guest::MAILBOX_OFFSET
    }

    /// The run page's word at byte offset `off` (`u64::MAX` if unreadable).
    pub fn run_field(&self, off: usize) -> u64 {
        access::read((self.run << PAGE_SHIFT) + off as u64).unwrap_or(u64::MAX)
    }

    /// Write the run page's word at byte offset `off`.
    pub fn set_run_field(&self, off: usize, v: u64) -> Result<(), String> {
        access::write((self.run << PAGE_SHIFT) + off as u64, v)
            .map_err(|_| String::from("cannot write the run page"))
    }
}
