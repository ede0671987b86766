//! The test host kernel: the hypervisor's host at EL1, on QEMU `virt`.
//!
//! It boots like Linux would (an arm64 Image at the manifest's host-image
//! address, x0 = the device tree), runs every scenario file of the blob the
//! runner passed as the initrd against the real hypervisor, prints the
//! failures and the total, then the sentinel `TESTHOST DONE <exit>`, and
//! powers the machine off. The blob's mode may instead ask for the
//! benchmarks ([`bench`](mod@bench)) or the two-CPU fuzzer ([`fuzz`]), or,
//! for `cargo xtask run`, for the narrated files followed by a protected
//! guest ([`guest_demo`]).
//!
//! - [`entry`]: Image header, entry, vectors, the abortable accesses;
//! - [`arch`]: system registers, HVC and PSCI;
//! - [`mmu`]: the identity map;
//! - [`console`]: the PL011;
//! - [`fdt`]: the device-tree facts;
//! - [`blob`]: the scenario blob;
//! - [`access`], [`machine`]: the scenario [`scenario::Machine`];
//! - [`ram`]: free RAM for the bench and fuzz modes;
//! - [`test_guest`], [`vm`]: the guest program and a VM running it;
//! - [`guest_demo`]: the protected guest of `cargo xtask run`;
//! - [`bench`](mod@bench), [`fuzz`]: those modes.
#![no_std]
#![no_main]

extern crate alloc;

mod abi_fuzz;
mod access;
mod arch;
mod bench;
mod blob;
mod console;
mod dma;
mod edu;
mod entry;
mod fdt;
mod fuzz;
mod fuzz_guest;
mod guest_demo;
mod guest_fuzz;
mod guest_irq;
mod guest_smp;
mod isolation;
mod machine;
mod mmu;
mod ram;
mod test_guest;
mod vm;

use alloc::vec::Vec;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;
use platform::qemu_virt;
use scenario::Tally;

use console::Console;
use fdt::DtFacts;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Whether PSCI is reached by HVC (the device tree's `/psci` method) rather
/// than SMC: HVC when QEMU itself is at EL2 (no hypervisor), SMC under the
/// hypervisor.
static PSCI_HVC: AtomicBool = AtomicBool::new(false);

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __stack_guard: u8;
    static __secondary_stacks: u8;
    static __secondary_stacks_end: u8;
    static __heap_start: u8;
    static __heap_end: u8;
    static __image_end: u8;
}

/// Where the linker put things.
fn image_layout() -> (mmu::ImageLayout, usize, usize) {
    let addr = |s: &u8| s as *const u8 as usize;
    // SAFETY: linker-script symbols; only their addresses are taken.
    unsafe {
        (
            mmu::ImageLayout {
                start: addr(&__image_start),
                text_end: addr(&__text_end),
                stack_guard: addr(&__stack_guard),
                secondary_stacks: (addr(&__secondary_stacks), addr(&__secondary_stacks_end)),
                end: addr(&__image_end),
            },
            addr(&__heap_start),
            addr(&__heap_end),
        )
    }
}

/// Read the device tree at `dtb` (MMU off: the boot protocol has it clean
/// in memory).
fn read_device_tree(dtb: u64) -> DtFacts {
    if dtb == 0 || dtb & 7 != 0 {
        panic!("no device tree in x0 ({dtb:#x})");
    }
    // SAFETY: x0 points at the device tree (boot contract); its header's
    // first 8 bytes give its size. The blob is not written while borrowed.
    let header = unsafe { (dtb as *const [u8; 8]).read() };
    let size =
        fdt::total_size(header).unwrap_or_else(|e| panic!("bad device tree at {dtb:#x}: {e:?}"));
    // SAFETY: as above; `size` bytes from `dtb` are the blob.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    fdt::read(blob).unwrap_or_else(|e| panic!("bad device tree at {dtb:#x}: {e:?}"))
}

#[no_mangle]
extern "C" fn rust_main(dtb: u64) -> ! {
    let el = (arch::current_el() >> 2) & 3;
    if el != 1 {
        panic!("entered at EL{el}, not EL1");
    }
    let facts = read_device_tree(dtb);
    if let Some(uart) = facts.uart {
        console::set_base(uart as usize);
    }
    PSCI_HVC.store(facts.psci_hvc, Ordering::Relaxed);

    let (image, heap_start, heap_end) = image_layout();
    // RAM, and the manifest's memory outside the host's RAM (hypervisor,
    // COHERENT), is Normal memory; the rest Device.
    let memory = facts.memory.iter().chain([
        (qemu_virt::HYP_BASE, qemu_virt::HYP_SIZE),
        (qemu_virt::COHERENT_BASE, qemu_virt::COHERENT_SIZE),
    ]);
    if let Err(e) = mmu::enable(memory, &image) {
        panic!("{e}");
    }
    // SAFETY: [heap_start, heap_end) is the image's heap (linker script),
    // mapped Normal read/write and used by nothing else.
    unsafe {
        HEAP.lock()
            .init(heap_start as *mut u8, heap_end - heap_start)
    };
    run(dtb, &facts, &image)
}

/// CPU 1, started by [`fuzz`] with PSCI CPU_ON: `entry`'s
/// `secondary_entry` has turned its MMU on and calls this with the CPU_ON
/// context.
#[no_mangle]
extern "C" fn rust_secondary_main(context: u64) -> ! {
    let el = (arch::current_el() >> 2) & 3;
    if el != 1 {
        panic!("CPU 1 entered at EL{el}, not EL1");
    }
    if context == guest_smp::CONTEXT {
        guest_smp::secondary()
    }
    if context == abi_fuzz::CPU1_CONTEXT {
        abi_fuzz::secondary()
    }
    fuzz::secondary(context)
}

/// Run the blob (scenario files, bench or fuzz) and report.
fn run(dtb: u64, facts: &DtFacts, image: &mmu::ImageLayout) -> ! {
    let Some((initrd_start, initrd_end)) = facts.initrd else {
        panic!("no initrd in /chosen: nothing to run");
    };
    let image_range = (image.start as u64, image.end as u64);
    let overlaps = |(s, e): (u64, u64)| s < image_range.1 && image_range.0 < e;
    if overlaps((dtb, dtb + facts.size as u64)) || overlaps((initrd_start, initrd_end)) {
        panic!("the device tree or the initrd overlaps the test host's image");
    }
    let len = (initrd_end - initrd_start) as usize;
    if initrd_end > mmu::mapped_end() {
        panic!("initrd {initrd_start:#x}..{initrd_end:#x} is not mapped");
    }
    // SAFETY: the initrd is RAM the loader filled (/chosen), identity mapped
    // Normal, outside the image and never written while the program runs.
    let bytes = unsafe { core::slice::from_raw_parts(initrd_start as *const u8, len) };
    let text = core::str::from_utf8(bytes).unwrap_or_else(|e| panic!("initrd not UTF-8: {e}"));
    let blob = blob::parse(text).unwrap_or_else(|e| panic!("{e}"));

    let pa_bits = arch::pa_bits();
    let manifest = platform::Manifest::parse(platform::QEMU_VIRT_MANIFEST, pa_bits)
        .unwrap_or_else(|e| panic!("boot manifest: {e}"));
    let mut excluded: Vec<(u64, u64)> = manifest
        .entries()
        .iter()
        .map(|e| (e.base, e.size))
        .collect();
    excluded.extend([
        (image_range.0, image_range.1 - image_range.0),
        (dtb, facts.size as u64),
        (initrd_start, initrd_end - initrd_start),
    ]);
    excluded.extend(facts.reserved.iter());
    let free = machine::free_pages(facts.memory.iter(), &excluded);
    match blob.mode {
        blob::Mode::Bench => run_bench(&blob, &free),
        blob::Mode::Fuzz => run_fuzz(&blob, facts, &manifest, &free, pa_bits),
        blob::Mode::Irq => run_irq(&blob, dtb, facts.size, &free),
        blob::Mode::GuestFuzz => run_guest_fuzz(&blob, facts, &free),
        blob::Mode::AbiFuzz => run_abi_fuzz(&blob, facts, &free),
        blob::Mode::Dma => run_dma(&blob, &free),
        blob::Mode::Isolation => run_isolation(&blob, &free),
        blob::Mode::Scenarios | blob::Mode::Trace | blob::Mode::Demo => {}
    }
    let mut m = machine::HostMachine::new(&free, &manifest, pa_bits);
    println!(
        "testhost: {} scenario files (cpu {}); device tree at {dtb:#x}, initrd at {initrd_start:#x}, {} free RAM pages",
        blob.files.len(),
        blob.cpu,
        m.free_ram_pages()
    );

    let mut total = Tally::default();
    let trace = matches!(blob.mode, blob::Mode::Trace | blob::Mode::Demo);
    for (path, text) in &blob.files {
        total += scenario::run_file_traced(path, text, &mut m, &mut Console, trace);
    }
    if blob.mode == blob::Mode::Demo {
        total += guest_demo::run(&mut m);
    }
    println!("{}", scenario::summary_line(&total));
    println!("TESTHOST DONE {}", u8::from(total.failed > 0));
    power_off()
}

/// `bench` mode: the measurements, `bench: done`, power off.
fn run_bench(blob: &blob::Blob, free: &[(u64, u64)]) -> ! {
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: bench (cpu {}); {} free RAM pages",
        blob.cpu,
        pool.pages()
    );
    bench::run(&mut pool);
    println!("TESTHOST DONE 0");
    power_off()
}

/// `irq` mode: the interrupt and preemption checks, the tally, power off.
fn run_irq(blob: &blob::Blob, dtb: u64, size: usize, free: &[(u64, u64)]) -> ! {
    // SAFETY: the device tree of `size` bytes at `dtb`, read above and
    // excluded from the free RAM; nothing writes it.
    let dt = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    let vtimer = match platform::gic_facts(dt) {
        Ok(g) => g.timers[2],
        Err(e) => panic!("no timer in the device tree: {e}"),
    };
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: irq (cpu {}); virtual timer INTID {vtimer}, {} free RAM pages",
        blob.cpu,
        pool.pages()
    );
    let total = guest_irq::run(&mut pool, vtimer);
    println!("{}", scenario::summary_line(&total));
    println!("TESTHOST DONE {}", u8::from(total.failed > 0));
    power_off()
}

/// `guestfuzz` mode: guests misbehaving at random, the tally, power off.
fn run_guest_fuzz(blob: &blob::Blob, facts: &DtFacts, free: &[(u64, u64)]) -> ! {
    let mut pool = ram::RamPool::new(free);
    let seed = 0x2545_f491_4f6c_dd1d ^ arch::cntvct();
    println!(
        "testhost: guestfuzz (cpu {}); seed {seed:#x}, {} free RAM pages",
        blob.cpu,
        pool.pages()
    );
    let cpu1 = facts.cpus.get(1);
    let total = guest_fuzz::run(&mut pool, seed, cpu1, facts.psci_hvc);
    println!("{}", scenario::summary_line(&total));
    println!("TESTHOST DONE {}", u8::from(total.failed > 0));
    power_off()
}

/// `isolation` mode: attacks on CPU state, vCPU start, SMCCC registers
/// and the hypervisor's resources ([`isolation`]), the tally, power off.
fn run_isolation(blob: &blob::Blob, free: &[(u64, u64)]) -> ! {
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: isolation (cpu {}); {} free RAM pages",
        blob.cpu,
        pool.pages()
    );
    let total = isolation::run(&mut pool);
    println!("{}", scenario::summary_line(&total));
    println!("TESTHOST DONE {}", u8::from(total.failed > 0));
    power_off()
}

/// `abifuzz` mode: guests on two CPUs fuzzing the guest ABI from inside
/// ([`abi_fuzz`]), the tally, power off.
fn run_abi_fuzz(blob: &blob::Blob, facts: &DtFacts, free: &[(u64, u64)]) -> ! {
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: abifuzz (cpu {}); {} CPUs in the device tree, {} free RAM pages",
        blob.cpu,
        facts.cpus.len(),
        pool.pages()
    );
    let passed = abi_fuzz::run(&mut pool, facts.cpus, facts.psci_hvc);
    println!("TESTHOST DONE {}", u8::from(!passed));
    power_off()
}

/// `dma` mode: the edu device's DMA engine against every kind of page, and
/// the withheld bus masters ([`dma`]), the tally, power off.
fn run_dma(blob: &blob::Blob, free: &[(u64, u64)]) -> ! {
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: dma (cpu {}); {} free RAM pages",
        blob.cpu,
        pool.pages()
    );
    let total = dma::run(&mut pool);
    println!("{}", scenario::summary_line(&total));
    println!("TESTHOST DONE {}", u8::from(total.failed > 0));
    power_off()
}

/// `fuzz` mode: two CPUs of random host calls, the checks, the tally,
/// power off.
fn run_fuzz(
    blob: &blob::Blob,
    facts: &DtFacts,
    manifest: &platform::Manifest,
    free: &[(u64, u64)],
    pa_bits: u32,
) -> ! {
    use platform::ManifestKind as K;
    let region = |kind: K| {
        manifest
            .entries()
            .iter()
            .find(|e| e.kind == kind)
            .map_or((0, 0), |e| (e.base_pfn(), e.end_pfn()))
    };
    let regions = [K::Hyp, K::Coherent, K::Mmio, K::MmioUncached].map(region);
    // Host RAM: /memory without the manifest's carve-outs from it.
    let carved: Vec<(u64, u64)> = manifest
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, K::Hyp | K::Coherent))
        .map(|e| (e.base, e.size))
        .collect();
    let host_ram = machine::free_pages(facts.memory.iter(), &carved);
    let mut pool = ram::RamPool::new(free);
    println!(
        "testhost: fuzz (cpu {}); {} CPUs in the device tree, {} free RAM pages",
        blob.cpu,
        facts.cpus.len(),
        pool.pages()
    );
    let passed = fuzz::run(fuzz::Setup {
        pool: &mut pool,
        ram: host_ram,
        regions,
        cpus: facts.cpus,
        psci_hvc: facts.psci_hvc,
        pa_bits,
    });
    println!("TESTHOST DONE {}", u8::from(!passed));
    power_off()
}

/// PSCI SYSTEM_OFF (QEMU exits); idle if it returns.
fn power_off() -> ! {
    arch::psci_system_off(PSCI_HVC.load(Ordering::Relaxed));
    park()
}

/// Idle for good.
fn park() -> ! {
    loop {
        arch::wfi();
    }
}

/// Exception vectors by index (VBAR offset / 0x80).
const VECTOR_NAMES: [&str; 16] = [
    "synchronous, EL1 with SP_EL0",
    "IRQ, EL1 with SP_EL0",
    "FIQ, EL1 with SP_EL0",
    "SError, EL1 with SP_EL0",
    "synchronous",
    "IRQ",
    "FIQ",
    "SError",
    "synchronous from EL0",
    "IRQ from EL0",
    "FIQ from EL0",
    "SError from EL0",
    "synchronous from EL0 (AArch32)",
    "IRQ from EL0 (AArch32)",
    "FIQ from EL0 (AArch32)",
    "SError from EL0 (AArch32)",
];

/// Every exception but a caught abort ends here (from `entry`'s vectors).
pub extern "C" fn unexpected_exception(vector: u64) -> ! {
    let kind = VECTOR_NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unknown");
    panic!(
        "unexpected exception ({kind}): ESR {:#x} ELR {:#x} FAR {:#x} SPSR {:#x}",
        arch::esr_el1(),
        arch::elr_el1(),
        arch::far_el1(),
        arch::spsr_el1()
    );
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    // A panic while reporting one (or from a failing SYSTEM_OFF): just stop.
    // Plain load and store, so this works with the MMU off too.
    if PANICKING.load(Ordering::Relaxed) {
        park();
    }
    PANICKING.store(true, Ordering::Relaxed);
    if !console::at_line_start() {
        println!();
    }
    match info.location() {
        Some(at) => println!("TESTHOST PANIC {} ({at})", info.message()),
        None => println!("TESTHOST PANIC {}", info.message()),
    }
    println!("TESTHOST DONE 2");
    power_off()
}
