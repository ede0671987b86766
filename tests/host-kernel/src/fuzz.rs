//! `fuzz` mode: random host calls from every CPU at once (up to
//! [`MAX_CPUS`]), then checks that the hypervisor still answers correctly.
//!
//! CPU 0 starts the others with PSCI CPU_ON (the hypervisor traps the SMC
//! and starts each CPU through its own EL2 entry; `entry`'s
//! `secondary_entry` then brings it up at EL1 on its own stack). Each CPU
//! makes [`TOTAL_CALLS`] / (number of CPUs) host calls drawn
//! from its own xorshift generator: a known function ID 80% of the time
//! (weighted by [`CALL_WEIGHTS`]), otherwise an ID of the host-call range or
//! any 64-bit value; each argument
//! register is, at random, 0, a small number, a VM handle, a random value or
//! a pfn — of the CPU's own arena (256 pages of free RAM nobody else uses),
//! the hypervisor's region, the COHERENT or MMIO regions, or around the PA
//! limit. Never any other pfn of host RAM: a call that gave away the test
//! host's own code, stacks, heap or another CPU's arena would break the
//! test host, not the hypervisor ([`Plan::sanitize`]).
//!
//! Every answer is classified (ok, each errno, NOT_SUPPORTED); an answer
//! that breaks ABI.md 1's return convention is "malformed" and fails the
//! run; every call also goes through [`arch::smccc_call`], which stops the
//! run if a register the caller keeps under SMCCC (x4..x30, or x1..x30 for
//! an unknown ID) changed. Then CPU 0 checks the hypervisor: HYP_VERSION, SHARE_HYP /
//! PAGE_QUERY / UNSHARE_HYP of a fresh page, host reads of its arena, a
//! read of the hypervisor's memory; then it destroys every VM, reclaims and
//! unshares the arenas and checks that every arena page is the host's
//! again. Only CPU 0 makes host accesses.
//!
//! Before those checks, once every CPU has made its random calls, a
//! guest spinning at EL1 on CPU 1 must not stop hypercalls on CPU 0
//! ([`spinning_guest`]): CPU 1 runs a normal VM's test guest on code that
//! never traps, and CPU 0 makes [`SPIN_CALLS`] host calls meanwhile. The
//! checks after it run with CPU 1 still in that guest.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use host_interface::{prot, Errno, ExitReason, HostCallId, MAX_PAGES_PER_CALL, PAGE_SHIFT};
use scenario::Tally;

use crate::ram::RamPool;
use crate::vm::{self, call, TestVm};
use crate::{access, arch, entry, fdt, println, test_guest};

/// The most CPUs that fuzz: the boot CPU and one per secondary stack.
pub const MAX_CPUS: usize = 1 + entry::SECONDARY_STACKS;
/// Host calls of all CPUs together, shared out evenly.
pub const TOTAL_CALLS: u32 = 40_000;
/// Pages in each CPU's arena.
const ARENA_PAGES: u64 = 256;
/// The low half of the CPU_ON context of a fuzzing CPU (its stack slot is
/// the high half).
const FUZZ_TAG: u32 = 1;
/// How long CPU 0 waits for the others to start and to finish, in seconds
/// of the generic counter.
const TIMEOUT_SECONDS: u64 = 120;
/// An address inside the hypervisor's region: host reads of it abort.
const HYP_ADDRESS: u64 = 0x4200_0000;
/// Host calls CPU 0 makes while CPU 1 runs the spinning guest.
const SPIN_CALLS: usize = 100;
/// How long those calls may take in all, in seconds of the generic counter.
const SPIN_CALLS_SECONDS: u64 = 2;
/// Counter ticks CPU 0 waits after the guest has started spinning.
const SPIN_SETTLE_TICKS: u64 = 4_000_000;
/// How long the guest spins, in seconds of the generic counter: far longer
/// than the rest of the run, so CPU 1 stays in the guest until the machine
/// is powered off. It is not endless so that a hypervisor that kept a lock
/// while the guest runs (CPU 0's calls would wait at EL2, where nothing at
/// EL1 can time them out) fails this test after that long instead of
/// hanging the run.
const SPIN_SECONDS: u64 = 10;
/// How long CPU 0 waits for CPU 1 to enter the guest, and for the guest to
/// reach the spinning code, in seconds of the generic counter.
const SPIN_START_SECONDS: u64 = 10;
/// IPA of the spinning code's page in the guest.
const SPIN_IPA: u64 = 0x5000_0000;

/// One pfn range `[first, end)` the generator draws from.
type Span = (u64, u64);

/// Generator seed of CPU `cpu` (never zero).
fn seed(cpu: usize) -> u64 {
    const SEEDS: [u64; 2] = [0x9E37_79B9_7F4A_7C15, 0xD1B5_4A32_D192_ED03];
    match SEEDS.get(cpu) {
        Some(&s) => s,
        // SplitMix64's finalizer of the index: distinct, well mixed.
        None => {
            let mut z = (cpu as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).max(1)
        }
    }
}

/// What a CPU's fuzz run needs, fixed before the secondaries start.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The generator's seed (not zero).
    seed: u64,
    /// Host calls to make.
    calls: u32,
    /// The CPU's arena: `ARENA_PAGES` pages from this pfn.
    arena: u64,
    /// Host RAM (pfn ranges, the hypervisor's and the COHERENT region
    /// left out): never named outside the arena.
    ram: Vec<Span>,
    /// The hypervisor's region, COHERENT, MMIO, MMIO (uncached).
    regions: [Span; 4],
    /// First pfn beyond the PA space.
    pa_limit: u64,
}

/// Answer classes: ok, each errno, NOT_SUPPORTED, malformed.
const CLASSES: usize = 2 + Errno::ALL.len() + 1;
const OK: usize = 0;
const NOT_SUPPORTED: usize = 1 + Errno::ALL.len();
const MALFORMED: usize = CLASSES - 1;

/// Known calls (the order of [`HostCallId::ALL`]).
const KNOWN: usize = HostCallId::ALL.len();

/// What one CPU saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Report {
    /// Calls made.
    calls: u64,
    /// Answers per class.
    counts: [u64; CLASSES],
    /// Successful calls per known call.
    ok_by_call: [u64; KNOWN],
    /// The first malformed answer: the call's x0..x6, then x0..x4.
    first_malformed: Option<([u64; 7], [u64; 5])>,
    /// The generic counter before the first call and after the last.
    span: (u64, u64),
}

/// A [`Report`] as words, for a secondary CPU to hand over through atomics.
const REPORT_WORDS: usize = 1 + CLASSES + KNOWN + 1 + 12 + 2;

impl Report {
    fn line(&self) -> String {
        let mut s = format!("ok {}", self.counts[OK]);
        for (i, e) in Errno::ALL.iter().enumerate() {
            s.push_str(&format!(", {} {}", e.name(), self.counts[1 + i]));
        }
        s.push_str(&format!(
            ", NOT_SUPPORTED {}, malformed {}",
            self.counts[NOT_SUPPORTED], self.counts[MALFORMED]
        ));
        s
    }

    fn ok_line(&self) -> String {
        let items: Vec<String> = HostCallId::ALL
            .iter()
            .zip(self.ok_by_call)
            .map(|(c, n)| format!("{} {n}", c.name()))
            .collect();
        items.join(", ")
    }

    fn to_words(self) -> [u64; REPORT_WORDS] {
        let (call, answer) = self.first_malformed.unwrap_or_default();
        let mut words = [0; REPORT_WORDS];
        let values = [self.calls]
            .into_iter()
            .chain(self.counts)
            .chain(self.ok_by_call)
            .chain([u64::from(self.first_malformed.is_some())])
            .chain(call)
            .chain(answer)
            .chain([self.span.0, self.span.1]);
        for (w, v) in words.iter_mut().zip(values) {
            *w = v;
        }
        words
    }

    fn from_words(words: [u64; REPORT_WORDS]) -> Report {
        let mut it = words.into_iter();
        let mut next = || it.next().unwrap_or(0);
        let mut r = Report {
            calls: next(),
            ..Report::default()
        };
        r.counts = core::array::from_fn(|_| next());
        r.ok_by_call = core::array::from_fn(|_| next());
        let malformed = next() != 0;
        let call: [u64; 7] = core::array::from_fn(|_| next());
        let answer: [u64; 5] = core::array::from_fn(|_| next());
        r.first_malformed = malformed.then_some((call, answer));
        r.span = (next(), next());
        r
    }

    /// Secondary `slot`: hand the report to CPU 0 (before setting its
    /// [`Secondary::done`]).
    fn publish(self, slot: &Secondary) {
        for (word, w) in slot.report.iter().zip(self.to_words()) {
            word.store(w, Ordering::Relaxed);
        }
    }

    /// CPU 0: a secondary's report (after seeing its `done`).
    fn published(slot: &Secondary) -> Report {
        Report::from_words(core::array::from_fn(|i| {
            slot.report[i].load(Ordering::Relaxed)
        }))
    }
}

/// A secondary CPU's side, by stack slot (CPU `slot + 1`): its plan (set
/// before CPU_ON), whether it started, and its report (written before
/// `done`).
struct Secondary {
    plan: AtomicPtr<Plan>,
    started: AtomicBool,
    done: AtomicBool,
    report: [AtomicU64; REPORT_WORDS],
}

static SECONDARIES: [Secondary; MAX_CPUS - 1] = [const {
    Secondary {
        plan: AtomicPtr::new(core::ptr::null_mut()),
        started: AtomicBool::new(false),
        done: AtomicBool::new(false),
        report: [const { AtomicU64::new(0) }; REPORT_WORDS],
    }
}; MAX_CPUS - 1];
/// The highest VM handle any CPU saw.
static MAX_HANDLE: AtomicU64 = AtomicU64::new(0);

// The spinning-guest test: the VM and vCPU CPU 1 runs (set by CPU 0 once
// they are ready; `NO_VM` if CPU 0 could not set them up), CPU 1's progress
// (`SPIN_*`) and the VCPU_RUN answer that ended it, if one did.
static SPIN_VM: AtomicU64 = AtomicU64::new(0);
static SPIN_VCPU: AtomicU64 = AtomicU64::new(0);
static SPIN_STATE: AtomicU64 = AtomicU64::new(SPIN_IDLE);
static SPIN_ANSWER: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// CPU 1 has not started on the spinning guest.
const SPIN_IDLE: u64 = 0;
/// The first VCPU_RUN (the guest's boot) did not answer with an HVC exit.
const SPIN_BOOT_FAILED: u64 = 1;
/// CPU 1 is about to make (or is in) the VCPU_RUN that runs the spin.
const SPIN_ENTERING: u64 = 2;
/// That VCPU_RUN returned.
const SPIN_RETURNED: u64 = 3;
/// `SPIN_VM` when CPU 0 gave the test up.
const NO_VM: u64 = u64::MAX;

/// VM handles a CPU remembers.
const LIVE: usize = 8;

/// One CPU's generator: an xorshift64* state (Vigna: small, fast, good
/// enough to pick arguments) and the VM handles this CPU created and has
/// not destroyed (0 = free slot). The guest fuzzer ([`crate::guest_fuzz`])
/// draws from it too.
pub(crate) struct Rng {
    state: u64,
    live: [u64; LIVE],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng {
            state: seed.max(1),
            live: [0; LIVE],
        }
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent`% of the time.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What an argument register of a known call stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not used by the call: must be zero.
    Unused,
    Pfn,
    /// GUEST_MAP_DEVICE's pfn: mostly MMIO or COHERENT.
    DevicePfn,
    Nr,
    Handle,
    Vcpu,
    Gfn,
    Prot,
    DeviceProt,
    Flags,
}

/// The roles of x1..x6 for `call`.
fn roles(call: HostCallId) -> [Role; 6] {
    use HostCallId as C;
    use Role::*;
    let r: &[Role] = match call {
        C::HypVersion | C::HypFeatures => &[],
        C::PageQuery => &[Pfn],
        C::ShareHyp | C::UnshareHyp | C::Reclaim => &[Pfn, Nr],
        C::VmCreate => &[Flags, Pfn, Nr],
        C::VmTopup => &[Handle, Pfn, Nr],
        C::VcpuCreate => &[Handle, Pfn],
        C::VcpuRun => &[Handle, Vcpu],
        C::VmDestroy => &[Handle],
        C::GuestShare | C::GuestDonate => &[Handle, Pfn, Gfn, Nr, Prot],
        C::GuestMapDevice => &[Handle, DevicePfn, Gfn, Nr, DeviceProt],
        C::GuestUnshare | C::GuestUnmapDevice => &[Handle, Gfn, Nr],
    };
    let mut out = [Unused; 6];
    out[..r.len()].copy_from_slice(r);
    out
}

/// Which registers (indices into x0..x6) hold a call's host pfn and page
/// count; a count of `None` means one page.
fn pfn_and_count(call: HostCallId) -> Option<(usize, Option<usize>)> {
    let roles = roles(call);
    let pfn = roles
        .iter()
        .position(|&r| matches!(r, Role::Pfn | Role::DevicePfn))?
        + 1;
    let nr = roles.iter().position(|&r| r == Role::Nr).map(|i| i + 1);
    Some((pfn, nr))
}

impl Plan {
    fn arena_end(&self) -> u64 {
        self.arena + ARENA_PAGES
    }

    fn in_arena(&self, pfn: u64) -> bool {
        (self.arena..self.arena_end()).contains(&pfn)
    }

    /// The first pfn of `[pfn, pfn + nr)` that is host RAM outside the
    /// arena, if any.
    fn first_forbidden(&self, pfn: u64, nr: u64) -> Option<u64> {
        let end = pfn.saturating_add(nr);
        self.ram
            .iter()
            .filter_map(|&(s, e)| {
                let (lo, hi) = (pfn.max(s), end.min(e));
                if lo >= hi {
                    None
                } else if !self.in_arena(lo) {
                    Some(lo)
                } else {
                    (self.arena_end() < hi).then_some(self.arena_end())
                }
            })
            .min()
    }

    /// A pfn the generator may name: mostly the arena, else one of the
    /// regions or around the PA limit.
    fn target_pfn(&self, rng: &mut Rng) -> u64 {
        match rng.below(10) {
            0..=5 => self.arena + rng.below(ARENA_PAGES),
            6..=8 => {
                let (s, e) = self.regions[rng.below(self.regions.len() as u64) as usize];
                if e > s {
                    rng.between(s, e - 1)
                } else {
                    self.arena
                }
            }
            _ => self
                .pa_limit
                .saturating_sub(8)
                .saturating_add(rng.below(608)),
        }
    }

    /// A value of any kind: 0, a small number (1..=600), a VM handle, a
    /// random value or a pfn.
    fn any_value(&self, rng: &mut Rng) -> u64 {
        match rng.below(20) {
            0..=3 => 0,
            4..=7 => rng.between(1, 600),
            8..=10 => rng.handle(),
            11..=13 => rng.next(),
            _ => self.target_pfn(rng),
        }
    }

    /// A value for a register with role `role`: mostly a plausible one.
    fn value(&self, role: Role, rng: &mut Rng) -> u64 {
        if role == Role::Unused {
            return if rng.chance(97) {
                0
            } else {
                self.any_value(rng)
            };
        }
        if rng.chance(15) {
            return self.any_value(rng);
        }
        match role {
            Role::Unused => 0,
            Role::Pfn => self.target_pfn(rng),
            Role::DevicePfn => {
                // COHERENT, MMIO, MMIO (uncached).
                let (s, e) = self.regions[rng.between(1, 3) as usize];
                if e > s && rng.chance(70) {
                    rng.between(s, e - 1)
                } else {
                    self.target_pfn(rng)
                }
            }
            Role::Nr => match rng.below(20) {
                0..=9 => rng.between(1, 4),
                10..=15 => rng.between(1, 16),
                16 => MAX_PAGES_PER_CALL,
                _ => rng.between(1, 600),
            },
            Role::Handle => rng.handle(),
            Role::Vcpu => rng.below(4),
            // Mostly a few low gfns, so that calls meet each other's
            // mappings (EEXIST, GUEST_UNSHARE of a shared gfn).
            Role::Gfn => match rng.below(10) {
                0..=4 => rng.below(32),
                5..=6 => rng.below(1024),
                7..=8 => rng.below(1 << 28),
                _ => (1 << 28) - 8 + rng.below(16),
            },
            Role::Prot => {
                let prot = 1 | (rng.below(4) << 1);
                match rng.below(10) {
                    0..=7 => prot,
                    8 => prot | (rng.below(4) << 8),
                    _ => prot ^ (1 << rng.below(64)),
                }
            }
            Role::DeviceProt => {
                let v = 1 | (rng.below(4) << 1) | (rng.below(4) << 8);
                if rng.chance(15) {
                    v ^ (1 << rng.below(64))
                } else {
                    v
                }
            }
            Role::Flags => {
                if rng.chance(90) {
                    rng.below(4)
                } else {
                    rng.next()
                }
            }
        }
    }

    /// A random call: x0..x6.
    fn call(&self, rng: &mut Rng) -> [u64; 7] {
        let mut regs = [0u64; 7];
        let known = match rng.below(10) {
            0..=7 => Some(weighted_call(rng)),
            _ => None,
        };
        match known {
            Some(call) => {
                regs[0] = u64::from(call.id());
                for (r, role) in regs[1..].iter_mut().zip(roles(call)) {
                    *r = self.value(role, rng);
                }
            }
            None => {
                regs[0] = if rng.chance(50) {
                    0xC600_0100 + rng.below(0x100)
                } else {
                    rng.next()
                };
                for r in &mut regs[1..] {
                    *r = self.any_value(rng);
                }
            }
        }
        self.sanitize(&mut regs);
        regs
    }

    /// Keep host RAM outside the arena out of a call that could act on it:
    /// its pfn is never such a page (replaced by an arena page), and when
    /// its count is one the hypervisor may act on (1..=512) the whole range
    /// stays clear (the count is cut short). Counts outside 1..=512 are left
    /// as they are: the hypervisor must refuse them (-EINVAL) whatever the
    /// pfn.
    fn sanitize(&self, regs: &mut [u64; 7]) {
        let Some(call) = HostCallId::from_id(regs[0]) else {
            return;
        };
        let Some((p, n)) = pfn_and_count(call) else {
            return;
        };
        if self.first_forbidden(regs[p], 1).is_some() {
            regs[p] = self.arena + (regs[p] % ARENA_PAGES);
        }
        let nr = n.map_or(1, |n| regs[n]);
        if (1..=MAX_PAGES_PER_CALL).contains(&nr) {
            if let (Some(stop), Some(n)) = (self.first_forbidden(regs[p], nr), n) {
                // regs[p] itself is allowed, so stop > regs[p].
                regs[n] = stop - regs[p];
            }
        }
    }
}

/// How often each known call is picked, in the order of
/// [`HostCallId::ALL`]: calls that build state (VMs, shares, donations,
/// guest mappings) more often than VM_DESTROY, so that VMs live long enough
/// for the GUEST_* calls to reach them.
const CALL_WEIGHTS: [u64; KNOWN] = [8, 4, 12, 16, 16, 32, 12, 12, 12, 1, 16, 24, 16, 24, 20, 16];

/// A known call, by [`CALL_WEIGHTS`].
fn weighted_call(rng: &mut Rng) -> HostCallId {
    let mut pick = rng.below(CALL_WEIGHTS.iter().sum());
    for (call, w) in HostCallId::ALL.iter().zip(CALL_WEIGHTS) {
        if pick < w {
            return *call;
        }
        pick -= w;
    }
    HostCallId::HypVersion
}

impl Rng {
    /// A VM handle: one this CPU created (and has not destroyed), one near
    /// the highest either CPU has seen (the hypervisor numbers VMs from 1
    /// and never reuses a handle), or one of 1..=8.
    fn handle(&mut self) -> u64 {
        let n = self.live.iter().filter(|&&h| h != 0).count() as u64;
        let pick = self.below(n.max(1)) as usize;
        let live = self.live.iter().copied().filter(|&h| h != 0).nth(pick);
        let live = live.unwrap_or(0);
        let max = MAX_HANDLE.load(Ordering::Relaxed);
        match self.below(10) {
            0..=4 if live != 0 => live,
            0..=6 if max > 4 => self.between(max - 4, max + 1),
            _ => self.between(1, 8),
        }
    }

    /// Note the answer to a successful call: VM handles come and go.
    fn note(&mut self, regs: &[u64; 7], answer: &[u64; 5]) {
        if regs[0] == u64::from(HostCallId::VmCreate.id()) {
            MAX_HANDLE.fetch_max(answer[2], Ordering::Relaxed);
            let slot = self.below(LIVE as u64) as usize;
            self.live[slot] = answer[2];
        } else if regs[0] == u64::from(HostCallId::VmDestroy.id()) {
            for h in &mut self.live {
                if *h == regs[1] {
                    *h = 0;
                }
            }
        }
    }
}

/// The class of `answer` to the call `regs`, by ABI.md 1's return
/// convention and the outputs each call defines.
fn classify(regs: &[u64; 7], answer: &[u64; 5]) -> usize {
    let [x0, x1, x2, x3, x4] = *answer;
    let call = HostCallId::from_id(regs[0]);
    // x4 is an output of HYP_FEATURES and PAGE_QUERY only; every other
    // known call leaves the caller's x4 (SMCCC), which is what "no output"
    // means for it.
    let x4_output = matches!(call, Some(HostCallId::HypFeatures | HostCallId::PageQuery));
    let x4_none = if x4_output { 0 } else { regs[4] };
    match (call, x0) {
        // An unknown ID changes x0 only.
        (None, u64::MAX) if [x1, x2, x3, x4] == [regs[1], regs[2], regs[3], regs[4]] => {
            NOT_SUPPORTED
        }
        (Some(call), 0) if x1 == 0 => {
            use HostCallId as C;
            let outputs_ok = match call {
                C::HypVersion => [x2, x3, x4] == [0x1_0000, 0, x4_none],
                C::HypFeatures => x2 & !0x1f == 0,
                C::PageQuery => x2 <= 3 && x3 <= 3 && x4 <= 3,
                C::VmCreate => x2 >= 1 && [x3, x4] == [0, x4_none],
                C::VcpuCreate => [x3, x4] == [0, x4_none],
                C::VcpuRun => ExitReason::from_u64(x2).is_some() && x4 == x4_none,
                _ => [x2, x3, x4] == [0, 0, x4_none],
            };
            if outputs_ok {
                OK
            } else {
                MALFORMED
            }
        }
        (Some(_), 0) => match Errno::from_x1(x1) {
            Some(e) if [x2, x3, x4] == [0, 0, x4_none] => {
                1 + Errno::ALL.iter().position(|&a| a == e).unwrap_or(0)
            }
            _ => MALFORMED,
        },
        _ => MALFORMED,
    }
}

/// Make `plan.calls` random calls with `plan`.
fn fuzz(plan: &Plan) -> Report {
    let mut rng = Rng::new(plan.seed);
    let mut report = Report::default();
    report.span.0 = arch::cntvct();
    for _ in 0..plan.calls {
        let regs = plan.call(&mut rng);
        let answer = arch::hvc_host_call(regs);
        let class = classify(&regs, &answer);
        if class == OK {
            let known = HostCallId::ALL
                .iter()
                .position(|c| u64::from(c.id()) == regs[0]);
            if let Some(i) = known {
                report.ok_by_call[i] += 1;
            }
            rng.note(&regs, &answer);
        }
        if class == MALFORMED && report.first_malformed.is_none() {
            report.first_malformed = Some((regs, answer));
        }
        report.counts[class] += 1;
        report.calls += 1;
    }
    report.span.1 = arch::cntvct();
    report
}

/// A secondary CPU, from `rust_secondary_main`: run its plan, publish the
/// report; CPU 1 then runs the spinning guest.
pub fn secondary(context: u64) -> ! {
    let (slot, tag) = ((context >> 32) as usize, context as u32);
    if let (FUZZ_TAG, Some(side)) = (tag, SECONDARIES.get(slot)) {
        side.started.store(true, Ordering::Release);
        let plan = side.plan.load(Ordering::Acquire);
        if !plan.is_null() {
            // SAFETY: CPU 0 stored a pointer to a leaked `Plan` that nothing
            // writes any more before CPU_ON (Release; loaded with Acquire
            // above).
            let plan = unsafe { &*plan };
            fuzz(plan).publish(side);
        }
        side.done.store(true, Ordering::Release);
        if slot == 0 {
            spin_on_cpu1();
        }
    }
    loop {
        arch::wfi();
    }
}

/// CPU 1's side of [`spinning_guest`]: wait for CPU 0's VM, boot its test
/// guest (whose mailbox already asks it to run the spinning code), then run
/// it again, and again after each INTERRUPTED exit: that should not end
/// before the machine is powered off. Host calls only (no host memory accesses: those are CPU 0's).
fn spin_on_cpu1() {
    let handle = loop {
        match SPIN_VM.load(Ordering::Acquire) {
            0 => core::hint::spin_loop(),
            NO_VM => return,
            h => break h,
        }
    };
    let vcpu = SPIN_VCPU.load(Ordering::Relaxed);
    let run = || call(HostCallId::VcpuRun, &[handle, vcpu]);
    let publish = |answer: [u64; 5], state: u64| {
        for (slot, v) in SPIN_ANSWER.iter().zip(answer) {
            slot.store(v, Ordering::Relaxed);
        }
        SPIN_STATE.store(state, Ordering::Release);
    };
    let boot = run();
    if boot != [0, 0, ExitReason::Hvc as u64, 0, 0] {
        publish(boot, SPIN_BOOT_FAILED);
        return;
    }
    SPIN_STATE.store(SPIN_ENTERING, Ordering::Release);
    // The hypervisor's time slice ends a run now and then (INTERRUPTED):
    // like any host, run the vCPU again.
    let interrupted = [0, 0, ExitReason::Interrupted as u64, 0, 0];
    let last = loop {
        let r = run();
        if r != interrupted {
            break r;
        }
    };
    publish(last, SPIN_RETURNED);
}

/// Spin until `flag` is set or `seconds` of the generic counter pass.
fn wait_for(flag: &AtomicBool, seconds: u64) -> bool {
    let start = arch::cntvct();
    let limit = arch::cntfrq_el0().max(1).saturating_mul(seconds);
    while !flag.load(Ordering::Acquire) {
        if arch::cntvct().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// How much of the CPUs' runs overlapped in time: how long each ran, and
/// how long all of them ran at once.
fn overlap(spans: &[(u64, u64)]) -> String {
    let ms = |t: u64| t * 1000 / arch::cntfrq_el0().max(1);
    let first_end = spans.iter().map(|s| s.1).min().unwrap_or(0);
    let last_start = spans.iter().map(|s| s.0).max().unwrap_or(0);
    let all = first_end.saturating_sub(last_start);
    let shortest = spans.iter().map(|s| s.1 - s.0).min().unwrap_or(0).max(1);
    let each: Vec<String> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| format!("CPU{i} {} ms", ms(s.1 - s.0)))
        .collect();
    format!(
        "ran {}; {} ms with all of them at once ({}% of the shortest run)",
        each.join(", "),
        ms(all),
        all * 100 / shortest
    )
}

/// The post-fuzz statements' tally, printing each failure.
struct Checks(Tally);

impl Checks {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.0.passed += 1,
            Err(why) => {
                println!("fuzz: FAILED {what}: {why}");
                self.0.failed += 1;
            }
        }
    }
}

/// `[0x.., 0x..]`.
pub(crate) fn hex(values: &[u64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:#x}")).collect();
    format!("[{}]", items.join(", "))
}

/// Host call `id` with `args`; it must answer exactly `want`.
pub(crate) fn expect(id: HostCallId, args: &[u64], want: [u64; 5]) -> Result<(), String> {
    let got = call(id, args);
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{} {}: got {}, want {}",
            id.name(),
            hex(args),
            hex(&got),
            hex(&want)
        ))
    }
}

/// Everything `run` needs from the boot.
pub struct Setup<'a> {
    /// Free RAM to take the arenas and the fresh page from.
    pub pool: &'a mut RamPool,
    /// Host RAM as pfn ranges `[first, end)`: the device tree's `/memory`
    /// without the hypervisor's and the COHERENT region.
    pub ram: Vec<Span>,
    /// The hypervisor's region, COHERENT, MMIO, MMIO (uncached), as pfn
    /// ranges `[first, end)`.
    pub regions: [Span; 4],
    /// The CPUs of the device tree.
    pub cpus: fdt::Cpus,
    /// PSCI conduit: HVC (no hypervisor) or SMC.
    pub psci_hvc: bool,
    /// Physical address bits.
    pub pa_bits: u32,
}

/// The fuzz run: returns whether every statement passed.
pub fn run(setup: Setup) -> bool {
    let Setup {
        pool,
        ram,
        regions,
        cpus,
        psci_hvc,
        pa_bits,
    } = setup;
    let n = cpus.len().min(MAX_CPUS);
    let mut checks = Checks(Tally::default());
    if n < 2 {
        checks.check(
            "at least two CPUs",
            Err(format!(
                "the device tree lists {} CPU(s); fuzzing needs two",
                cpus.len()
            )),
        );
        println!("{}", scenario::summary_line(&checks.0));
        return false;
    }
    let calls = TOTAL_CALLS / n as u32;
    let plans: Vec<Plan> = (0..n)
        .map(|cpu| Plan {
            seed: seed(cpu),
            calls,
            arena: pool
                .take_low(ARENA_PAGES, 1)
                .unwrap_or_else(|| panic!("no {ARENA_PAGES} free RAM pages for an arena")),
            ram: ram.clone(),
            regions,
            pa_limit: 1u64 << (pa_bits - PAGE_SHIFT),
        })
        .collect();
    let fresh = pool
        .take_low(1, 1)
        .unwrap_or_else(|| panic!("no free RAM page"));
    println!("fuzz: {n} CPUs, {calls} calls each ({ARENA_PAGES}-page arenas)");
    for (cpu, plan) in plans.iter().enumerate() {
        println!(
            "fuzz: CPU{cpu}: seed {:#x}, arena at pfn {:#x}",
            plan.seed, plan.arena
        );
    }

    // The secondaries: each its plan, then CPU_ON on its own stack slot.
    let entry = entry::secondary_entry as *const () as u64;
    let on: Vec<Result<(), String>> = (1..n)
        .map(|cpu| {
            let mpidr = cpus.get(cpu).unwrap_or_default();
            let leaked: &'static mut Plan = Box::leak(Box::new(plans[cpu].clone()));
            SECONDARIES[cpu - 1].plan.store(leaked, Ordering::Release);
            let context = entry::secondary_context(cpu - 1, FUZZ_TAG);
            match arch::psci_cpu_on(psci_hvc, mpidr, entry, context) {
                0 => Ok(()),
                status => Err(format!(
                    "PSCI CPU_ON of MPIDR {mpidr:#x} returned {status:#x}"
                )),
            }
        })
        .collect();
    let cpu0 = fuzz(&plans[0]);
    let mut reports = vec![Ok(cpu0)];
    for (cpu, on) in (1..n).zip(on) {
        let side = &SECONDARIES[cpu - 1];
        let started = on.and_then(|()| {
            wait_for(&side.started, TIMEOUT_SECONDS)
                .then_some(())
                .ok_or_else(|| format!("CPU {cpu} did not start within {TIMEOUT_SECONDS} s"))
        });
        checks.check(&format!("CPU {cpu} started"), started.clone());
        reports.push(started.and_then(|()| {
            if wait_for(&side.done, TIMEOUT_SECONDS) {
                Ok(Report::published(side))
            } else {
                Err(format!(
                    "CPU {cpu} did not finish within {TIMEOUT_SECONDS} s"
                ))
            }
        }));
    }

    for (cpu, report) in reports.iter().enumerate() {
        if let Ok(r) = report {
            println!("fuzz: CPU{cpu} {} calls: {}", r.calls, r.line());
        }
    }
    for (cpu, report) in reports.iter().enumerate() {
        if let Ok(r) = report {
            println!("fuzz: CPU{cpu} successes: {}", r.ok_line());
        }
    }
    let spans: Vec<(u64, u64)> = reports.iter().flatten().map(|r| r.span).collect();
    if spans.len() == n {
        println!("fuzz: {}", overlap(&spans));
    }
    let cpu1_finished = reports[1].is_ok();
    for (cpu, report) in reports.into_iter().enumerate() {
        let result = match report {
            Err(e) => Err(e),
            Ok(r) if r.calls != u64::from(calls) => Err(format!("{} calls, not {calls}", r.calls)),
            Ok(Report {
                first_malformed: Some((call, answer)),
                counts,
                ..
            }) => Err(format!(
                "{} malformed replies; the first: call {} answered {}",
                counts[MALFORMED],
                hex(&call),
                hex(&answer)
            )),
            Ok(_) => Ok(()),
        };
        checks.check(&format!("CPU{cpu}: every reply well-formed"), result);
    }

    let spin = if cpu1_finished {
        spinning_guest(pool)
    } else {
        Err("CPU 1 did not finish its random calls".into())
    };
    if spin.is_err() {
        SPIN_VM
            .compare_exchange(0, NO_VM, Ordering::AcqRel, Ordering::Acquire)
            .ok();
    } else {
        println!("fuzz: {SPIN_TEST}: ok");
    }
    checks.check(SPIN_TEST, spin);

    let before = checks.0.failed;
    post_checks(&mut checks, &plans, fresh);
    if checks.0.failed == before {
        println!("fuzz: hypervisor still answers correctly");
    }
    cleanup_checks(&mut checks, &plans);
    println!("{}", scenario::summary_line(&checks.0));
    checks.0.failed == 0
}

/// The spinning-guest statement.
const SPIN_TEST: &str = "hypercalls on CPU 0 while CPU 1 runs a spinning guest";

/// Spin until `done()` or `ticks` of the generic counter pass; whether it
/// became true.
fn wait_until(ticks: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = arch::cntvct();
    while !done() {
        if arch::cntvct().wrapping_sub(start) > ticks {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// CPU 1's last VCPU_RUN answer, for messages.
fn spin_answer() -> String {
    let answer: [u64; 5] = core::array::from_fn(|i| SPIN_ANSWER[i].load(Ordering::Relaxed));
    hex(&answer)
}

/// A guest spinning at EL1 on CPU 1 does not stop hypercalls on CPU 0.
///
/// CPU 0 creates a normal VM with the test guest and shares into it, with
/// RWX, a page holding the spinning code ([`test_guest::spin_image`]: it
/// sets a marker in its page, then spins for [`SPIN_SECONDS`] without
/// trapping), and posts an `exec` of it in the guest's mailbox. CPU 1
/// ([`spin_on_cpu1`]) boots the guest and runs it again; no interrupt
/// reaches it, so it stays at EL1 in the guest. CPU 0 waits for CPU 1's
/// flag and the guest's marker, waits [`SPIN_SETTLE_TICKS`] more, then
/// makes [`SPIN_CALLS`] calls (HYP_VERSION, SHARE_HYP, PAGE_QUERY,
/// UNSHARE_HYP, PAGE_QUERY of a page of its own, in turn), each of which
/// must answer exactly, all within [`SPIN_CALLS_SECONDS`], with CPU 1
/// still inside its VCPU_RUN at the end.
fn spinning_guest(pool: &mut RamPool) -> Result<(), String> {
    use HostCallId as C;
    let hz = arch::cntfrq_el0().max(1);
    let mut guest = match TestVm::create(pool, false) {
        Ok(guest) => guest,
        Err(first) => {
            // The random calls may have left every VM slot in use (VM_CREATE
            // answers ENOMEM): free one and try again.
            let max = MAX_HANDLE.load(Ordering::Relaxed);
            let Some(freed) = (1..=max).find(|&h| call(C::VmDestroy, &[h]) == [0; 5]) else {
                return Err(first);
            };
            println!("fuzz: ({first}: VM_DESTROY of VM {freed} to make room for the spinning guest's VM)");
            TestVm::create(pool, false)?
        }
    };
    let code = vm::take(pool, 1)?;
    let code_pa = code << PAGE_SHIFT;
    let marker = code_pa + test_guest::SPIN_MARKER_OFFSET;
    access::fill(code_pa, 1 << PAGE_SHIFT, 0)
        .and_then(|()| test_guest::copy_code(code_pa, test_guest::spin_image()))
        .and_then(|()| access::write(code_pa + test_guest::SPIN_TICKS_OFFSET, SPIN_SECONDS * hz))
        .map_err(|_| String::from("cannot write the spinning code"))?;
    arch::dcache_clean(code_pa as usize, (code_pa + (1 << PAGE_SHIFT)) as usize);
    vm::call_ok(
        C::GuestShare,
        &[guest.handle, code, SPIN_IPA >> PAGE_SHIFT, 1, prot::MASK],
    )?;
    guest.post(test_guest::op::EXEC, SPIN_IPA, 0)?;
    let page = vm::take(pool, 1)?;

    SPIN_VCPU.store(guest.vcpu, Ordering::Relaxed);
    SPIN_VM.store(guest.handle, Ordering::Release);
    let start_ticks = SPIN_START_SECONDS * hz;
    let state = || SPIN_STATE.load(Ordering::Acquire);
    if !wait_until(start_ticks, || state() != SPIN_IDLE) {
        return Err(format!(
            "CPU 1 did not boot the guest within {SPIN_START_SECONDS} s"
        ));
    }
    if state() == SPIN_BOOT_FAILED {
        return Err(format!(
            "the guest's first VCPU_RUN on CPU 1 answered {}, not an HVC exit",
            spin_answer()
        ));
    }
    let spinning = || {
        arch::dcache_clean_invalidate(marker as usize, marker as usize + 8);
        access::read(marker) == Ok(1) || state() == SPIN_RETURNED
    };
    if !wait_until(start_ticks, spinning) {
        return Err(format!(
            "the guest did not reach the spinning code within {SPIN_START_SECONDS} s"
        ));
    }
    if state() == SPIN_RETURNED {
        return Err(format!(
            "CPU 1's VCPU_RUN of the spinning guest returned {}",
            spin_answer()
        ));
    }
    wait_until(SPIN_SETTLE_TICKS, || false);

    // The calls, checked after the clock stops; the loop gives up once the
    // time is over (if each call returns at all).
    let (one, pages) = ([page], [page, 1]);
    let plan: [(C, &[u64], [u64; 5]); 5] = [
        (C::HypVersion, &[], [0, 0, 0x1_0000, 0, 0]),
        (C::ShareHyp, &pages, [0; 5]),
        // Host, SHARED_OWNED, RAM.
        (C::PageQuery, &one, [0, 0, 0, 1, 0]),
        (C::UnshareHyp, &pages, [0; 5]),
        // Host, OWNED, RAM.
        (C::PageQuery, &one, [0; 5]),
    ];
    let limit = SPIN_CALLS_SECONDS * hz;
    let mut answers = Vec::with_capacity(SPIN_CALLS);
    let t0 = arch::cntvct();
    let mut elapsed = 0;
    for i in 0..SPIN_CALLS {
        let (id, args, _) = plan[i % plan.len()];
        answers.push(call(id, args));
        elapsed = arch::cntvct().wrapping_sub(t0);
        if elapsed > limit {
            break;
        }
    }
    let still_in_guest = state() == SPIN_ENTERING;
    let ms = elapsed * 1000 / hz;

    let mut wrong = Vec::new();
    for (i, got) in answers.iter().enumerate() {
        let (id, args, want) = plan[i % plan.len()];
        if *got != want && wrong.len() < 4 {
            wrong.push(format!(
                "call {i} {} {}: got {}, want {}",
                id.name(),
                hex(args),
                hex(got),
                hex(&want)
            ));
        }
    }
    if answers.len() < SPIN_CALLS {
        return Err(format!(
            "only {} of {SPIN_CALLS} calls completed in {ms} ms (limit {SPIN_CALLS_SECONDS} s){}",
            answers.len(),
            if still_in_guest {
                ""
            } else {
                "; CPU 1's VCPU_RUN returned meanwhile (did the hypervisor hold a lock while the guest spun?)"
            }
        ));
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    if !still_in_guest {
        return Err(format!(
            "CPU 1's VCPU_RUN of the spinning guest returned {} before the calls ended ({ms} ms)",
            spin_answer()
        ));
    }
    Ok(())
}

/// The hypervisor still works: HYP_VERSION, a fresh page through SHARE_HYP,
/// PAGE_QUERY and UNSHARE_HYP, host reads of CPU 0's arena (each succeeds
/// or aborts, as PAGE_QUERY's host state says), and a read of the
/// hypervisor's memory aborts.
fn post_checks(checks: &mut Checks, plans: &[Plan], fresh: u64) {
    use HostCallId as C;
    checks.check(
        "HYP_VERSION is 1.0",
        expect(C::HypVersion, &[], [0, 0, 0x1_0000, 0, 0]),
    );
    checks.check(
        "SHARE_HYP of a fresh page",
        expect(C::ShareHyp, &[fresh, 1], [0; 5]),
    );
    checks.check(
        "PAGE_QUERY of it: host, SHARED_OWNED, RAM",
        expect(C::PageQuery, &[fresh], [0, 0, 0, 1, 0]),
    );
    checks.check(
        "UNSHARE_HYP of it",
        expect(C::UnshareHyp, &[fresh, 1], [0; 5]),
    );
    checks.check(
        "PAGE_QUERY of it: host, OWNED, RAM",
        expect(C::PageQuery, &[fresh], [0, 0, 0, 0, 0]),
    );

    let arena = plans[0].arena;
    let (mut readable, mut aborted) = (0, 0);
    let mut disagree = Vec::new();
    for pfn in arena..arena + ARENA_PAGES {
        let read = access::read(pfn << PAGE_SHIFT);
        let [x0, x1, _, state, _] = call(C::PageQuery, &[pfn]);
        let accessible = x0 == 0 && x1 == 0 && state <= 2;
        match read {
            Ok(_) => readable += 1,
            Err(_) => aborted += 1,
        }
        if read.is_ok() != accessible && disagree.len() < 4 {
            let read = if read.is_ok() { "read" } else { "abort" };
            disagree.push(format!(
                "pfn {pfn:#x}: {read}, PAGE_QUERY x0 {x0:#x} x1 {x1:#x} host state {state}"
            ));
        }
    }
    println!("fuzz: CPU0's arena after fuzzing: {readable} pages readable, {aborted} abort");
    checks.check(
        "host reads of CPU0's arena succeed or abort as PAGE_QUERY says",
        if disagree.is_empty() {
            Ok(())
        } else {
            Err(disagree.join("; "))
        },
    );
    checks.check(
        "host read of the hypervisor's memory aborts",
        match access::read(HYP_ADDRESS) {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("read {HYP_ADDRESS:#x} gave {v:#x}")),
        },
    );
}

/// No page is lost: after VM_DESTROY of every VM, RECLAIM and UNSHARE_HYP
/// of every arena page, each arena page is the host's again (PAGE_QUERY
/// host, OWNED, RAM) and readable.
fn cleanup_checks(checks: &mut Checks, plans: &[Plan]) {
    use HostCallId as C;
    // The spinning guest's VM: its vCPU still runs on CPU 1 (EBUSY), unless
    // the guest has stopped spinning by now.
    let spin_vm = match SPIN_VM.load(Ordering::Acquire) {
        NO_VM => 0,
        h => h,
    };
    let max = MAX_HANDLE.load(Ordering::Relaxed).max(8).max(spin_vm);
    let mut odd = Vec::new();
    for handle in 1..=max + 1 {
        let r = call(C::VmDestroy, &[handle]);
        let expected = if handle == spin_vm {
            r == [0, Errno::EBUSY.to_x1(), 0, 0, 0] || r == [0; 5]
        } else {
            r == [0; 5] || r == [0, Errno::ENOENT.to_x1(), 0, 0, 0]
        };
        if !expected && odd.len() < 4 {
            odd.push(format!("handle {handle}: {}", hex(&r)));
        }
    }
    checks.check(
        "VM_DESTROY of every VM: ok or ENOENT (the spinning guest's: EBUSY or ok)",
        if odd.is_empty() {
            Ok(())
        } else {
            Err(odd.join("; "))
        },
    );
    let mut left = Vec::new();
    for plan in plans {
        for pfn in plan.arena..plan.arena_end() {
            let _ = call(C::Reclaim, &[pfn, 1]);
            let _ = call(C::UnshareHyp, &[pfn, 1]);
            let q = call(C::PageQuery, &[pfn]);
            let read = access::read(pfn << PAGE_SHIFT).is_ok();
            if (q != [0; 5] || !read) && left.len() < 4 {
                left.push(format!(
                    "pfn {pfn:#x}: PAGE_QUERY {}, {}",
                    hex(&q),
                    if read { "readable" } else { "read aborts" }
                ));
            }
        }
    }
    checks.check(
        "after VM_DESTROY, RECLAIM and UNSHARE_HYP every arena page is the host's again",
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        },
    );
}
