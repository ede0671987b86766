//! The EL2 image: boots on QEMU's `virt` machine, builds the platform
//! description from the device tree and the boot manifest, reads every CPU's
//! ID registers, takes over the host's stage-2 and enters the host kernel at
//! EL1. From then on it runs only when the host traps to it.
#![no_std]
#![no_main]

extern crate alloc;

mod console;
mod entry;
mod features;
mod gic;
mod guest;
mod hwmem;
mod lpi;
mod mem;
mod mmu;
mod percpu;
mod smmu;
#[allow(dead_code)] // a complete accessor set; not every register is used yet
mod sysreg;
mod traps;

use alloc::vec::Vec;
use core::panic::PanicInfo;

use hwmem::{El2Maintenance, El2Phys};
use hyp::Hypervisor;
use linked_list_allocator::LockedHeap;
use platform::{CpuFeatures, Manifest, MemClass, Platform};
use spin::Once;

/// The boot manifest of the board this image is built for.
const MANIFEST: &str = platform::QEMU_VIRT_MANIFEST;
/// The hypervisor's memory (the manifest's `hyp` line): image, heap, pool.
const HYP_BASE: usize = 0x4000_0000;
const HYP_END: usize = 0x4400_0000;
/// Heap for the core's allocations, after the image.
const HEAP_BASE: usize = 0x4100_0000;
const HEAP_SIZE: usize = 8 << 20;
/// Pages for the host's stage-2 tables, up to the SMMU's memory
/// (`smmu::STRTAB_BASE`; the DMA view's tables follow it).
const POOL_BASE: usize = HEAP_BASE + HEAP_SIZE;
const POOL_END: usize = smmu::STRTAB_BASE;
const UART_BASE: usize = platform::qemu_virt::UART_BASE as usize;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The core, shared by every CPU: set once at boot, then every CPU calls it
/// through `&` (it takes its own per-VM and host locks, `hyp::Hypervisor`).
pub static CORE: Once<Hypervisor<El2Phys, El2Maintenance>> = Once::new();

/// Register values every CPU loads before entering the host.
struct HostRegs {
    hcr: u64,
    vtcr: u64,
    vttbr: u64,
    /// CPTR_EL2 for the host: FP, SVE and SME its own.
    cptr: u64,
    /// Optional CPU state, from the boot CPU.
    features: features::Features,
}

static HOST_REGS: spin::Once<HostRegs> = spin::Once::new();

extern "C" {
    static __image_end: u8;
}

fn stop(msg: &str) -> ! {
    println!("hyp: cannot boot: {msg}");
    power_off()
}

/// Leave through PSCI SYSTEM_OFF (QEMU exits); idle if that fails.
pub fn power_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    park()
}

/// Idle forever.
pub fn park() -> ! {
    loop {
        sysreg::wfi();
    }
}

#[no_mangle]
extern "C" fn rust_primary_main(dtb: u64) -> ! {
    let pa_range = sysreg::id_aa64mmfr0_el1() & 0xf;
    // SAFETY: linker symbol; only its address is used.
    let image_end = unsafe { &__image_end as *const u8 as usize };
    // The room between the image and the heap holds the other CPUs'
    // stacks, mapped once the device tree says how many there are.
    let stacks_room = (image_end.next_multiple_of(4096), HEAP_BASE);
    mmu::enable(HYP_BASE, HYP_END, stacks_room, UART_BASE, pa_range);
    console::init(UART_BASE);
    println!("pkvm-rs hypervisor {} at EL2", env!("CARGO_PKG_VERSION"));
    if image_end > HEAP_BASE {
        stop("image overlaps the heap");
    }
    // SAFETY: [HEAP_BASE, +HEAP_SIZE) is hypervisor memory, mapped normal
    // read/write above, used by nothing else.
    unsafe { HEAP.lock().init(HEAP_BASE as *mut u8, HEAP_SIZE) };

    // The device tree QEMU passed: map its pages, then read and patch it.
    let header_ok = dtb & 7 == 0 && dtb != 0;
    if !header_ok {
        stop("no device tree in x0");
    }
    mmu::map(
        dtb as usize & !0xfff,
        (dtb as usize & !0xfff) + 0x1000,
        mmu::NORMAL,
    );
    // SAFETY: the header's first 8 bytes lie in the page just mapped.
    let total = unsafe { ((dtb as *const u32).add(1)).read_volatile() }.swap_bytes() as usize;
    if !(40..=(2 << 20)).contains(&total) {
        stop("device tree size out of range");
    }
    mmu::map(
        dtb as usize & !0xfff,
        (dtb as usize + total + 0xfff) & !0xfff,
        mmu::NORMAL,
    );
    // SAFETY: the blob lies in host RAM, mapped above; the host is not
    // running yet, so nothing else accesses it while the hypervisor holds
    // this slice.
    let blob = unsafe { core::slice::from_raw_parts_mut(dtb as *mut u8, total) };

    let mpidrs =
        platform::cpu_mpidrs(blob).unwrap_or_else(|_| stop("bad /cpus in the device tree"));
    // Stacks and per-CPU records for exactly the CPUs of the device tree.
    let area =
        hyp::cpu_area::CpuArea::plan(mpidrs.len(), stacks_room.0 as u64, stacks_room.1 as u64)
            .unwrap_or_else(|e| {
                stop_fmt(format_args!(
                    "{} ({} CPUs, at most {})",
                    e.message(),
                    mpidrs.len(),
                    hyp::cpu_area::MAX_CPUS
                ))
            });
    mmu::map_stacks(&area);
    if let Err(e) = percpu::set_cpus(&mpidrs) {
        stop(e);
    }
    let ids = percpu::probe_all();
    let mut cpu: Option<CpuFeatures> = None;
    for (i, r) in ids.iter().enumerate() {
        match r {
            Some(r) => {
                let f = CpuFeatures::from_id_regs(r);
                cpu = Some(cpu.map_or(f, |c| c.common(&f)));
            }
            None => println!(
                "hyp: CPU {i} (MPIDR {:#x}) did not answer; it stays off",
                mpidrs[i]
            ),
        }
    }
    let cpu = cpu.unwrap_or_else(|| stop("no CPU features"));
    println!(
        "hyp: {} CPUs; features on every CPU: {}",
        mpidrs.len(),
        hyp::feature_names(cpu.hyp_feature_bits())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if cpu.cacheable_device() {
        println!("hyp: cacheable device memory ALLOWED (FWB and DIC on every CPU)");
    } else {
        println!(
            "hyp: cacheable device memory REFUSED ({}{})",
            if cpu.fwb {
                ""
            } else {
                "no FWB: a guest's stage 1 could weaken the type; "
            },
            if cpu.dic {
                ""
            } else {
                "no DIC: executable cacheable mappings need I-cache maintenance"
            }
        );
    }

    let image = (HYP_BASE as u64, (image_end - HYP_BASE) as u64);
    let platform = Platform::new(blob, MANIFEST, &[image], cpu.pa_bits)
        .unwrap_or_else(|e| stop_fmt(format_args!("platform description: {e}")));
    let gic_facts = platform::gic_facts(blob)
        .unwrap_or_else(|e| stop_fmt(format_args!("interrupt controller: {e}")));
    gic::init(&gic_facts);
    let manifest = Manifest::parse(MANIFEST, cpu.pa_bits).unwrap_or_else(|_| stop("manifest"));
    let host_entry = manifest
        .host_image()
        .unwrap_or_else(|| stop("no host-image in the manifest"));
    // EL2 sees all RAM and COHERENT memory (run pages, scrubbing).
    for r in platform.regions() {
        if matches!(r.class, MemClass::Ram | MemClass::Coherent) {
            mmu::map(
                (r.base_pfn << 12) as usize,
                ((r.base_pfn + r.nr_pages) << 12) as usize,
                mmu::NORMAL,
            );
        }
    }
    // The host's device tree offers only the host's RAM, and none of the
    // withheld bus masters (the SMMU, fw_cfg, the ITS).
    let host_ram: Vec<(u64, u64)> = platform.host_ram().collect();
    if platform::patch_host_memory(blob, &host_ram).is_err() {
        stop("cannot rewrite /memory for the host");
    }
    let smmu_facts = platform::smmu_facts(blob)
        .unwrap_or_else(|e| stop_fmt(format_args!("SMMU in the device tree: {e}")));
    let withheld: Vec<(u64, u64)> = platform.withheld().collect();
    if platform::withhold_nodes(blob, &withheld).is_err() {
        stop("cannot remove withheld devices from the host's device tree");
    }
    // SAFETY: the host image address is host RAM, mapped above.
    let magic = unsafe { ((host_entry + 0x38) as *const u32).read_volatile() };
    if magic != 0x644d_5241 {
        stop_fmt(format_args!("no arm64 Image at host-image {host_entry:#x}"));
    }

    let mut pool = (POOL_BASE as u64..POOL_END as u64).step_by(4096);
    let mut hv = Hypervisor::new(platform, cpu, El2Phys, El2Maintenance::new(), &mut pool)
        .unwrap_or_else(|e| stop_fmt(format_args!("{e:?}")));
    match smmu_facts {
        Some(f) => attach_smmu(&mut hv, f),
        None => println!("hyp: no SMMUv3 in the device tree: PCIe devices are NOT isolated"),
    }
    let host_s2 = hv.host_stage2();
    // Start level and concatenated root pages come from the stage-2's
    // geometry (a 40-bit PA cannot start at level 0).
    let sl0 = host_s2.geometry().vtcr_sl0();
    let vmid16 = cpu.vmid_bits >= 16;
    let vtcr = (64 - u64::from(host_s2.ipa_bits()))
        | (sl0 << 6)
        | (1 << 8)
        | (1 << 10)
        | (3 << 12)
        | (pa_range.min(5) << 16)
        | (u64::from(vmid16) << 19)
        | (1 << 31);
    let vttbr = host_s2.root_pa();
    drop(host_s2);
    let hcr = (1 << 0) // VM: stage 2 on
        | (1 << 1) // SWIO
        | (1 << 19) // TSC: SMCs trap (PSCI proxy)
        | (1 << 31) // RW: EL1 is AArch64
        | (1 << 40) | (1 << 41) // APK, API: pointer authentication not trapped
        | (u64::from(cpu.fwb) << 46)
        | (u64::from(cpu.mte) << 56); // ATA: tags usable at EL1 where MTE exists
    let features = features::Features::probe();
    // RES1 bits; TZ, TFP (and TSM where SME exists) clear: no FP/SVE/SME
    // traps for the host.
    let cptr = 0x22ff | if features.sme { 0 } else { 1 << 12 };
    HOST_REGS.call_once(|| HostRegs {
        hcr,
        vtcr,
        vttbr,
        cptr,
        features,
    });
    entry::HYP_FEATURE_BITS.store(hv.feature_bits(), core::sync::atomic::Ordering::Relaxed);
    CORE.call_once(|| hv);
    // The boot's length, counted from the machine's reset (under QEMU's
    // `-icount shift=0`, nanoseconds are instructions): what a host's
    // "reset to ..." figures include of the hypervisor.
    let (ticks, hz) = (sysreg::cntpct_el0(), sysreg::cntfrq_el0().max(1));
    println!(
        "hyp: host stage-2 ready {} ns after reset; entering the host at {host_entry:#x} (EL1)",
        u128::from(ticks) * 1_000_000_000 / u128::from(hz)
    );
    init_cpu_for_host(0);
    enter_host(host_entry, dtb)
}

/// Give the core its DMA view and put the SMMU in front of every stream
/// with that view as stage 2 (RULES.md S1).
fn attach_smmu(hv: &mut Hypervisor<El2Phys, El2Maintenance>, f: platform::SmmuFacts) {
    let (base, size) = f.regs;
    if base == 0 || size < 0x2_0000 || base & 0xffff != 0 {
        stop("SMMUv3 register window malformed");
    }
    mmu::map(base as usize, (base + 0x2_0000) as usize, mmu::DEVICE);
    let mut pages = (smmu::DMA_VIEW_BASE as u64..HYP_END as u64).step_by(4096);
    let view = hyp::DmaView::new(
        El2Phys,
        hv.platform(),
        smmu::DMA_IPA_BITS,
        &mut pages,
        smmu::iommu(),
    )
    .unwrap_or_else(|e| stop_fmt(format_args!("DMA view: {e:?}")));
    let root = view.stage2().root_pa();
    let sl0 = view.stage2().geometry().vtcr_sl0();
    hv.attach_dma_view(view);
    // On failure the SMMU is off with GBPA at abort: no DMA at all, which
    // is safe, so the host still boots.
    let _ = smmu::init(base as usize, f.buses, root, sl0);
}

fn stop_fmt(args: core::fmt::Arguments) -> ! {
    println!("hyp: cannot boot: {args}");
    power_off()
}

#[no_mangle]
extern "C" fn rust_secondary_main(index: u64) -> ! {
    percpu::secondary(index as usize)
}

/// Program this CPU's EL2 registers for running the host.
pub fn init_cpu_for_host(index: usize) {
    let Some(h) = HOST_REGS.get() else {
        power_off()
    };
    let f = h.features;
    let hpmn = (sysreg::pmcr_el0() >> 11) & 0x1f;
    // The host's counters, but none of them counts at EL2 (HPMD, PMUv3p1).
    let mdcr = hpmn | (u64::from(f.pmuv3p1) << 17);
    // SAFETY: these registers configure how EL1 runs under this hypervisor:
    // the exception vectors of this image, the host's stage-2 built by the
    // core, and trap controls that leave the host its own FP, timers and
    // performance counters. TPIDR_EL2 holds the CPU index.
    unsafe {
        sysreg::set_vbar_el2(entry::el2_vectors as *const () as u64);
        sysreg::set_tpidr_el2(index as u64);
        sysreg::set_cptr_el2(h.cptr);
        sysreg::isb();
        if f.sve {
            sysreg::set_zcr_el2(0xf);
        }
        if f.sme {
            sysreg::set_smcr_el2(0xf);
        }
        // Their reset values are UNKNOWN: the host gets what it may use.
        if f.hcx {
            sysreg::set_hcrx_el2(f.hcrx_host());
        }
        if f.fgt {
            sysreg::set_hfgrtr_el2(f.fgt_host());
            sysreg::set_hfgwtr_el2(f.fgt_host());
        }
        sysreg::set_mdcr_el2(mdcr);
        sysreg::set_cnthctl_el2(3);
        // GICv3: EL1 uses the system-register interface, not trapped here
        // (SRE, Enable; DFB and DIB as the architecture recommends).
        sysreg::set_icc_sre_el2(0xf);
        sysreg::isb();
        gic::init_cpu(index);
        sysreg::set_cntvoff_el2(0);
        sysreg::set_vpidr_el2(sysreg::midr_el1());
        sysreg::set_vmpidr_el2(sysreg::mpidr_el1());
        sysreg::set_sctlr_el1(0x30d0_0800);
        sysreg::set_vtcr_el2(h.vtcr);
        sysreg::set_vttbr_el2(h.vttbr);
        sysreg::isb();
        // Nothing cached from before the hypervisor (firmware, an earlier
        // boot) may survive for any VMID.
        core::arch::asm!("tlbi alle1", "dsb nsh", options(nostack, preserves_flags));
        sysreg::set_hcr_el2(h.hcr);
    }
    sysreg::isb();
}

/// Enter the host at EL1.
pub fn enter_host(entry: u64, x0: u64) -> ! {
    // SAFETY: this CPU's EL2 state is set up for the host; the host starts
    // at its own entry point, from where it runs under its stage-2.
    unsafe { entry::eret_to_host(entry, x0) }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("hyp: PANIC: {info}");
    power_off()
}
