//! The root geometry choice and concatenated level-1 roots (a 40..=42-bit
//! IPA space on a CPU whose PA size forbids starting at level 0): updates,
//! lookups, walks and table counts across the 512 GiB lines between root
//! pages.

mod common;

use common::*;
use pagetables::{
    stage2_root_geometry, Entry, Error, Leaf, MemType, PageState, Perms, RootGeometry, Stage2,
};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// Span of one level-1 root page.
const G512: u64 = 512 * GIB;
/// A page-aligned output address far from the IPAs, 1 GiB aligned.
const PA: u64 = 1 << 41;

fn wb() -> Leaf {
    Leaf {
        perms: Perms {
            r: true,
            w: true,
            x: true,
        },
        memtype: MemType::NormalWb,
        state: PageState::Owned,
    }
}

fn mapped(pa: u64, leaf: Leaf, level: u8) -> Entry {
    Entry::Mapped { pa, leaf, level }
}

const INV: Entry = Entry::Invalid { annotation: 0 };

fn runs(s2: &Stage2<TestMem>, ipa: u64, nr: u64) -> Vec<(u64, u64, Entry)> {
    let mut v = vec![];
    s2.walk(ipa, nr, &mut |a, n, e| {
        v.push((a, n, e));
        true
    })
    .unwrap();
    v
}

/// The runs tile `[ipa, ipa + nr pages)` in order.
fn assert_tiles(r: &[(u64, u64, Entry)], ipa: u64, nr: u64) {
    let mut at = ipa;
    for &(a, n, _) in r {
        assert_eq!(a, at, "runs not contiguous");
        assert!(n > 0);
        at += n * 4096;
    }
    assert_eq!(at, ipa + nr * 4096);
}

fn geo(start_level: u8, root_pages: usize) -> RootGeometry {
    RootGeometry {
        start_level,
        root_pages,
    }
}

#[test]
fn geometry_table() {
    for (ipa, pa, want) in [
        (20, 40, geo(1, 1)), // clamped to 32 bits
        (32, 40, geo(1, 1)),
        (36, 36, geo(1, 1)),
        (39, 40, geo(1, 1)),
        (39, 48, geo(1, 1)),
        (40, 36, geo(1, 2)),
        (40, 40, geo(1, 2)),
        (40, 42, geo(1, 2)),
        (41, 40, geo(1, 4)),
        (42, 42, geo(1, 8)),
        (43, 42, geo(1, 16)),
        (48, 40, geo(1, 16)), // clamped to 43 bits
        (40, 44, geo(0, 1)),
        (42, 44, geo(0, 1)),
        (44, 44, geo(0, 1)),
        (40, 48, geo(0, 1)),
        (48, 48, geo(0, 1)),
        (40, 52, geo(0, 1)),
        (60, 48, geo(0, 1)), // clamped to 48 bits
    ] {
        assert_eq!(stage2_root_geometry(ipa, pa), want, "ipa {ipa} pa {pa}");
    }
    assert_eq!(geo(0, 1).vtcr_sl0(), 0b10);
    assert_eq!(geo(1, 2).vtcr_sl0(), 0b01);
    assert_eq!(geo(2, 1).vtcr_sl0(), 0b00);
    assert_eq!(geo(1, 1).root_align(), 4096);
    assert_eq!(geo(1, 2).root_align(), 8192);
    assert_eq!(geo(1, 8).root_align(), 32768);

    // Stage2 follows the geometry, with the clamped IPA size.
    for (ipa, pa, bits) in [
        (40, 40, 40),
        (41, 40, 41),
        (42, 42, 42),
        (48, 40, 43),
        (40, 44, 40),
    ] {
        let (_m, s2) = setup_pa(ipa, pa, true, 0);
        let g = stage2_root_geometry(ipa, pa);
        assert_eq!(s2.geometry(), g);
        assert_eq!(s2.root_level(), g.start_level);
        assert_eq!(s2.ipa_bits(), bits);
        assert_eq!(s2.table_pages(), g.root_pages);
        assert_eq!(s2.pool_len(), 0);
    }
}

#[test]
fn concatenated_root_is_zeroed_and_returned() {
    let mem = TestMem::new();
    // Pages 2 and 3: 8 KiB aligned. Garbage in both before the hand-over.
    let root = TestMem::page(2);
    for p in [root, root + 4096] {
        let v = pagetables::PhysMem::phys_to_virt(&mem, p);
        // SAFETY: in-bounds test buffer page.
        unsafe { std::ptr::write_bytes(v, 0xff, 4096) };
    }
    let mut s2 = Stage2::new(mem.clone(), root, 40, 40, true, 3);
    assert_eq!((s2.geometry(), s2.root_pa()), (geo(1, 2), root));
    for i in 0..1024 {
        assert_eq!(mem.read(root + i * 8), 0);
    }
    assert_eq!(s2.table_pages(), 2);
    for ipa in [0, G512 - 4096, G512, (1 << 40) - 4096, 1 << 40] {
        assert_eq!(s2.lookup(ipa), INV, "{ipa:#x}");
    }
    // A page in the second root page needs a level-2 and a level-3 table.
    s2.pool_add(TestMem::page(4));
    assert_eq!(
        s2.map(G512, PA, 1, wb(), false, &mut Rec::new()),
        Err(Error::NoMem {
            needed: 2,
            available: 1
        })
    );
    s2.pool_add(TestMem::page(5));
    s2.map(G512, PA, 1, wb(), false, &mut Rec::new()).unwrap();
    assert_eq!(mem.read(root + 4096) & 3, 3);
    let mut got = vec![];
    s2.destroy(&mut |p| got.push(p));
    got.sort();
    assert_eq!(got, (2..=5).map(TestMem::page).collect::<Vec<_>>());
}

#[test]
#[should_panic(expected = "not aligned")]
fn misaligned_concatenated_root_panics() {
    let _ = Stage2::new(TestMem::new(), TestMem::page(1), 40, 40, true, 3);
}

#[test]
fn pages_across_the_512g_line() {
    let (mem, mut s2) = setup_pa(40, 40, true, 16);
    let root = s2.root_pa();
    let mut mnt = Rec::new();
    let ipa = G512 - 3 * 4096;
    // One level-2 and one level-3 table on each side.
    assert_eq!(s2.tables_needed(ipa, 6, false), 4);
    assert_eq!(s2.map_tables_needed(ipa, PA, 6, wb(), false), 4);
    s2.map(ipa, PA, 6, wb(), false, &mut mnt).unwrap();
    assert_eq!(mnt.take(), vec![Ev::Dsb]);
    assert_eq!((s2.table_pages(), s2.pool_len()), (6, 12));
    assert_eq!(all_tables(&mem, &s2).len(), 6);
    for i in 0..6 {
        assert_eq!(s2.lookup(ipa + i * 4096), mapped(PA + i * 4096, wb(), 3));
    }
    assert_eq!(s2.lookup(ipa - 4096), INV);
    assert_eq!(s2.lookup(G512 + 3 * 4096), INV);

    // The level-1 descriptors are where the hardware reads them:
    // root + (ipa >> 30) * 8, i.e. the last entry of page 0 and the first
    // of page 1; nothing else in the root.
    assert_eq!(desc_pa(&mem, &s2, G512 - 4096, 1), root + 511 * 8);
    assert_eq!(desc_pa(&mem, &s2, G512, 1), root + 4096);
    let used: Vec<u64> = (0..1024).filter(|i| mem.read(root + i * 8) != 0).collect();
    assert_eq!(used, vec![511, 512]);
    assert_eq!(mem.read(root + 511 * 8) & 3, 3);
    assert_eq!(mem.read(root + 512 * 8) & 3, 3);

    // Walk: absolute IPAs on both sides.
    let r = runs(&s2, ipa - 4096, 8);
    let mut want = vec![(ipa - 4096, 1, INV)];
    want.extend((0..6).map(|i| (ipa + i * 4096, 1, mapped(PA + i * 4096, wb(), 3))));
    want.push((G512 + 3 * 4096, 1, INV));
    assert_eq!(r, want);
    // An early stop in the first root page does not go on in the second;
    // one in the second stops there.
    for stop in [G512 - 4096, G512 + 4096] {
        let mut seen = vec![];
        s2.walk(ipa, 6, &mut |a, _, _| {
            seen.push(a);
            a < stop
        })
        .unwrap();
        assert_eq!(seen.last(), Some(&stop));
        assert_eq!(seen.len() as u64, (stop - ipa) / 4096 + 1);
    }

    // Unmap two pages across the line: break-free, one TLBI each.
    let mut mnt = Rec::new();
    assert_eq!(s2.set_invalid_tables_needed(G512 - 4096, 2, 0x77), 0);
    s2.set_invalid(G512 - 4096, 2, 0x77, &mut mnt).unwrap();
    assert_eq!(
        mnt.ev,
        vec![Ev::Dsb, Ev::Ipa(G512 - 4096, 3), Ev::Ipa(G512, 3), Ev::Dsb]
    );
    assert_eq!(s2.lookup(G512 - 8192), mapped(PA + 4096, wb(), 3));
    assert_eq!(s2.lookup(G512 - 4096), Entry::Invalid { annotation: 0x77 });
    assert_eq!(s2.lookup(G512), Entry::Invalid { annotation: 0x77 });
    assert_eq!(s2.lookup(G512 + 4096), mapped(PA + 4 * 4096, wb(), 3));
    assert_eq!(s2.descriptor(G512), (0x77 << 2, 3));

    // Unmap a whole 2 MiB on each side: both last-level tables detached.
    let mut mnt = Rec::new();
    s2.set_invalid(G512 - MIB2, 1024, 0, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Vmid(7), Ev::Dsb]);
    assert_eq!((s2.table_pages(), s2.pool_len()), (4, 14));
    assert_eq!(s2.descriptor(G512 - 4096), (0, 2));
    assert_eq!(s2.descriptor(G512), (0, 2));
    assert_eq!(all_tables(&mem, &s2).len(), 4);

    // Destroy hands back both root pages, the tables and the pool.
    let taken = s2.pool_take().unwrap();
    let mut got = vec![];
    s2.destroy(&mut |p| got.push(p));
    got.sort();
    let want: Vec<u64> = (0..18).map(TestMem::page).filter(|&p| p != taken).collect();
    assert_eq!(got, want);
}

#[test]
fn blocks_across_the_512g_line() {
    let (mem, mut s2) = setup_pa(40, 40, true, 16);
    let root = s2.root_pa();
    let two_gib = 2 * GIB / 4096;
    // 1 GiB blocks on both sides of the line: no tables at all.
    assert_eq!(s2.map_tables_needed(G512 - GIB, PA, two_gib, wb(), true), 0);
    s2.map(G512 - GIB, PA, two_gib, wb(), true, &mut Rec::new())
        .unwrap();
    assert_eq!(s2.table_pages(), 2);
    assert_eq!(mem.read(root + 511 * 8) & 3, 1);
    assert_eq!(mem.read(root + 512 * 8) & 3, 1);
    assert_eq!(
        s2.lookup(G512 - GIB + 0x1234_5000),
        mapped(PA + 0x1234_5000, wb(), 1)
    );
    assert_eq!(s2.lookup(G512 + 0x5000), mapped(PA + GIB + 0x5000, wb(), 1));
    assert_eq!(
        runs(&s2, G512 - GIB, two_gib),
        vec![
            (G512 - GIB, 1 << 18, mapped(PA, wb(), 1)),
            (G512, 1 << 18, mapped(PA + GIB, wb(), 1)),
        ]
    );

    // Unmap three pages across the line: both blocks are broken (BBM, both
    // invalid at TLBI time) and rebuilt around the hole one level down.
    assert_eq!(s2.set_invalid_tables_needed(G512 - 4096, 3, 5), 4);
    assert_eq!(s2.tables_needed(G512 - 4096, 3, true), 4);
    let mut mnt = Rec::watching(&mem, root + 512 * 8);
    s2.set_invalid(G512 - 4096, 3, 5, &mut mnt).unwrap();
    assert_eq!(
        mnt.ev,
        vec![
            Ev::Dsb,
            Ev::Ipa(G512 - GIB, 1),
            Ev::Ipa(G512, 1),
            Ev::Dsb,
            Ev::Dsb
        ]
    );
    assert_eq!(mnt.seen, vec![0, 0]);
    assert_eq!(s2.table_pages(), 6);
    assert_eq!(all_tables(&mem, &s2).len(), 6);
    assert_eq!(s2.lookup(G512 - 8192), mapped(PA + GIB - 8192, wb(), 3));
    assert_eq!(s2.lookup(G512 - 4096), Entry::Invalid { annotation: 5 });
    assert_eq!(s2.lookup(G512 + 4096), Entry::Invalid { annotation: 5 });
    assert_eq!(s2.lookup(G512 + 8192), mapped(PA + GIB + 8192, wb(), 3));
    assert_eq!(s2.lookup(G512 - GIB), mapped(PA, wb(), 2));
    assert_eq!(
        s2.lookup(G512 + GIB - 4096),
        mapped(PA + 2 * GIB - 4096, wb(), 2)
    );
    let r = runs(&s2, G512 - GIB, two_gib);
    assert_tiles(&r, G512 - GIB, two_gib);
    // 511 blocks + 511 pages | 1 + 2 invalid pages | 510 pages + 511 blocks.
    assert_eq!(r.len(), 511 + 511 + 1 + 2 + 510 + 511);
    for (a, n, e) in r {
        match e {
            Entry::Mapped { pa, level, .. } => {
                assert_eq!(pa, PA + (a - (G512 - GIB)), "{a:#x}");
                assert_eq!(n, if level == 2 { 512 } else { 1 });
            }
            Entry::Invalid { annotation } => {
                assert_eq!(annotation, 5);
                assert!((G512 - 4096..G512 + 8192).contains(&a));
            }
        }
    }

    // Unmap the whole second root page's span: its split entry is one
    // table fully covered (detached, VMID TLBI); the root page stays.
    let all_second = G512 / 4096;
    assert_eq!(s2.set_invalid_tables_needed(G512, all_second, 9), 0);
    let mut mnt = Rec::new();
    s2.set_invalid(G512, all_second, 9, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Vmid(7), Ev::Dsb]);
    assert_eq!((s2.table_pages(), s2.pool_len()), (4, 14));
    assert_eq!(mem.read(root + 512 * 8), 9 << 2);
    assert_eq!(mem.read(root + 1023 * 8), 9 << 2);
    assert_eq!(s2.descriptor(2 * G512 - 4096), (9 << 2, 1));
    assert_eq!(s2.lookup(G512 - 8192), mapped(PA + GIB - 8192, wb(), 3));
    assert_eq!(
        runs(&s2, G512, all_second),
        (0..512)
            .map(|i| (G512 + i * GIB, 1 << 18, Entry::Invalid { annotation: 9 }))
            .collect::<Vec<_>>()
    );
}

#[test]
fn walk_whole_40bit_space() {
    let (_m, mut s2) = setup_pa(40, 40, false, 64);
    let all = 1u64 << 28;
    // Empty: one invalid run per level-1 entry of both root pages.
    let r = runs(&s2, 0, all);
    assert_eq!(r.len(), 1024);
    for (i, &(a, n, e)) in r.iter().enumerate() {
        assert_eq!((a, n, e), (i as u64 * GIB, 1 << 18, INV));
    }

    let mut mnt = Rec::new();
    s2.map(0x1000, PA, 1, wb(), false, &mut mnt).unwrap();
    s2.map(G512 + 5 * GIB + MIB2, PA + MIB2, 512, wb(), true, &mut mnt)
        .unwrap();
    s2.map(2 * G512 - 4096, PA + 0x7000, 1, wb(), false, &mut mnt)
        .unwrap();
    s2.set_invalid(700 * GIB, 1 << 18, 0x3ff, &mut mnt).unwrap();
    let r = runs(&s2, 0, all);
    assert_tiles(&r, 0, all);
    let valid: Vec<_> = r
        .iter()
        .filter(|(_, _, e)| matches!(e, Entry::Mapped { .. }))
        .copied()
        .collect();
    assert_eq!(
        valid,
        vec![
            (0x1000, 1, mapped(PA, wb(), 3)),
            (G512 + 5 * GIB + MIB2, 512, mapped(PA + MIB2, wb(), 2)),
            (2 * G512 - 4096, 1, mapped(PA + 0x7000, wb(), 3)),
        ]
    );
    let annotated: Vec<_> = r
        .iter()
        .filter(|(_, _, e)| *e == Entry::Invalid { annotation: 0x3ff })
        .copied()
        .collect();
    assert_eq!(
        annotated,
        vec![(700 * GIB, 1 << 18, Entry::Invalid { annotation: 0x3ff })]
    );
    // A walk of the second half only reports absolute IPAs.
    let r = runs(&s2, G512 + 5 * GIB, 1024);
    assert_eq!(
        r,
        vec![
            (G512 + 5 * GIB, 512, INV),
            (G512 + 5 * GIB + MIB2, 512, mapped(PA + MIB2, wb(), 2)),
        ]
    );

    // Nothing beyond 40 bits.
    assert_eq!(s2.walk(0, all + 1, &mut |_, _, _| true), Err(Error::Range));
    assert_eq!(
        s2.map(1 << 40, PA, 1, wb(), false, &mut mnt),
        Err(Error::Range)
    );
    assert_eq!(
        s2.set_invalid((1 << 40) - 4096, 2, 0, &mut mnt),
        Err(Error::Range)
    );
    assert_eq!(s2.lookup(1 << 40), INV);
    assert_eq!(s2.descriptor(1 << 40), (0, 1));
}

/// Pages taken and given back by one update equal the counts.
fn check_counted(mem: &TestMem, s2: &mut Stage2<TestMem>, op: &str, ipa: u64, nr: u64, pa: u64) {
    let before = all_tables(mem, s2);
    let mut mnt = Rec::new();
    let exact = match op {
        "pages" => {
            let n = s2.map_tables_needed(ipa, pa, nr, wb(), false);
            assert_eq!(s2.tables_needed(ipa, nr, false), n, "{op} {ipa:#x}");
            s2.map(ipa, pa, nr, wb(), false, &mut mnt).unwrap();
            n
        }
        "blocks" => {
            let n = s2.map_tables_needed(ipa, pa, nr, wb(), true);
            assert_eq!(s2.tables_needed(ipa, nr, true), n, "{op} {ipa:#x}");
            s2.map(ipa, pa, nr, wb(), true, &mut mnt).unwrap();
            n
        }
        _ => {
            let n = s2.set_invalid_tables_needed(ipa, nr, 1);
            assert_eq!(s2.tables_needed(ipa, nr, true), n, "{op} {ipa:#x}");
            s2.set_invalid(ipa, nr, 1, &mut mnt).unwrap();
            n
        }
    };
    let after = all_tables(mem, s2);
    assert_eq!(
        after.difference(&before).count(),
        exact,
        "{op} {ipa:#x} {nr}"
    );
    assert_eq!(s2.table_pages(), after.len());
}

#[test]
fn tables_needed_exact_across_both_halves() {
    let (mem, mut s2) = setup_pa(40, 40, true, 3000);
    let all = 1u64 << 28;
    // The whole space: every level-1 entry of both pages needs a level-2
    // table and 512 level-3 tables; with blocks, nothing.
    assert_eq!(s2.tables_needed(0, all, false), 1024 * 513);
    assert_eq!(s2.tables_needed(0, all, true), 0);
    assert_eq!(s2.set_invalid_tables_needed(0, all, 1), 0);

    // Half a GiB on each side, page-granular: 1 + 256 tables per side.
    let a = G512 - GIB / 2;
    let n = GIB / 4096;
    assert_eq!(s2.tables_needed(a, n, false), 2 * 257);
    // With blocks (output congruent to the IPA mod 1 GiB): 1 level-2 table
    // per side.
    assert_eq!(s2.tables_needed(a, n, true), 2);
    check_counted(&mem, &mut s2, "blocks", a, n, PA + a % GIB);
    assert_eq!(s2.table_pages(), 4);
    // Pages over part of that, straddling the line: splits two 2 MiB blocks.
    check_counted(&mem, &mut s2, "pages", G512 - 4096, 2, PA + 0x3000);
    assert_eq!(s2.table_pages(), 6);
    // Unmap across the line, partly in tables, partly in blocks, partly in
    // untouched level-1 entries.
    check_counted(&mem, &mut s2, "unmap", G512 - GIB + 0x5000, n + 7, 0);
    check_counted(&mem, &mut s2, "unmap", G512 - 3 * MIB2, 1536 + 3, 0);
    // Pages over three 2 MiB entries (two new last-level tables on the
    // left, one on the right), then blocks over four whole GiBs around the
    // line (existing tables are kept, the other entries become blocks).
    check_counted(&mem, &mut s2, "pages", G512 - MIB2 - 0x2000, 1030, PA);
    assert_eq!(s2.table_pages(), 2 + 2 + 2 + 3);
    check_counted(&mem, &mut s2, "blocks", G512 - 2 * GIB, 4 * n, PA);
    assert_eq!(s2.table_pages(), 2 + 2 + 2 + 3);
    check_counted(&mem, &mut s2, "unmap", 0, all, 0);
    assert_eq!(s2.table_pages(), 2);
    assert_eq!(s2.pool_len(), 3000);
}

#[test]
fn eight_root_pages() {
    // 42-bit IPA on a 42-bit PA CPU: level 1, 8 pages (32 KiB aligned).
    let (mem, mut s2) = setup_pa(42, 42, true, 8);
    assert_eq!(s2.geometry(), geo(1, 8));
    let root = s2.root_pa();
    let ipa = 3 * G512 - 4096;
    s2.map(ipa, PA, 2, wb(), false, &mut Rec::new()).unwrap();
    assert_eq!(desc_pa(&mem, &s2, ipa, 1), root + 2 * 4096 + 511 * 8);
    assert_eq!(desc_pa(&mem, &s2, ipa + 4096, 1), root + 3 * 4096);
    assert_eq!(
        runs(&s2, ipa, 2),
        vec![
            (ipa, 1, mapped(PA, wb(), 3)),
            (ipa + 4096, 1, mapped(PA + 4096, wb(), 3))
        ]
    );
    let top = (1u64 << 42) - 4096;
    s2.map(top, PA + 0x9000, 1, wb(), false, &mut Rec::new())
        .unwrap();
    assert_eq!(desc_pa(&mem, &s2, top, 1), root + 8 * 4096 - 8);
    assert_eq!(s2.lookup(top), mapped(PA + 0x9000, wb(), 3));
    assert_eq!(s2.table_pages(), 8 + 6);
    let mut got = vec![];
    s2.destroy(&mut |p| got.push(p));
    got.sort();
    assert_eq!(got, (0..16).map(TestMem::page).collect::<Vec<_>>());
}

/// An update covering an existing table entirely: a page-granular map
/// descends into it (the block it holds must split, every empty 2 MiB
/// needs a table), an unmap detaches it whole and needs no table, whatever
/// it holds. Both counts are what the update takes.
#[test]
fn tables_counted_under_a_fully_covered_table() {
    let (mem, mut s2) = setup_pa(40, 40, true, 3000);
    let mut mnt = Rec::new();
    // A level-2 table for the first GiB: a 2 MiB block and, at 4 MiB, a
    // page in a level-3 table, neither what the map below asks for (a
    // unit that already holds it would be left alone).
    s2.map(0, PA + 8 * GIB, 512, wb(), true, &mut mnt).unwrap();
    s2.map(4 << 20, PA + 8 * GIB, 1, wb(), false, &mut mnt)
        .unwrap();
    assert_eq!(s2.tables_needed(0, GIB / 4096, false), 511);
    check_counted(&mem, &mut s2, "pages", 0, GIB / 4096, PA);
    assert_eq!(s2.set_invalid_tables_needed(0, GIB / 4096, 1), 0);
    check_counted(&mem, &mut s2, "invalid", 0, GIB / 4096, 0);
    // Half of it again, page by page: one level-2 table and 256 below.
    assert_eq!(s2.tables_needed(0, GIB / 8192, false), 257);
    check_counted(&mem, &mut s2, "pages", 0, GIB / 8192, PA);
    // Unmapping a range that covers the level-3 table of one 2 MiB and part
    // of the next: the first is detached, the second keeps its table.
    assert_eq!(s2.set_invalid_tables_needed(0, 512 + 7, 1), 0);
    check_counted(&mem, &mut s2, "invalid", 0, 512 + 7, 0);
}
