//! `cargo xtask bench` (host part): the cost per page of each ownership
//! transition on 512-page requests, next to a bare aarch64-paging map+unmap
//! of one page measured in the same run, and the core's metadata per GiB.
//! Each figure is the median of repeated runs; nothing here asserts a time.

use std::cell::Cell;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Instant;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{
    Constraints, MemoryRegion, PageTable, RootTable, Stage2, Translation,
};
use host_interface::{HostCallId, MemType};
use scenario::{Machine, PageKind};
use sim::SimMachine;

const NR: u64 = 512;
const RUNS: usize = 31;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Heap-backed translation for the bare baseline.
struct HeapTranslation;

impl Translation<Stage2Attributes> for HeapTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        let t = PageTable::new();
        (t, PhysicalAddress(t.as_ptr() as usize))
    }
    unsafe fn deallocate_table(&mut self, t: NonNull<PageTable<Stage2Attributes>>) {
        // SAFETY: `t` came from `PageTable::new` (a Box allocation of a
        // PageTable) in `allocate_table` and is freed once, as the caller promises.
        unsafe { drop(Box::from_raw(t.as_ptr())) };
    }
    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<Stage2Attributes>).expect("table address")
    }
}

/// Bare aarch64-paging: map one 4 KiB page then unmap it, per iteration.
fn bare_map_unmap() -> f64 {
    let mut root = RootTable::new(HeapTranslation, 1, Stage2);
    let flags = Stage2Attributes::VALID
        | Stage2Attributes::ACCESS_FLAG
        | Stage2Attributes::S2AP_ACCESS_RW
        | Stage2Attributes::SH_INNER
        | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
        | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB;
    // Keep the tables around the page alive so the loop measures entry writes.
    root.map_range(
        &MemoryRegion::new(0x8000_0000, 0x8000_2000),
        PhysicalAddress(0x4000_0000),
        flags,
        Constraints::empty(),
    )
    .unwrap();
    let iters = 20_000;
    let runs = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                let va = 0x8000_0000 + (i & 1) * 4096;
                let r = MemoryRegion::new(va, va + 4096);
                root.map_range(
                    &r,
                    PhysicalAddress(0x4000_0000 + va),
                    flags,
                    Constraints::empty(),
                )
                .unwrap();
                root.map_range(
                    &r,
                    PhysicalAddress(0),
                    Stage2Attributes::empty(),
                    Constraints::empty(),
                )
                .unwrap();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    black_box(&root);
    median(runs)
}

fn ok(r: [u64; 5], what: &str) -> [u64; 5] {
    assert!(r[0] == 0 && r[1] == 0, "{what} failed: {r:x?}");
    r
}

fn board() -> SimMachine {
    SimMachine::new("max").expect("board")
}

/// Aligned RAM run of `NR` pages.
fn ram512(m: &mut SimMachine) -> u64 {
    let skip = m.alloc(PageKind::Ram, 1).unwrap();
    let pad = (512 - ((skip + 1) % 512)) % 512;
    if pad > 0 {
        m.alloc(PageKind::Ram, pad).unwrap();
    }
    m.alloc(PageKind::Ram, NR).unwrap()
}

fn vm(m: &mut SimMachine, flags: u64) -> u64 {
    let pool = m.alloc(PageKind::Ram, 64).unwrap();
    ok(
        m.call(HostCallId::VmCreate, &[flags, pool, 64]),
        "VM_CREATE",
    )[2]
}

/// Time `timed` per page; `reset` runs untimed between runs.
fn measure(
    m: &mut SimMachine,
    mut timed: impl FnMut(&mut SimMachine),
    mut reset: impl FnMut(&mut SimMachine),
) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            timed(m);
            let ns = t.elapsed().as_nanos() as f64 / NR as f64;
            reset(m);
            ns
        })
        .collect();
    median(runs)
}

fn main() {
    let bare = bare_map_unmap();
    let mut rows: Vec<(&str, f64)> = vec![];

    let mut m = board();
    let a = ram512(&mut m);
    rows.push((
        "SHARE_HYP+UNSHARE_HYP",
        measure(
            &mut m,
            |m| {
                ok(m.call(HostCallId::ShareHyp, &[a, NR]), "SHARE_HYP");
                ok(m.call(HostCallId::UnshareHyp, &[a, NR]), "UNSHARE_HYP");
            },
            |_| {},
        ),
    ));

    let mut m = board();
    let a = ram512(&mut m);
    let g = Cell::new(vm(&mut m, 1));
    rows.push((
        "GUEST_DONATE",
        measure(
            &mut m,
            |m| {
                ok(
                    m.call(HostCallId::GuestDonate, &[g.get(), a, 0x80000, NR, 3]),
                    "GUEST_DONATE",
                );
            },
            |m| {
                ok(m.call(HostCallId::VmDestroy, &[g.get()]), "VM_DESTROY");
                ok(m.call(HostCallId::Reclaim, &[a, NR]), "RECLAIM");
                g.set(vm(m, 1));
            },
        ),
    ));

    let mut m = board();
    let a = ram512(&mut m);
    let n = vm(&mut m, 0);
    rows.push((
        "GUEST_SHARE+GUEST_UNSHARE",
        measure(
            &mut m,
            |m| {
                ok(
                    m.call(HostCallId::GuestShare, &[n, a, 0x80000, NR, 3]),
                    "GUEST_SHARE",
                );
                ok(
                    m.call(HostCallId::GuestUnshare, &[n, 0x80000, NR]),
                    "GUEST_UNSHARE",
                );
            },
            |_| {},
        ),
    ));

    let mut m = board();
    let d = m.alloc(PageKind::Mmio, NR).unwrap();
    let n = vm(&mut m, 0);
    let dev = (MemType::Device as u64) << 8;
    rows.push((
        "GUEST_MAP_DEVICE",
        measure(
            &mut m,
            |m| {
                ok(
                    m.call(HostCallId::GuestMapDevice, &[n, d, 0x90000, NR, 3 | dev]),
                    "GUEST_MAP_DEVICE",
                );
            },
            |m| {
                ok(
                    m.call(HostCallId::GuestUnmapDevice, &[n, 0x90000, NR]),
                    "GUEST_UNMAP_DEVICE",
                );
            },
        ),
    ));

    let mut m = board();
    let a = ram512(&mut m);
    let pool = m.alloc(PageKind::Ram, 64).unwrap();
    let g = Cell::new(ok(m.call(HostCallId::VmCreate, &[1, pool, 64]), "VM_CREATE")[2]);
    ok(
        m.call(HostCallId::GuestDonate, &[g.get(), a, 0x80000, NR, 3]),
        "GUEST_DONATE",
    );
    rows.push((
        "VM_DESTROY+RECLAIM",
        measure(
            &mut m,
            |m| {
                ok(m.call(HostCallId::VmDestroy, &[g.get()]), "VM_DESTROY");
                ok(m.call(HostCallId::Reclaim, &[a, NR]), "RECLAIM");
            },
            |m| {
                ok(m.call(HostCallId::Reclaim, &[pool, 64]), "RECLAIM pool");
                g.set(ok(m.call(HostCallId::VmCreate, &[1, pool, 64]), "VM_CREATE")[2]);
                ok(
                    m.call(HostCallId::GuestDonate, &[g.get(), a, 0x80000, NR, 3]),
                    "GUEST_DONATE",
                );
            },
        ),
    ));

    // The scrub RECLAIM must do: zeroing 512 pages, per page.
    let mut buf = vec![0u8; (NR as usize) * 4096];
    let scrub = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                for page in buf.chunks_mut(4096) {
                    // SAFETY: `page` is a valid, exclusively borrowed 4 KiB slice.
                    unsafe { std::ptr::write_bytes(black_box(page.as_mut_ptr()), 0, 4096) };
                }
                black_box(&buf);
                t.elapsed().as_nanos() as f64 / NR as f64
            })
            .collect(),
    );

    println!("Per-page cost of 512-page transitions (median of {RUNS} runs, release build, this machine)");
    println!("bare aarch64-paging map+unmap of one page: {bare:.1} ns");
    println!(
        "{:<28} {:>10} {:>8} {:>8}",
        "transition", "ns/page", "ratio", "target"
    );
    for (name, ns) in &rows {
        let ratio = ns / bare;
        println!(
            "{name:<28} {ns:>10.1} {ratio:>8.2} {:>8}",
            if ratio <= 1.5 { "<= 1.5" } else { "MISSED" }
        );
    }
    println!(
        "(zeroing one 4 KiB page, which RECLAIM must do for every page: {scrub:.1} ns = {:.2} of the bare map+unmap)",
        scrub / bare
    );
    let m = board();
    let tracked = m.hyp().platform().tracked_pages();
    let bytes = m.hyp().metadata_bytes() as f64;
    let per_page = bytes / tracked as f64;
    println!(
        "metadata: {per_page:.2} bytes per 4 KiB page = {:.0} KiB per GiB managed (target <= 4 bytes/page; pKVM: 8)",
        per_page * 262_144.0 / 1024.0
    );
}
