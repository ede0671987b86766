//! Running a normal VM on `/dev/pkvm-rs`: guest memory, loading, vCPU
//! threads, the MMIO bus, and interrupt injection through run pages.
//!
//! Each vCPU has a thread that loops on PKVM_RS_RUN (the driver sleeps in
//! it while the guest idles) and emulates the MMIO accesses it returns.
//! Devices raise SPIs into the emulated distributor ([`Gic`]); what it
//! delivers goes to an [`Injector`], whose thread writes each interrupt
//! into the target vCPU's run page (`inject_irq` carries one request per
//! run) and kicks the vCPU so that its next VCPU_RUN takes it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vm_superio::{Serial, Trigger};

use crate::cli::Options;
use crate::gic::{Delivery, Gic, DIST_SIZE};
use crate::layout::*;
use crate::uapi::{self, exit, fault, system_event, RunPage};
use crate::virtio::{block::Block, console::Console, Memory, MmioTransport, MMIO_SIZE};
use crate::{fdt, Error};

/// How a VM ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called PSCI SYSTEM_OFF.
    PowerOff,
    /// The guest called PSCI SYSTEM_RESET (the VMM does not restart it).
    Reset,
}

fn ioctl(fd: RawFd, request: u64, arg: u64) -> io::Result<i32> {
    // SAFETY: every request this module makes takes either an integer or
    // a pointer to a live, properly sized `repr(C)` value (uapi.rs checks
    // the sizes against the header); the kernel validates the rest.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel for this process and
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A vCPU's run page, mapped from its file.
struct RunPagePtr(*mut RunPage);

// SAFETY: the page is shared with the hypervisor and the driver by
// design; every access below is a volatile or atomic access of one
// aligned u64 field, never a reference to the whole page.
unsafe impl Send for RunPagePtr {}
// SAFETY: as above.
unsafe impl Sync for RunPagePtr {}

macro_rules! field {
    ($p:expr, $f:ident) => {
        $p.at(core::mem::offset_of!(RunPage, $f))
    };
}

impl RunPagePtr {
    fn map(vcpu: &OwnedFd) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the vCPU file at offset 0, as
        // docs/DRIVER.md describes; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                uapi::RUN_PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(p.cast()))
    }

    /// The u64 at byte `off` of the page (inside it: RunPage is one
    /// page, checked in uapi.rs, and its fields are aligned u64s).
    fn at(&self, off: usize) -> *mut u64 {
        self.0.cast::<u8>().wrapping_add(off).cast()
    }

    fn read(&self, p: *mut u64) -> u64 {
        // SAFETY: `p` comes from `field!` on this page.
        unsafe { p.read_volatile() }
    }

    fn write(&self, p: *mut u64, v: u64) {
        // SAFETY: as in `read`.
        unsafe { p.write_volatile(v) }
    }

    fn inject_slot(&self) -> &AtomicU64 {
        // SAFETY: an aligned u64 in the mapped page that lives as long as
        // the process; the hypervisor writes it too, which is why it is
        // accessed atomically.
        unsafe { AtomicU64::from_ptr(field!(self, inject_irq)) }
    }
}

/// Interrupts waiting for their vCPU's run page.
pub struct Injector {
    vm: RawFd,
    pages: Vec<Arc<RunPagePtr>>,
    queues: Mutex<Vec<VecDeque<u32>>>,
    work: Condvar,
}

impl Injector {
    fn push(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for (cpu, intid) in deliveries {
            if let Some(q) = q.get_mut(cpu) {
                // An interrupt already waiting is one edge (the hypervisor
                // keeps one request per INTID as well).
                if !q.contains(&intid) {
                    q.push_back(intid);
                }
            }
        }
        self.work.notify_one();
    }

    /// The injector thread: moves each vCPU's next interrupt into its run
    /// page when the previous one was taken, and kicks the vCPU.
    fn pump(&self) {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            while q.iter().all(|q| q.is_empty()) {
                q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            let mut kicks = Vec::new();
            for (cpu, queue) in q.iter_mut().enumerate() {
                let Some(&intid) = queue.front() else {
                    continue;
                };
                let Some(page) = self.pages.get(cpu) else {
                    continue;
                };
                let Some(word) = host_interface::IrqRequest::encode(intid) else {
                    queue.pop_front();
                    continue;
                };
                // Only this thread writes a request; the hypervisor writes
                // 0 back once it took one.
                if page
                    .inject_slot()
                    .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    queue.pop_front();
                    kicks.push(cpu);
                }
            }
            let more = q.iter().any(|q| !q.is_empty());
            drop(q);
            for cpu in kicks {
                // A kick of a vCPU that is not in a run is harmless: its
                // next run takes the request anyway.
                let _ = ioctl(self.vm, uapi::KICK_VCPU, cpu as u64);
            }
            if more {
                std::thread::sleep(Duration::from_micros(200));
            }
            q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// An interrupt line from a device to the distributor.
#[derive(Clone)]
pub struct IrqLine {
    intid: u32,
    gic: Arc<Gic>,
    injector: Arc<Injector>,
}

impl IrqLine {
    fn raise(&self) {
        self.injector.push(self.gic.raise_spi(self.intid));
    }
}

impl Trigger for IrqLine {
    type E = ();
    fn trigger(&self) -> Result<(), ()> {
        self.raise();
        Ok(())
    }
}

/// Standard output, shared by the UART and the virtio console.
struct Stdout;
impl Write for Stdout {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }
}

/// Everything a vCPU's MMIO access may reach.
struct Bus {
    mem: Memory,
    gic: Arc<Gic>,
    injector: Arc<Injector>,
    uart: Mutex<Serial<IrqLine, vm_superio::serial::NoEvents, Stdout>>,
    virtio: Vec<(Mutex<MmioTransport>, IrqLine)>,
}

impl Bus {
    /// Emulates one access; `write` is the data of a store. Returns the
    /// data of a load.
    fn access(&self, addr: u64, size: u8, write: Option<u64>) -> Result<u64, Error> {
        let in_range = |base: u64, len: u64| addr >= base && addr - base < len;
        if in_range(GICD_BASE, DIST_SIZE) {
            let off = addr - GICD_BASE;
            return Ok(match write {
                Some(v) => {
                    self.injector.push(self.gic.dist_write(off, size, v));
                    0
                }
                None => self.gic.dist_read(off, size),
            });
        }
        if addr >= GICR_BASE {
            if let Some((cpu, off)) = self.gic.redist_of(addr - GICR_BASE) {
                return Ok(match write {
                    Some(v) => {
                        self.gic.redist_write(cpu, off, size, v);
                        0
                    }
                    None => self.gic.redist_read(cpu, off, size),
                });
            }
        }
        if in_range(UART_BASE, UART_SIZE) {
            let off = (addr - UART_BASE) as u8;
            let mut u = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(match write {
                Some(v) => {
                    // Output is best effort (a closed stdout loses it).
                    let _ = u.write(off, v as u8);
                    0
                }
                None => u64::from(u.read(off)),
            });
        }
        if in_range(VIRTIO_BASE, MMIO_SIZE * self.virtio.len() as u64) {
            let i = ((addr - VIRTIO_BASE) / MMIO_SIZE) as usize;
            let off = (addr - VIRTIO_BASE) % MMIO_SIZE;
            if let Some((dev, line)) = self.virtio.get(i) {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                return Ok(match write {
                    Some(v) => {
                        if d.write(off, v, &self.mem) {
                            drop(d);
                            line.raise();
                        }
                        0
                    }
                    None => d.read(off, size),
                });
            }
        }
        Err(Error(format!(
            "guest {} of {size} bytes at {addr:#x}, where there is neither memory nor a device",
            if write.is_some() { "write" } else { "read" }
        )))
    }
}

/// Guest memory: RAM and the secondaries' pen page.
fn guest_memory(opts: &Options) -> Result<Memory, Error> {
    let ram = opts
        .mem_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| Error("--mem is too large".into()))?;
    // Sorted by address, as vm-memory wants. A protected VM has no pen:
    // its secondaries start powered off (ABI.md, VCPU_CREATE).
    let ranges: &[(GuestAddress, usize)] = if opts.protected {
        &[(GuestAddress(RAM_BASE), ram as usize)]
    } else {
        &[
            (GuestAddress(PEN_BASE), 4096),
            (GuestAddress(RAM_BASE), ram as usize),
        ]
    };
    Memory::from_ranges(ranges).map_err(|e| {
        Error(format!(
            "cannot allocate {} MiB of guest memory: {e}",
            opts.mem_mib
        ))
    })
}

#[cfg(target_arch = "aarch64")]
fn load_kernel(mem: &Memory, kernel: &mut File) -> Result<(u64, u64), Error> {
    use linux_loader::loader::{pe::PE, KernelLoader};
    let r = PE::load(mem, Some(GuestAddress(RAM_BASE)), kernel, None).map_err(|e| {
        Error(format!(
            "--kernel: not an arm64 Image that fits in guest memory: {e}"
        ))
    })?;
    // kernel_end is where the file ends; the kernel also needs its BSS,
    // up to the header's image_size (offset 16).
    use std::os::unix::fs::FileExt;
    let mut size = [0u8; 8];
    kernel
        .read_exact_at(&mut size, 16)
        .map_err(|e| Error(format!("--kernel: {e}")))?;
    let end = r.kernel_end.max(r.kernel_load.0 + u64::from_le_bytes(size));
    Ok((r.kernel_load.0, end))
}

#[cfg(not(target_arch = "aarch64"))]
fn load_kernel(_: &Memory, _: &mut File) -> Result<(u64, u64), Error> {
    // linux-loader reads arm64 Image headers only when built for arm64.
    Err(Error(
        "this vmm was built for another architecture than arm64".into(),
    ))
}

fn open(what: &str, path: &std::path::Path, write: bool) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| Error(format!("{what} {}: {e}", path.display())))
}

fn open_device() -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/pkvm-rs")
        .map_err(|e| {
            Error(format!(
                "/dev/pkvm-rs: {e} (is the pkvm_rs module loaded, on the pkvm-rs hypervisor?)"
            ))
        })
}

/// The driver's page and VM counts (PKVM_RS_GET_STATS).
pub fn stats() -> Result<uapi::Stats, Error> {
    let dev = open_device()?;
    let mut s = uapi::Stats::default();
    ioctl(dev.as_raw_fd(), uapi::GET_STATS, &mut s as *mut _ as u64)
        .map_err(|e| Error(format!("PKVM_RS_GET_STATS: {e}")))?;
    Ok(s)
}

/// The hypervisor's PAGE_QUERY of frame `pfn` (PKVM_RS_PAGE_QUERY).
pub fn page_query(pfn: u64) -> Result<uapi::PageInfo, Error> {
    let dev = open_device()?;
    let mut i = uapi::PageInfo {
        pfn,
        ..Default::default()
    };
    ioctl(dev.as_raw_fd(), uapi::PAGE_QUERY, &mut i as *mut _ as u64)
        .map_err(|e| Error(format!("PKVM_RS_PAGE_QUERY of pfn {pfn:#x}: {e}")))?;
    Ok(i)
}

/// A window on the protected VM's pages `[base, base + size)` through the
/// VM file's mmap() (docs/DRIVER.md): a page the guest has not shared
/// gives SIGBUS, so the devices touch nothing but the guest's buffers in
/// the pool.
fn pool_memory(vm: &OwnedFd, base: u64, size: u64) -> Result<Memory, Error> {
    use vm_memory::mmap::MmapRegion;
    use vm_memory::{FileOffset, GuestRegionMmap};
    let file = File::from(
        vm.try_clone()
            .map_err(|e| Error(format!("the VM file: {e}")))?,
    );
    let region = MmapRegion::build(
        Some(FileOffset::new(file, base)),
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|e| Error(format!("mapping the DMA pool: {e}")))?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| Error("mapping the DMA pool: bad region".into()))?;
    Memory::from_regions(vec![region]).map_err(|e| Error(format!("the DMA pool: {e}")))
}

/// Runs the VM `opts` describes until the guest powers off or resets.
pub fn run(opts: &Options) -> Result<Outcome, Error> {
    // Files first: a typo should not cost a VM.
    let mut kernel = open("--kernel", &opts.kernel, false)?;
    let initrd = opts
        .initrd
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| Error(format!("--initrd {}: {e}", p.display()))))
        .transpose()?;
    let disk = opts
        .disk
        .as_ref()
        .map(|p| open("--disk", p, true))
        .transpose()?;
    let dev = open_device()?;
    let mut version = uapi::Version::default();
    ioctl(
        dev.as_raw_fd(),
        uapi::GET_VERSION,
        &mut version as *mut _ as u64,
    )
    .map_err(|e| Error(format!("PKVM_RS_GET_VERSION: {e}")))?;
    if version.api_version != uapi::API_VERSION {
        return Err(Error(format!(
            "/dev/pkvm-rs speaks API {}, this VMM {}",
            version.api_version,
            uapi::API_VERSION
        )));
    }
    if opts.cpus as u64 > u64::from(version.max_vcpus) {
        return Err(Error(format!(
            "--cpus {}: the hypervisor allows at most {} vCPUs per VM",
            opts.cpus, version.max_vcpus
        )));
    }

    // Guest memory and what goes in it.
    let mem = guest_memory(opts)?;
    let ram_size = opts.mem_mib << 20;
    let ram_end = RAM_BASE + ram_size;
    let (entry, kernel_end) = load_kernel(&mem, &mut kernel)?;
    let too_small = || {
        Error(format!(
            "--mem {}: too small for the kernel and the initrd",
            opts.mem_mib
        ))
    };
    let page_up = |a: u64| (a + 0xfff) & !0xfff;
    // A protected VM: its memory is the driver's, donated page by page as
    // the guest touches it, except the initial image (kernel, initrd,
    // device tree, packed from the start of RAM) that the driver copies
    // in. The virtio devices reach only a restricted DMA pool at the end
    // of RAM, which the guest shares back (MEM_SHARE) to bounce buffers.
    let dma_pool = opts
        .protected
        .then(|| (ram_end - DMA_POOL_SIZE, DMA_POOL_SIZE));
    let (initrd_start, fdt_addr) = if opts.protected {
        let start = page_up(kernel_end);
        let len = initrd.as_ref().map_or(0, |d| d.len() as u64);
        (start, page_up(start + len))
    } else {
        let fdt_addr = ram_end - FDT_MAX_SIZE;
        let len = initrd.as_ref().map_or(0, |d| d.len() as u64);
        (fdt_addr.saturating_sub(len) & !0xfff, fdt_addr)
    };
    let initrd_range = match &initrd {
        Some(data) => {
            let start = initrd_start;
            if data.len() as u64 > fdt_addr || start < kernel_end {
                return Err(too_small());
            }
            mem.write_slice(data, GuestAddress(start))
                .map_err(|e| Error(format!("loading the initrd: {e}")))?;
            Some((start, start + data.len() as u64))
        }
        None => None,
    };
    let nr_virtio = 1 + usize::from(disk.is_some());
    let dtb = fdt::build(&fdt::Config {
        vcpus: opts.cpus,
        ram_size,
        cmdline: &opts.cmdline,
        initrd: initrd_range,
        virtio_devices: nr_virtio,
        dma_pool,
    })
    .map_err(|e| Error(format!("building the device tree: {e}")))?;
    let image_end = page_up(fdt_addr + dtb.len() as u64);
    if image_end > dma_pool.map_or(ram_end, |(base, _)| base) {
        return Err(too_small());
    }
    mem.write_slice(&dtb, GuestAddress(fdt_addr))
        .map_err(|e| Error(format!("loading the device tree: {e}")))?;
    if !opts.protected {
        for (i, insn) in PEN_CODE.iter().enumerate() {
            mem.write_obj(*insn, GuestAddress(PEN_BASE + 4 * i as u64))
                .map_err(|e| Error(format!("{e}")))?;
        }
    }

    // The VM, its memory and its vCPUs.
    let create = uapi::CreateVm {
        flags: if opts.protected {
            uapi::VM_PROTECTED
        } else {
            0
        },
    };
    let vm = owned(
        ioctl(dev.as_raw_fd(), uapi::CREATE_VM, &create as *const _ as u64)
            .map_err(|e| Error(format!("PKVM_RS_CREATE_VM: {e}")))?,
    );
    // (base, size, image_size) of each SET_MEMORY. A protected VM's image
    // is copied in and the rest of RAM comes zeroed as the guest touches
    // it; the DMA pool is a region of its own, donated whole (from the
    // VMM's zeroed buffer) before the first run: the guest MEM_SHAREs
    // every page of it before touching any, and ABI.md refuses
    // MEM_SHARE of an IPA with nothing mapped.
    let regions: Vec<(u64, u64, u64)> = match dma_pool {
        Some((pool, pool_size)) => vec![
            (RAM_BASE, pool - RAM_BASE, image_end - RAM_BASE),
            (pool, pool_size, pool_size),
        ],
        None => mem.iter().map(|r| (r.start_addr().0, r.len(), 0)).collect(),
    };
    for (base, size, image_size) in regions {
        let host = mem
            .get_host_address(GuestAddress(base))
            .map_err(|e| Error(format!("{e}")))?;
        let m = uapi::Memory {
            guest_phys: base,
            size,
            userspace_addr: host as u64,
            image_size,
            prot: uapi::PROT_RWX,
        };
        ioctl(vm.as_raw_fd(), uapi::SET_MEMORY, &m as *const _ as u64).map_err(|e| {
            Error(format!(
                "PKVM_RS_SET_MEMORY of {} MiB at {base:#x}: {e}",
                size >> 20,
            ))
        })?;
    }
    let mut vcpus = Vec::new();
    let mut pages = Vec::new();
    for i in 0..opts.cpus {
        let fd = owned(
            ioctl(vm.as_raw_fd(), uapi::CREATE_VCPU, 0)
                .map_err(|e| Error(format!("PKVM_RS_CREATE_VCPU {i}: {e}")))?,
        );
        let page = Arc::new(
            RunPagePtr::map(&fd).map_err(|e| Error(format!("mapping vCPU {i}'s run page: {e}")))?,
        );
        let (pc, x0) = if i == 0 {
            (entry, fdt_addr)
        } else if opts.protected {
            // Never read: the guest's CPU_ON starts a protected secondary.
            (0, 0)
        } else {
            (PEN_BASE, 0)
        };
        page.write(field!(page, entry), pc);
        page.write(field!(page, x0), x0);
        vcpus.push(fd);
        pages.push(page);
    }

    // Devices and interrupts.
    let gic = Arc::new(Gic::new(opts.cpus));
    let injector = Arc::new(Injector {
        vm: vm.as_raw_fd(),
        pages: pages.clone(),
        queues: Mutex::new(vec![VecDeque::new(); opts.cpus]),
        work: Condvar::new(),
    });
    let line = |spi: u32| IrqLine {
        intid: spi_intid(spi),
        gic: gic.clone(),
        injector: injector.clone(),
    };
    let transport = |d: Box<dyn crate::virtio::VirtioDevice>| {
        let t = MmioTransport::new(d).map_err(|e| Error(format!("{e:?}")))?;
        Ok::<_, Error>(Mutex::new(if opts.protected {
            t.with_access_platform()
        } else {
            t
        }))
    };
    let mut virtio = vec![(
        transport(Box::new(Console::new(Box::new(Stdout))))?,
        line(VIRTIO_SPI_BASE),
    )];
    if let Some(f) = disk {
        let b = Block::new(f).map_err(|e| Error(format!("--disk: {e}")))?;
        virtio.push((transport(Box::new(b))?, line(VIRTIO_SPI_BASE + 1)));
    }
    // What the devices see of guest memory: a normal VM's is the VMM's
    // own; a protected VM's only through the VM file's window on the pages
    // the guest shared, which is the DMA pool.
    let device_mem = match dma_pool {
        None => mem,
        Some((base, size)) => {
            drop(mem);
            pool_memory(&vm, base, size)?
        }
    };
    if let Some(fifo) = &opts.monitor {
        let fd = vm
            .try_clone()
            .map_err(|e| Error(format!("the VM file: {e}")))?;
        crate::monitor::start(fifo.clone(), fd)
            .map_err(|e| Error(format!("starting the monitor: {e}")))?;
    }
    let bus = Arc::new(Bus {
        mem: device_mem,
        gic: gic.clone(),
        injector: injector.clone(),
        uart: Mutex::new(Serial::new(line(UART_SPI), Stdout)),
        virtio,
    });
    {
        let inj = injector.clone();
        std::thread::Builder::new()
            .name("irq".into())
            .spawn(move || inj.pump())
            .map_err(|e| Error(format!("starting the injector thread: {e}")))?;
    }

    let (done, outcome) = mpsc::channel();
    for (i, (fd, page)) in vcpus.into_iter().zip(pages).enumerate() {
        let bus = bus.clone();
        let done = done.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let r = run_vcpu(i, &fd, &page, &bus);
                let _ = done.send(r);
            })
            .map_err(|e| Error(format!("starting vCPU {i}'s thread: {e}")))?;
    }
    // The first vCPU to end ends the VM; the others stay in their runs
    // until the process exits, which destroys the VM.
    let r = outcome
        .recv()
        .map_err(|_| Error("every vCPU thread vanished".into()))?;
    let _ = io::stdout().flush();
    for (d, _) in &bus.virtio {
        drop(d.lock());
    }
    drop(vm);
    r
}

/// One vCPU's loop: run, emulate, repeat.
fn run_vcpu(i: usize, fd: &OwnedFd, page: &RunPagePtr, bus: &Bus) -> Result<Outcome, Error> {
    loop {
        if let Err(e) = ioctl(fd.as_raw_fd(), uapi::RUN, 0) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error(format!("vCPU {i}: PKVM_RS_RUN: {e}")));
        }
        let reason = page.read(field!(page, exit_reason));
        match reason {
            exit::MMIO | exit::MEM_FAULT => {
                let ipa = page.read(field!(page, fault_ipa));
                let flags = page.read(field!(page, fault_flags));
                let size = page.read(field!(page, fault_size)) as u8;
                if flags & fault::EXEC != 0 {
                    return Err(Error(format!(
                        "vCPU {i}: guest executed at {ipa:#x}, outside its memory"
                    )));
                }
                if reason == exit::MEM_FAULT && flags & fault::SYNDROME_VALID == 0 {
                    return Err(Error(format!(
                        "vCPU {i}: guest access at {ipa:#x} that cannot be emulated (no syndrome; ESR {:#x})",
                        page.read(field!(page, fault_esr))
                    )));
                }
                if flags & fault::WRITE != 0 {
                    let data = page.read(field!(page, fault_data));
                    bus.access(ipa, size, Some(data))
                        .map_err(|e| Error(format!("vCPU {i}: {}", e.0)))?;
                } else {
                    let v = bus
                        .access(ipa, size, None)
                        .map_err(|e| Error(format!("vCPU {i}: {}", e.0)))?;
                    page.write(field!(page, mmio_read_data), v);
                }
            }
            exit::HVC => {
                // A guest call the hypervisor does not serve: SMCCC
                // NOT_SUPPORTED, as KVM answers unknown calls.
                let results = core::mem::offset_of!(RunPage, hvc_results);
                for k in 0..4 {
                    page.write(page.at(results + 8 * k), if k == 0 { u64::MAX } else { 0 });
                }
            }
            exit::SYSTEM_EVENT => {
                return Ok(match page.read(field!(page, system_event)) {
                    system_event::OFF => Outcome::PowerOff,
                    system_event::RESET => Outcome::Reset,
                    other => return Err(Error(format!("vCPU {i}: unknown system event {other}"))),
                });
            }
            exit::FATAL => {
                return Err(Error(format!(
                "vCPU {i}: the hypervisor stopped the VM (FATAL exit; fault IPA {:#x}, ESR {:#x})",
                page.read(field!(page, fault_ipa)),
                page.read(field!(page, fault_esr))
            )))
            }
            exit::WFI | exit::INTERRUPTED => {}
            other => return Err(Error(format!("vCPU {i}: unknown exit reason {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(vcpus: usize) -> Bus {
        let mem = Memory::from_ranges(&[(GuestAddress(RAM_BASE), 0x10_0000)]).unwrap();
        let gic = Arc::new(Gic::new(vcpus));
        let injector = Arc::new(Injector {
            vm: -1,
            pages: Vec::new(),
            queues: Mutex::new(vec![VecDeque::new(); vcpus]),
            work: Condvar::new(),
        });
        let line = |spi| IrqLine {
            intid: spi_intid(spi),
            gic: gic.clone(),
            injector: injector.clone(),
        };
        let console = MmioTransport::new(Box::new(Console::new(Box::new(io::sink())))).unwrap();
        Bus {
            mem,
            gic: gic.clone(),
            injector: injector.clone(),
            uart: Mutex::new(Serial::new(line(UART_SPI), Stdout)),
            virtio: vec![(Mutex::new(console), line(VIRTIO_SPI_BASE))],
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_address() {
        let b = bus(2);
        assert_eq!(b.access(GICD_BASE + 0xFFE8, 4, None), Ok(0x30));
        // The second redistributor's TYPER names vCPU 1 and is the last.
        assert_eq!(
            b.access(GICR_BASE + 0x2_0008, 8, None),
            Ok((1 << 32) | (1 << 8) | (1 << 4))
        );
        // The UART's line status: transmitter empty.
        assert_eq!(b.access(UART_BASE + 5, 1, None).map(|v| v & 0x60), Ok(0x60));
        assert_eq!(b.access(VIRTIO_BASE, 4, None), Ok(0x7472_6976));
        assert_eq!(b.access(VIRTIO_BASE + 8, 4, None), Ok(3));
        // One device only: the next window, and anything else, is an error.
        assert!(b.access(VIRTIO_BASE + MMIO_SIZE, 4, None).is_err());
        assert!(b.access(GICR_BASE + 2 * 0x2_0000, 4, None).is_err());
        assert!(b
            .access(0x1000, 4, Some(0))
            .unwrap_err()
            .0
            .contains("write of 4 bytes at 0x1000"));
    }

    #[test]
    fn enabled_spis_queue_for_their_vcpu_once() {
        let b = bus(2);
        let uart = spi_intid(UART_SPI);
        b.access(GICD_BASE, 4, Some(0b10)).unwrap();
        b.access(GICD_BASE + 0x6000 + 8 * u64::from(uart), 8, Some(1))
            .unwrap();
        b.access(
            GICD_BASE + 0x100 + 4 * u64::from(uart / 32),
            4,
            Some(1 << (uart % 32)),
        )
        .unwrap();
        // Enabling the UART's transmit interrupt raises its line at once
        // (its holding register is empty); twice is still one edge queued.
        b.access(UART_BASE + 1, 1, Some(0x2)).unwrap();
        b.access(UART_BASE + 1, 1, Some(0x2)).unwrap();
        let q = b.injector.queues.lock().unwrap();
        assert!(q[0].is_empty());
        assert_eq!(q[1], VecDeque::from([uart]));
    }
}
