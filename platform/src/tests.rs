//! Tests of the memory map, manifest and device tree handling.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::dt::{Fdt, Token};
use crate::qemu_virt::*;
use crate::*;

const PAGE: u64 = 1 << PAGE_SHIFT;

fn ram(base_pfn: u64, nr_pages: u64) -> Region {
    Region {
        base_pfn,
        nr_pages,
        class: MemClass::Ram,
        uncached_ok: false,
        assignable: true,
    }
}

fn coherent(base_pfn: u64, nr_pages: u64) -> Region {
    Region {
        class: MemClass::Coherent,
        ..ram(base_pfn, nr_pages)
    }
}

fn hyp(base_pfn: u64, nr_pages: u64) -> Region {
    Region {
        class: MemClass::Hyp,
        assignable: false,
        ..ram(base_pfn, nr_pages)
    }
}

fn mmio(base_pfn: u64, nr_pages: u64, assignable: bool, uncached_ok: bool) -> Region {
    Region {
        base_pfn,
        nr_pages,
        class: MemClass::Mmio,
        uncached_ok,
        assignable,
    }
}

/// A 32-bit PA space (2^20 pages) with every kind of region, adjacent
/// regions of different and equal classes, gaps, and a region touching the
/// top of the address space.
fn sample_regions() -> Vec<Region> {
    vec![
        mmio(0x100, 0x10, true, true),
        mmio(0x110, 0x10, true, false),
        ram(0x1000, 0x1000),
        hyp(0x2000, 0x100),
        ram(0x2100, 0xf00),
        coherent(0x3000, 0x800),
        ram(0x3800, 0x10),
        mmio(0x5000, 1, false, false),
        coherent(0x6000, 1),
        ram(0xf_ff00, 0x100),
    ]
}

fn sample() -> Platform {
    Platform::from_regions(sample_regions(), 32).unwrap()
}

/// Reference classification: a linear scan.
fn slow_classify(regions: &[Region], pfn: u64) -> (MemClass, Option<usize>) {
    regions
        .iter()
        .position(|r| r.base_pfn <= pfn && pfn < r.base_pfn + r.nr_pages)
        .map_or((MemClass::Mmio, None), |i| (regions[i].class, Some(i)))
}

/// Reference range classification: every page classifies the same.
fn slow_range_class(p: &Platform, pfn: u64, nr: u64) -> Result<(MemClass, Option<usize>), ()> {
    let end = pfn.checked_add(nr).ok_or(())?;
    if nr == 0 || end > p.pa_pages() {
        return Err(());
    }
    let first = slow_classify(p.regions(), pfn);
    if (pfn..end).all(|q| slow_classify(p.regions(), q) == first) {
        Ok(first)
    } else {
        Err(())
    }
}

/// A deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every region edge, and a page either side of it.
fn boundary_pfns(p: &Platform) -> Vec<u64> {
    let mut pfns = vec![
        0,
        1,
        p.pa_pages() - 1,
        p.pa_pages(),
        p.pa_pages() + 1,
        u64::MAX,
    ];
    for r in p.regions() {
        for edge in [r.base_pfn, r.end_pfn()] {
            pfns.extend([edge.saturating_sub(1), edge, edge + 1]);
        }
    }
    pfns
}

#[test]
fn classify_at_every_boundary() {
    let p = sample();
    let regions = sample_regions();
    assert_eq!(p.regions(), &regions[..]);
    for pfn in boundary_pfns(&p) {
        assert_eq!(
            p.classify(pfn),
            slow_classify(&regions, pfn),
            "pfn {pfn:#x}"
        );
    }
    for (i, r) in regions.iter().enumerate() {
        assert_eq!(p.classify(r.base_pfn), (r.class, Some(i)));
        assert_eq!(p.classify(r.end_pfn() - 1), (r.class, Some(i)));
    }
    // Gaps and addresses beyond the PA space are undeclared MMIO.
    for pfn in [
        0,
        0xff,
        0x120,
        0xfff,
        0x3810,
        0x4fff,
        0x5001,
        0xf_feff,
        1 << 20,
        u64::MAX,
    ] {
        assert_eq!(p.classify(pfn), (MemClass::Mmio, None), "pfn {pfn:#x}");
    }
}

#[test]
fn range_class_explicit() {
    let p = sample();
    let ok = |pfn, nr, class, idx| assert_eq!(p.range_class(pfn, nr), Ok((class, idx)));
    let err = |pfn, nr| assert_eq!(p.range_class(pfn, nr), Err(()), "{pfn:#x}+{nr:#x}");
    // Whole regions, first and last pages.
    ok(0x1000, 0x1000, MemClass::Ram, Some(2));
    ok(0x1000, 1, MemClass::Ram, Some(2));
    ok(0x1fff, 1, MemClass::Ram, Some(2));
    ok(0x2000, 0x100, MemClass::Hyp, Some(3));
    ok(0x3000, 0x800, MemClass::Coherent, Some(5));
    ok(0x100, 0x10, MemClass::Mmio, Some(0));
    ok(0x5000, 1, MemClass::Mmio, Some(7));
    // Crossing two regions: RAM→HYP, HYP→RAM, RAM→COHERENT, COHERENT→RAM,
    // two adjacent MMIO regions.
    err(0x1fff, 2);
    err(0x20ff, 2);
    err(0x2fff, 2);
    err(0x37ff, 2);
    err(0x10f, 2);
    err(0x1000, 0x3000);
    // RAM→gap, gap→RAM.
    err(0x380f, 2);
    err(0x3800, 0x11);
    err(0xfff, 2);
    // Declared MMIO→undeclared MMIO: same class, different region.
    err(0x11f, 2);
    err(0xff, 2);
    err(0x4fff, 2);
    // Undeclared gaps, whole and partial.
    ok(0, 0x100, MemClass::Mmio, None);
    ok(0x120, 0x1000 - 0x120, MemClass::Mmio, None);
    ok(0x3810, 0x5000 - 0x3810, MemClass::Mmio, None);
    ok(0x5001, 1, MemClass::Mmio, None);
    ok(0x6001, 0xf_ff00 - 0x6001, MemClass::Mmio, None);
    err(0x6001, 0xf_ff00 - 0x6001 + 1);
    // Spanning a whole small region in a gap.
    err(0x4000, 0x2000);
    // PA limit: the last region touches it.
    ok(0xf_ff00, 0x100, MemClass::Ram, Some(9));
    ok(0xf_ffff, 1, MemClass::Ram, Some(9));
    err(0xf_ffff, 2);
    err(1 << 20, 1);
    err(u64::MAX, 1);
    err(u64::MAX - 1, 2);
    err(1, u64::MAX);
    // Empty ranges.
    err(0x1000, 0);
    err(0, 0);
}

#[test]
fn range_class_matches_reference() {
    let p = sample();
    let mut rng = Rng(0x5eed);
    let edges = boundary_pfns(&p);
    for _ in 0..20_000 {
        let edge = edges[rng.below(edges.len() as u64) as usize];
        let pfn = edge
            .saturating_sub(rng.below(8))
            .saturating_add(rng.below(8));
        let pfn = pfn.min(p.pa_pages() + 4);
        let nr = match rng.below(4) {
            0 => rng.below(3),
            1 => rng.below(0x20),
            _ => rng.below(0x1200),
        };
        assert_eq!(
            p.range_class(pfn, nr),
            slow_range_class(&p, pfn, nr),
            "{pfn:#x}+{nr:#x}"
        );
    }
}

#[test]
fn range_class_does_not_walk_pages() {
    // A range of 2^36 pages answers at once (it would take minutes page by page).
    let p = Platform::from_regions(vec![ram(0, 1 << 35)], 48).unwrap();
    assert_eq!(p.range_class(0, 1 << 35), Ok((MemClass::Ram, Some(0))));
    assert_eq!(p.range_class(1 << 35, 1 << 35), Ok((MemClass::Mmio, None)));
    assert_eq!(p.range_class(1, 1 << 35), Err(()));
    assert_eq!(p.range_class(1 << 35, (1 << 35) + 1), Err(()));
}

#[test]
fn tracked_index_dense_and_consistent() {
    let p = sample();
    let regions = sample_regions();
    let tracked: Vec<(usize, u64)> = p.tracked_regions().collect();
    // RAM, COHERENT and assignable MMIO, in order; HYP and the
    // non-assignable MMIO region are left out.
    let indexes: Vec<usize> = tracked.iter().map(|t| t.0).collect();
    assert_eq!(indexes, [0, 1, 2, 4, 5, 6, 8, 9]);
    let mut next = 0;
    for &(i, first) in &tracked {
        assert_eq!(first, next);
        let r = regions[i];
        assert_eq!(p.tracked_index(r.base_pfn), Some(first));
        assert_eq!(
            p.tracked_index(r.end_pfn() - 1),
            Some(first + r.nr_pages - 1)
        );
        next += r.nr_pages;
    }
    assert_eq!(p.tracked_pages(), next);
    // Every page of the address space: indexes are exactly 0..tracked_pages,
    // each once, in address order.
    let mut expect = 0;
    for pfn in 0..p.pa_pages() + 2 {
        let (class, region) = p.classify(pfn);
        let want_tracked = region.is_some_and(|i| regions[i].is_tracked());
        // Given the region `classify` found, the O(1) lookup agrees; given
        // any other region, it finds nothing.
        assert_eq!(p.tracked_index_in(region, pfn), p.tracked_index(pfn));
        for other in [None, Some(0), Some(2), Some(regions.len())] {
            if other != region {
                assert_eq!(p.tracked_index_in(other, pfn), None, "pfn {pfn:#x}");
            }
        }
        match p.tracked_index(pfn) {
            Some(d) => {
                assert!(want_tracked, "pfn {pfn:#x} ({class:?})");
                assert_eq!(d, expect);
                expect += 1;
            }
            None => assert!(!want_tracked, "pfn {pfn:#x}"),
        }
    }
    assert_eq!(expect, p.tracked_pages());
    assert_eq!(p.tracked_index(u64::MAX), None);
}

#[test]
fn host_ram_in_bytes() {
    let p = sample();
    let ram: Vec<_> = p.host_ram().collect();
    assert_eq!(
        ram,
        [
            (0x1000 * PAGE, 0x1000 * PAGE),
            (0x2100 * PAGE, 0xf00 * PAGE),
            (0x3800 * PAGE, 0x10 * PAGE),
            (0xf_ff00 * PAGE, 0x100 * PAGE),
        ]
    );
}

#[test]
fn from_regions_errors() {
    let check = |regions: Vec<Region>, pa_bits, e| {
        assert_eq!(Platform::from_regions(regions, pa_bits), Err(e));
    };
    let region = |index| Origin::Region { index };
    check(
        vec![ram(0x10, 1), ram(0x5, 1)],
        32,
        PlatformError::Unsorted { index: 1 },
    );
    check(
        vec![ram(0x10, 0x10), hyp(0x1f, 1)],
        32,
        PlatformError::Overlap { at: region(1) },
    );
    check(
        vec![ram(0x10, 0x10), hyp(0x10, 1)],
        32,
        PlatformError::Overlap { at: region(1) },
    );
    check(
        vec![ram(0x10, 0)],
        32,
        PlatformError::Empty { at: region(0) },
    );
    check(
        vec![ram(0xf_ffff, 2)],
        32,
        PlatformError::OutsidePaSpace { at: region(0) },
    );
    check(
        vec![ram(u64::MAX, 2)],
        48,
        PlatformError::OutsidePaSpace { at: region(0) },
    );
    check(
        vec![
            ram(0, 1),
            ram(2, 1),
            Region {
                uncached_ok: true,
                ..ram(4, 1)
            },
        ],
        32,
        PlatformError::BadRegionFlags { index: 2 },
    );
    check(
        vec![Region {
            assignable: true,
            ..hyp(0, 1)
        }],
        32,
        PlatformError::BadRegionFlags { index: 0 },
    );
    check(
        vec![Region {
            assignable: false,
            ..coherent(0, 1)
        }],
        32,
        PlatformError::BadRegionFlags { index: 0 },
    );
    check(vec![], 31, PlatformError::BadPaBits(31));
    check(vec![], 49, PlatformError::BadPaBits(49));
    // Adjacent regions, an empty map, and the full 48-bit space are fine.
    assert!(Platform::from_regions(vec![ram(0, 1), hyp(1, 1), ram(2, 1)], 32).is_ok());
    let empty = Platform::from_regions(vec![], 48).unwrap();
    assert_eq!(empty.range_class(0, 1 << 36), Ok((MemClass::Mmio, None)));
    assert_eq!(empty.tracked_pages(), 0);
}

fn qemu_platform(hyp_reserved: &[(u64, u64)]) -> Result<Platform, PlatformError> {
    Platform::new(
        &qemu_virt_fdt(RAM_BASE, RAM_SIZE),
        QEMU_VIRT_MANIFEST,
        hyp_reserved,
        40,
    )
}

#[test]
fn qemu_virt_manifest_matches_constants() {
    let m = Manifest::parse(QEMU_VIRT_MANIFEST, 40).unwrap();
    let mut got: Vec<(ManifestKind, u64, u64)> = m
        .entries()
        .iter()
        .map(|e| (e.kind, e.base, e.size))
        .collect();
    got.sort_by_key(|e| e.1);
    assert_eq!(
        got,
        [
            (ManifestKind::Withheld, ITS_BASE, ITS_SIZE),
            (ManifestKind::Withheld, FW_CFG_BASE, FW_CFG_SIZE),
            (ManifestKind::Withheld, SMMU_BASE, SMMU_SIZE),
            (ManifestKind::Mmio, MMIO_BASE, MMIO_SIZE),
            (ManifestKind::MmioUncached, MMIO_UC_BASE, MMIO_UC_SIZE),
            (ManifestKind::Hyp, HYP_BASE, HYP_SIZE),
            (ManifestKind::Coherent, COHERENT_BASE, COHERENT_SIZE),
        ]
    );
    assert_eq!(HYP_BASE, RAM_BASE);
    assert_eq!(COHERENT_BASE + COHERENT_SIZE, RAM_BASE + RAM_SIZE);
}

#[test]
fn qemu_virt_platform() {
    // The hypervisor image inside the manifest's hyp range, not page aligned.
    let p = qemu_platform(&[(0x4008_0000, 0x12_3456), (0x4100_0000, 0)]).unwrap();
    let pfn = |addr: u64| addr >> PAGE_SHIFT;
    let ram_start = HYP_BASE + HYP_SIZE;
    assert_eq!(
        p.regions(),
        &[
            mmio(pfn(MMIO_BASE), pfn(MMIO_SIZE), true, false),
            mmio(pfn(MMIO_UC_BASE), pfn(MMIO_UC_SIZE), true, true),
            hyp(pfn(HYP_BASE), pfn(HYP_SIZE)),
            ram(pfn(ram_start), pfn(COHERENT_BASE - ram_start)),
            coherent(pfn(COHERENT_BASE), pfn(COHERENT_SIZE)),
        ]
    );
    assert_eq!(p.pa_bits(), 40);
    let host_ram: Vec<_> = p.host_ram().collect();
    assert_eq!(host_ram, [(0x4400_0000, 0x3800_0000)]);
    assert_eq!(p.classify(pfn(UART_BASE)), (MemClass::Mmio, None));
    assert_eq!(p.classify(pfn(GICD_BASE)), (MemClass::Mmio, None));
    assert_eq!(p.classify(pfn(0x4008_0000)), (MemClass::Hyp, Some(2)));
    assert_eq!(
        p.tracked_pages(),
        pfn(MMIO_SIZE + MMIO_UC_SIZE + RAM_SIZE - HYP_SIZE)
    );
    assert_eq!(p.tracked_index(pfn(MMIO_BASE)), Some(0));
    assert_eq!(
        p.tracked_index(pfn(ram_start)),
        Some(pfn(MMIO_SIZE + MMIO_UC_SIZE))
    );
}

#[test]
fn hyp_reserved_outside_manifest_hyp_splits_ram() {
    // An image at 0x5000_0000 (page rounded out: 0x5000_0000..0x5000_2000).
    let p = qemu_platform(&[(0x5000_0800, 0x1000)]).unwrap();
    let host_ram: Vec<_> = p.host_ram().collect();
    assert_eq!(
        host_ram,
        [
            (0x4400_0000, 0x0c00_0000),
            (0x5000_2000, 0x7C00_0000 - 0x5000_2000)
        ]
    );
    assert_eq!(p.classify(0x5_0001), (MemClass::Hyp, Some(4)));
    // Touching the manifest's hyp range: one HYP region.
    let p = qemu_platform(&[(0x4400_0000, 0x1000)]).unwrap();
    assert_eq!(p.regions()[2], hyp(0x4_0000, 0x4001));
    // Outside RAM entirely: still HYP.
    let p = qemu_platform(&[(0x2000_0000, 0x1000)]).unwrap();
    assert_eq!(p.classify(0x2_0000), (MemClass::Hyp, Some(2)));
}

#[test]
fn platform_new_errors() {
    let fdt = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let new =
        |manifest: &str, hyp: &[(u64, u64)], pa_bits| Platform::new(&fdt, manifest, hyp, pa_bits);
    let line = |line| Origin::Manifest { line };
    // MMIO declared on top of RAM.
    assert_eq!(
        new("hyp 0x4000_0000 64M\nmmio 0x7fff_f000 4K\n", &[], 40),
        Err(PlatformError::Overlap { at: line(2) })
    );
    // The hypervisor's image overlapping declared COHERENT or MMIO memory.
    assert_eq!(
        new(
            QEMU_VIRT_MANIFEST,
            &[(0x4000_0000, 0x1000), (0x7C00_0000, 1)],
            40
        ),
        Err(PlatformError::Overlap {
            at: Origin::HypReserved { index: 1 }
        })
    );
    assert_eq!(
        new(QEMU_VIRT_MANIFEST, &[(0x10ff_ffff, 2)], 40),
        Err(PlatformError::Overlap {
            at: Origin::HypReserved { index: 0 }
        })
    );
    assert_eq!(
        new(QEMU_VIRT_MANIFEST, &[(0, 1), (0xff_ffff_f000, 0x1001)], 40),
        Err(PlatformError::OutsidePaSpace {
            at: Origin::HypReserved { index: 1 }
        })
    );
    assert_eq!(
        new(QEMU_VIRT_MANIFEST, &[(u64::MAX, 1)], 48),
        Err(PlatformError::OutsidePaSpace {
            at: Origin::HypReserved { index: 0 }
        })
    );
    // Everything carved out.
    assert_eq!(
        new("hyp 0x4000_0000 1G", &[], 40),
        Err(PlatformError::NoHostRam)
    );
    assert_eq!(
        new("hyp 0x4000_0000 512M\ncoherent 0x6000_0000 512M", &[], 40),
        Err(PlatformError::NoHostRam)
    );
    // RAM beyond the PA space.
    let high = qemu_virt_fdt(0xff_c000_0000, 0x8000_0000);
    assert_eq!(
        Platform::new(&high, "", &[], 40),
        Err(PlatformError::OutsidePaSpace {
            at: Origin::Memory {
                base: 0xff_c000_0000
            }
        })
    );
    assert!(Platform::new(&high, "", &[], 44).is_ok());
    assert_eq!(new("", &[], 52), Err(PlatformError::BadPaBits(52)));
    // Manifest errors come through with their line.
    assert_eq!(
        new("# x\n\nhyp 0x4000_0000 64M\nfoo 1 2\n", &[], 40),
        Err(PlatformError::UnknownKeyword { line: 4 })
    );
    // An empty manifest: all RAM is host RAM.
    let p = new("", &[], 40).unwrap();
    assert_eq!(p.regions(), &[ram(0x4_0000, 0x4_0000)]);
}

#[test]
fn coherent_outside_ram() {
    let fdt = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let p = Platform::new(&fdt, "coherent 0x80_0000_0000 1G\n", &[], 40).unwrap();
    assert_eq!(
        p.regions(),
        &[ram(0x4_0000, 0x4_0000), coherent(0x800_0000, 0x4_0000)]
    );
    // Partly inside RAM, partly outside.
    let p = Platform::new(&fdt, "coherent 0x7000_0000 512M\n", &[], 40).unwrap();
    assert_eq!(
        p.regions(),
        &[ram(0x4_0000, 0x3_0000), coherent(0x7_0000, 0x2_0000)]
    );
    let host_ram: Vec<_> = p.host_ram().collect();
    assert_eq!(host_ram, [(0x4000_0000, 0x3000_0000)]);
}

#[test]
fn manifest_format() {
    let text = "  # leading comment\r\n\
                \r\n\
                coherent\t0x8000_0000_0\t4K   # trailing comment\r\n\
                mmio 1G 0x1000\n\
                mmio-uc 0X2000_0000 8192\n\
                hyp 3G 64M#no space before comment\n\
                \t  \n";
    let m = Manifest::parse(text, 40).unwrap();
    let entries: Vec<_> = m
        .entries()
        .iter()
        .map(|e| (e.kind, e.base, e.size, e.line))
        .collect();
    assert_eq!(
        entries,
        [
            (ManifestKind::Coherent, 0x8_0000_0000, 0x1000, 3),
            (ManifestKind::Mmio, 1 << 30, 0x1000, 4),
            (ManifestKind::MmioUncached, 0x2000_0000, 0x2000, 5),
            (ManifestKind::Hyp, 3 << 30, 64 << 20, 6),
        ]
    );
    assert_eq!(Manifest::parse("", 32).unwrap().entries(), &[]);
    assert_eq!(Manifest::parse("# only\n\n#\n", 32).unwrap().entries(), &[]);
}

#[test]
fn manifest_errors_name_the_line() {
    let cases: &[(&str, PlatformError)] = &[
        (
            "# c\nmmio 0x1000 0x1000\ncoherent 0xZZ 4K\n",
            PlatformError::BadNumber { line: 3 },
        ),
        ("hyp 0x1000 4X\n", PlatformError::BadNumber { line: 1 }),
        ("\n\nhyp -4096 4K\n", PlatformError::BadNumber { line: 3 }),
        (
            "hyp 0x1_0000_0000_0000_0000 4K",
            PlatformError::BadNumber { line: 1 },
        ),
        ("\nmmio 0x1000 4K\n\nmmio 0x1000 4K", overlap(4)),
        ("mmio 0x2000 8K\nhyp 0x3000 4K", overlap(2)),
        ("hyp 0x3000 4K\n# x\nmmio 0x2000 8K", overlap(3)),
        (
            "coherent 0x10000 64K\nhyp 0x0 0x10000\nmmio 0x1f000 4K",
            overlap(3),
        ),
        ("mmio 0x1800 4K", unaligned(1)),
        ("\nmmio 0x1000 0x800", unaligned(2)),
        ("mmio 0x1000 4097", unaligned(1)),
        (
            "mmio 0x1000 0",
            PlatformError::Empty {
                at: Origin::Manifest { line: 1 },
            },
        ),
        (
            "hyp 0x1000 4K\nmemory 0x2000 4K",
            PlatformError::UnknownKeyword { line: 2 },
        ),
        ("MMIO 0x1000 4K", PlatformError::UnknownKeyword { line: 1 }),
        (
            "mmio_uc 0x1000 4K",
            PlatformError::UnknownKeyword { line: 1 },
        ),
        ("mmio 0x1000", PlatformError::ManifestSyntax { line: 1 }),
        ("\nmmio", PlatformError::ManifestSyntax { line: 2 }),
        (
            "mmio 0x1000 4K 4K",
            PlatformError::ManifestSyntax { line: 1 },
        ),
        ("mmio 0xff_ffff_f000 8K", outside(1)),
        ("\n\n\nmmio 0x100_0000_0000 4K", outside(4)),
        ("mmio 0xffff_ffff_ffff_f000 4K", outside(1)),
        ("hyp 0xffff_ffff_ffff_f000 8K", outside(1)),
    ];
    for (text, err) in cases {
        let got = Manifest::parse(text, 40);
        assert_eq!(got.as_ref().err(), Some(err), "{text:?}");
        assert!(err.line().is_some());
        assert_eq!(got.unwrap_err().line(), err.line());
    }
    // The last page of the PA space is fine.
    assert!(Manifest::parse("mmio 0xff_ffff_f000 4K", 40).is_ok());
    assert_eq!(Manifest::parse("", 12), Err(PlatformError::BadPaBits(12)));
}

fn overlap(line: usize) -> PlatformError {
    PlatformError::Overlap {
        at: Origin::Manifest { line },
    }
}

fn unaligned(line: usize) -> PlatformError {
    PlatformError::Unaligned {
        at: Origin::Manifest { line },
    }
}

fn outside(line: usize) -> PlatformError {
    PlatformError::OutsidePaSpace {
        at: Origin::Manifest { line },
    }
}

/// A child of the root: name, device_type, status, raw `reg` cells.
type Node<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a [u32]>);

/// A tree with the given root cells and children.
fn custom_fdt(root_cells: Option<(u32, u32)>, nodes: &[Node]) -> Vec<u8> {
    let mut w = vm_fdt::FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    if let Some((a, s)) = root_cells {
        w.property_u32("#address-cells", a).unwrap();
        w.property_u32("#size-cells", s).unwrap();
    }
    for &(name, device_type, status, reg) in nodes {
        let node = w.begin_node(name).unwrap();
        if let Some(t) = device_type {
            w.property_string("device_type", t).unwrap();
        }
        if let Some(s) = status {
            w.property_string("status", s).unwrap();
        }
        if let Some(reg) = reg {
            w.property_array_u32("reg", reg).unwrap();
        }
        // A grandchild with its own device_type must not confuse the parser.
        let child = w.begin_node("child").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.end_node(child).unwrap();
        w.end_node(node).unwrap();
    }
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn ram_of(fdt: &[u8]) -> Result<Vec<(u64, u64)>, PlatformError> {
    Platform::new(fdt, "", &[], 48).map(|p| p.host_ram().collect())
}

#[test]
fn device_tree_memory_nodes() {
    // One-cell addresses and sizes, several pairs, several nodes, a
    // disabled node, a non-memory node, touching ranges merged.
    let fdt = custom_fdt(
        Some((1, 1)),
        &[
            (
                "memory@1000",
                Some("memory"),
                None,
                Some(&[0x1000, 0x1000, 0x8000, 0x2000]),
            ),
            (
                "memory@2000",
                Some("memory"),
                Some("okay"),
                Some(&[0x2000, 0x1000]),
            ),
            (
                "memory@20000",
                Some("memory"),
                Some("disabled"),
                Some(&[0x20000, 0x1000]),
            ),
            ("sram@30000", Some("sram"), None, Some(&[0x30000, 0x1000])),
            ("mem", Some("memory"), Some("ok"), Some(&[0x40000, 0x1000])),
        ],
    );
    assert_eq!(
        ram_of(&fdt),
        Ok(vec![(0x1000, 0x2000), (0x8000, 0x2000), (0x40000, 0x1000)])
    );
    // No cells on the root: defaults 2 and 1.
    let fdt = custom_fdt(
        None,
        &[("memory@0", Some("memory"), None, Some(&[0x1, 0x0, 0x4000]))],
    );
    assert_eq!(ram_of(&fdt), Ok(vec![(1 << 32, 0x4000)]));
    // Two-cell sizes, overlapping nodes, unaligned edges rounded in, empty
    // ranges dropped.
    let fdt = custom_fdt(
        Some((2, 2)),
        &[
            (
                "memory@a",
                Some("memory"),
                None,
                Some(&[0, 0x1800, 0, 0x3000]),
            ),
            (
                "memory@b",
                Some("memory"),
                None,
                Some(&[0, 0x3000, 0, 0x2000, 0, 0x9000, 0, 0]),
            ),
            ("memory@c", Some("memory"), None, Some(&[0, 0x10000, 1, 0])),
        ],
    );
    assert_eq!(ram_of(&fdt), Ok(vec![(0x2000, 0x3000), (0x10000, 1 << 32)]));
}

#[test]
fn device_tree_errors() {
    let no_memory = custom_fdt(
        Some((2, 2)),
        &[("sram@0", Some("sram"), None, Some(&[0, 0, 0, 4096]))],
    );
    assert_eq!(ram_of(&no_memory), Err(PlatformError::NoMemoryNode));
    let disabled = custom_fdt(
        Some((2, 2)),
        &[(
            "memory@0",
            Some("memory"),
            Some("disabled"),
            Some(&[0, 0, 0, 4096]),
        )],
    );
    assert_eq!(ram_of(&disabled), Err(PlatformError::NoMemoryNode));
    let empty = custom_fdt(
        Some((2, 2)),
        &[("memory@0", Some("memory"), None, Some(&[0, 0, 0, 0]))],
    );
    assert_eq!(ram_of(&empty), Err(PlatformError::NoMemoryNode));
    let sub_page = custom_fdt(
        Some((1, 1)),
        &[("memory@0", Some("memory"), None, Some(&[0x800, 0x1000]))],
    );
    assert_eq!(ram_of(&sub_page), Err(PlatformError::NoMemoryNode));
    let no_reg = custom_fdt(Some((2, 2)), &[("memory@0", Some("memory"), None, None)]);
    assert_eq!(ram_of(&no_reg), Err(PlatformError::BadMemoryReg));
    let short_reg = custom_fdt(
        Some((2, 2)),
        &[("memory@0", Some("memory"), None, Some(&[0, 0, 1]))],
    );
    assert_eq!(ram_of(&short_reg), Err(PlatformError::BadMemoryReg));
    let empty_reg = custom_fdt(
        Some((2, 2)),
        &[("memory@0", Some("memory"), None, Some(&[]))],
    );
    assert_eq!(ram_of(&empty_reg), Err(PlatformError::BadMemoryReg));
    for cells in [(3, 2), (2, 0), (0, 1), (2, 3)] {
        let fdt = custom_fdt(
            Some(cells),
            &[("memory@0", Some("memory"), None, Some(&[0; 6]))],
        );
        assert_eq!(ram_of(&fdt), Err(PlatformError::BadCells), "{cells:?}");
    }
    let wraps = custom_fdt(
        Some((2, 2)),
        &[(
            "memory@0",
            Some("memory"),
            None,
            Some(&[u32::MAX, 0, 0, 0x1000_0000]),
        )],
    );
    assert_eq!(
        ram_of(&wraps),
        Err(PlatformError::OutsidePaSpace {
            at: Origin::Memory {
                base: 0xffff_ffff_0000_0000
            }
        })
    );
}

#[test]
fn qemu_virt_fdt_structure() {
    let blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let fdt = Fdt::new(&blob).unwrap();
    let mut walk = fdt.walk();
    let mut nodes = Vec::new();
    let mut path: Vec<String> = Vec::new();
    while let Some(token) = walk.next_token().unwrap() {
        match token {
            Token::BeginNode(name) => {
                path.push(String::from_utf8(name.to_vec()).unwrap());
                nodes.push(path.join("/"));
            }
            Token::EndNode => {
                path.pop();
            }
            Token::Prop { .. } => {}
        }
    }
    for node in [
        "/memory@40000000",
        "/cpus/cpu@0",
        "/cpus/cpu@1",
        "/pl011@9000000",
        "/intc@8000000",
        "/psci",
        "/chosen",
    ] {
        assert!(nodes.iter().any(|n| n == node), "{node} in {nodes:?}");
    }
    assert_eq!(ram_of(&blob), Ok(vec![(RAM_BASE, RAM_SIZE)]));
}

#[test]
fn truncated_fdt_is_an_error() {
    let blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    for len in 0..blob.len() {
        let got = Platform::new(&blob[..len], "", &[], 40);
        assert_eq!(
            got,
            Err(PlatformError::BadFdt(FdtError::Truncated)),
            "len {len}"
        );
    }
    assert_eq!(
        Platform::new(&[0xff; 64], "", &[], 40),
        Err(PlatformError::BadFdt(FdtError::BadMagic))
    );
}

/// Overwrite a big-endian header word, if the blob still has it.
fn set_word(blob: &mut [u8], index: usize, value: u32) {
    if let Some(word) = blob.get_mut(index * 4..index * 4 + 4) {
        word.copy_from_slice(&value.to_be_bytes());
    }
}

#[test]
fn bad_headers() {
    let blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let with = |index, value| {
        let mut b = blob.clone();
        set_word(&mut b, index, value);
        Platform::new(&b, "", &[], 40)
    };
    let bad = |e| Err(PlatformError::BadFdt(e));
    assert_eq!(with(1, blob.len() as u32 + 1), bad(FdtError::Truncated));
    assert_eq!(with(1, 8), bad(FdtError::BadLayout));
    assert_eq!(with(2, 0xffff_fff0), bad(FdtError::BadLayout));
    assert_eq!(with(2, 0x39), bad(FdtError::BadLayout));
    assert_eq!(with(3, blob.len() as u32), bad(FdtError::BadLayout));
    assert_eq!(with(5, 16), bad(FdtError::UnsupportedVersion));
    assert_eq!(with(6, 18), bad(FdtError::UnsupportedVersion));
    assert_eq!(with(8, u32::MAX), bad(FdtError::BadLayout));
    assert_eq!(with(9, u32::MAX), bad(FdtError::BadLayout));
    // A structure block cut short: no FDT_END.
    let size_struct = u32::from_be_bytes(blob[36..40].try_into().unwrap());
    assert!(matches!(
        with(9, size_struct - 4),
        Err(PlatformError::BadFdt(FdtError::BadStructure { .. }))
    ));
    // A strings block cut short: a property name runs off its end.
    assert!(matches!(
        with(8, 4),
        Err(PlatformError::BadFdt(FdtError::BadString { .. }))
    ));
}

#[test]
fn bad_structure_tokens() {
    let blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let off_struct = u32::from_be_bytes(blob[8..12].try_into().unwrap()) as usize;
    let size_struct = u32::from_be_bytes(blob[36..40].try_into().unwrap()) as usize;
    let end = off_struct + size_struct;
    let patch = |offset: usize, value: u32| {
        let mut b = blob.clone();
        b[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
        Platform::new(&b, "", &[], 40)
    };
    let is_structure = |r: Result<Platform, PlatformError>| {
        matches!(r, Err(PlatformError::BadFdt(FdtError::BadStructure { .. })))
    };
    // Unknown token in place of the root's BEGIN_NODE.
    assert!(is_structure(patch(off_struct, 7)));
    // Property before any node.
    assert!(is_structure(patch(off_struct, 3)));
    // FDT_END before the root closes: the root's END_NODE becomes END.
    assert!(is_structure(patch(end - 8, 9)));
    // An extra END_NODE in place of FDT_END.
    assert!(is_structure(patch(end - 4, 2)));
    // A second root after the first.
    assert!(is_structure(patch(end - 4, 1)));
    // NOPs are skipped: the root's END_NODE becomes NOP, then END comes with
    // the root open.
    assert!(is_structure(patch(end - 8, 4)));
    // A NOP in place of FDT_END leaves the walk without an end.
    assert!(is_structure(patch(end - 4, 4)));
}

#[test]
fn fuzzed_fdts_never_panic() {
    let blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let off_struct = u32::from_be_bytes(blob[8..12].try_into().unwrap()) as u64;
    let mut rng = Rng(0x0dd_ba11);
    let mut outcomes = [0usize; 2];
    for round in 0..6000 {
        let mut b = blob.clone();
        let mutations = 1 + rng.below(4);
        for _ in 0..mutations {
            let len = b.len() as u64;
            match rng.below(7) {
                // Flip one bit anywhere.
                0 => {
                    let i = rng.below(len) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
                // A random byte anywhere.
                1 => {
                    let i = rng.below(len) as usize;
                    b[i] = rng.next() as u8;
                }
                // An interesting word at an aligned offset in the structure
                // block: tokens, lengths, string offsets.
                2 | 3 if len >= off_struct + 4 => {
                    let words = [
                        0,
                        1,
                        2,
                        3,
                        4,
                        9,
                        0xff,
                        0xffff_ffff,
                        0x8000_0000,
                        0x7fff_fffc,
                        4096,
                    ];
                    let w = words[rng.below(words.len() as u64) as usize];
                    let i = (off_struct + 4 * rng.below((len - off_struct) / 4)) as usize;
                    if i + 4 <= b.len() {
                        b[i..i + 4].copy_from_slice(&u32::to_be_bytes(w));
                    }
                }
                // A header word set to something random or near the size.
                4 => {
                    let index = rng.below(10) as usize;
                    let v = match rng.below(3) {
                        0 => rng.next() as u32,
                        1 => (len as u32)
                            .wrapping_add(rng.below(16) as u32)
                            .wrapping_sub(8),
                        _ => rng.below(64) as u32,
                    };
                    set_word(&mut b, index, v);
                }
                // Truncate.
                5 => {
                    let keep = rng.below(len + 1) as usize;
                    b.truncate(keep);
                    if b.len() < 4 {
                        break;
                    }
                }
                // Duplicate a slice (shifts everything after it).
                _ => {
                    let i = rng.below(len) as usize;
                    let n = (rng.below(16) as usize).min(b.len() - i);
                    let chunk: Vec<u8> = b[i..i + n].to_vec();
                    b.splice(i..i, chunk);
                }
            }
        }
        let result = Platform::new(&b, QEMU_VIRT_MANIFEST, &[(0x4008_0000, 0x1000)], 40);
        outcomes[result.is_ok() as usize] += 1;
        // Walk the whole tree too: it ends or fails, every time.
        if let Ok(fdt) = Fdt::new(&b) {
            let mut walk = fdt.walk();
            let mut steps = 0;
            while let Ok(Some(_)) = walk.next_token() {
                steps += 1;
                assert!(steps <= b.len(), "round {round}: walk does not advance");
            }
        }
    }
    // Both outcomes occur: the mutations are neither all fatal nor all benign.
    assert!(outcomes[0] > 100 && outcomes[1] > 100, "{outcomes:?}");
}

#[test]
fn random_blobs_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(256) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 40 && rng.below(2) == 0 {
            // A plausible header over random contents.
            set_word(&mut b, 0, 0xd00d_feed);
            set_word(&mut b, 1, len as u32);
            set_word(&mut b, 2, 40);
            set_word(&mut b, 3, rng.below(len as u64) as u32);
            set_word(&mut b, 5, 17);
            set_word(&mut b, 6, 16);
            set_word(&mut b, 8, rng.below(64) as u32);
            set_word(&mut b, 9, (len as u32 - 40) & !3);
        }
        let _ = Platform::new(&b, "", &[], 40);
    }
}

#[test]
fn fuzzed_manifests_never_panic() {
    let words = [
        "coherent",
        "mmio",
        "mmio-uc",
        "hyp",
        "#",
        "0x1000",
        "4K",
        "64M",
        "1G",
        "0x",
        "_",
        "0",
        "18446744073709551615",
        "0xffff_ffff_ffff_f000",
        "\t",
        "\r",
        "ÿ",
        "mmio-",
        "K",
        "0x4000_0000",
    ];
    let fdt = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..rng.below(6) {
            for _ in 0..rng.below(5) {
                text.push_str(words[rng.below(words.len() as u64) as usize]);
                text.push(' ');
            }
            text.push('\n');
        }
        let parsed = Manifest::parse(&text, 40);
        let built = Platform::new(&fdt, &text, &[], 40);
        if let Err(e) = parsed {
            // Manifest errors carry a line inside the text.
            let line = e.line().unwrap();
            assert!(line >= 1 && line <= text.lines().count(), "{text:?}: {e:?}");
            assert_eq!(built, Err(e));
        }
    }
    let _ = format!("{}", PlatformError::BadNumber { line: 1 });
}

#[test]
fn errors_display() {
    let e = PlatformError::Overlap {
        at: Origin::Manifest { line: 7 },
    };
    assert_eq!(format!("{e}"), "manifest line 7: overlaps another range");
    let e = PlatformError::BadFdt(FdtError::BadStructure { offset: 0x40 });
    assert_eq!(
        format!("{e}"),
        "ill-formed device tree structure at offset 0x40"
    );
}

#[test]
fn manifest_host_image() {
    let m = Manifest::parse(crate::QEMU_VIRT_MANIFEST, 48).unwrap();
    assert_eq!(m.host_image(), Some(0x4400_0000));
    assert_eq!(
        Manifest::parse("host-image 0x1001", 48).unwrap_err().line(),
        Some(1)
    );
    assert_eq!(
        Manifest::parse("\nhost-image 0x1000\nhost-image 0x2000", 48)
            .unwrap_err()
            .line(),
        Some(3)
    );
    assert!(Manifest::parse("host-image", 48).is_err());
    assert!(Manifest::parse("host-image 0x1_0000_0000_0000", 48).is_err());
}

#[test]
fn withheld_ranges() {
    let p = qemu_platform(&[]).unwrap();
    let pfn = |addr: u64| addr >> PAGE_SHIFT;
    for (base, size) in [
        (SMMU_BASE, SMMU_SIZE),
        (FW_CFG_BASE, FW_CFG_SIZE),
        (ITS_BASE, ITS_SIZE),
    ] {
        assert!(p.is_withheld(pfn(base)));
        assert!(p.is_withheld(pfn(base + size - 1)));
        assert!(!p.is_withheld(pfn(base + size)));
        assert_eq!(p.classify(pfn(base)), (MemClass::Mmio, None));
    }
    assert!(!p.is_withheld(pfn(UART_BASE)));
    assert!(!p.is_withheld(pfn(ITS_BASE) - 1));
    assert_eq!(p.withheld().count(), 3);
    // Withheld memory is refused: only MMIO can be withheld.
    let m = "withheld 0x4000_0000 4K\n";
    let fdt = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    assert!(matches!(
        Platform::new(&fdt, m, &[], 40),
        Err(PlatformError::Overlap { .. })
    ));
}

/// Found by the `device_tree` fuzz target: a timer PPI number near
/// `u32::MAX` made the PPI decoder compute `16 + n` before checking `n`,
/// an overflow (a panic wherever overflow checks are on). It is not a PPI:
/// the tree has no usable timer.
#[test]
fn timer_ppi_number_near_u32_max_is_refused() {
    let mut blob = qemu_virt_fdt(RAM_BASE, RAM_SIZE);
    let timers: Vec<u8> = [1u32, 13, 4, 1, 14, 4]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    let at = blob
        .windows(timers.len())
        .position(|w| w == timers.as_slice())
        .expect("the timer's interrupts");
    blob[at + 4..at + 8].copy_from_slice(&0xFFFF_FFF5u32.to_be_bytes());
    assert_eq!(gic_facts(&blob), Err(PlatformError::NoGic));
}
