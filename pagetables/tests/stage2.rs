//! Behaviour of `Stage2` against fake memory and recorded maintenance.

mod common;

use common::*;
use pagetables::{
    decode_memattr, memattr_bits, Entry, Error, Leaf, MemType, PageState, Perms, Stage2,
};

const RWX: Perms = Perms {
    r: true,
    w: true,
    x: true,
};
const RW: Perms = Perms {
    r: true,
    w: true,
    x: false,
};
const R: Perms = Perms {
    r: true,
    w: false,
    x: false,
};
const MIB2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

fn leaf(perms: Perms, memtype: MemType, state: PageState) -> Leaf {
    Leaf {
        perms,
        memtype,
        state,
    }
}

fn wb() -> Leaf {
    leaf(RWX, MemType::NormalWb, PageState::Owned)
}

fn mapped(pa: u64, leaf: Leaf, level: u8) -> Entry {
    Entry::Mapped { pa, leaf, level }
}

/// Collect walk() runs.
fn runs(s2: &Stage2<TestMem>, ipa: u64, nr: u64) -> Vec<(u64, u64, Entry)> {
    let mut v = vec![];
    s2.walk(ipa, nr, &mut |a, n, e| {
        v.push((a, n, e));
        true
    })
    .unwrap();
    v
}

#[test]
fn new_table_geometry() {
    let (_m, s2) = setup(39, true, 0);
    assert_eq!(
        (s2.root_level(), s2.ipa_bits(), s2.vmid(), s2.fwb()),
        (1, 39, 7, true)
    );
    assert_eq!(s2.root_pa(), TestMem::page(0));
    assert_eq!(s2.table_pages(), 1);
    let (_m, s2) = setup(40, false, 0);
    assert_eq!(s2.root_level(), 0);
    let (_m, s2) = setup(48, false, 0);
    assert_eq!(s2.root_level(), 0);
    let (_m, s2) = setup(60, false, 0);
    assert_eq!(s2.ipa_bits(), 48);
    assert_eq!(s2.geometry().root_pages, 1);
}

#[test]
fn root_is_zeroed() {
    let mem = TestMem::new();
    let root = TestMem::page(3);
    // Garbage in the root page before it is handed over.
    let p = pagetables::PhysMem::phys_to_virt(&mem, root);
    // SAFETY: in-bounds test buffer page.
    unsafe { std::ptr::write_bytes(p, 0xff, 4096) };
    let s2 = Stage2::new(mem.clone(), root, 39, 48, true, 1);
    for i in 0..512 {
        assert_eq!(mem.read(root + i * 8), 0);
    }
    assert_eq!(s2.lookup(0), Entry::Invalid { annotation: 0 });
}

#[test]
fn map_lookup_walk_pages() {
    let (_m, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    let l = leaf(RW, MemType::NormalWb, PageState::SharedOwned);
    s2.map(0x1000, 0x9_0000_3000, 3, l, true, &mut mnt).unwrap();
    assert_eq!(s2.lookup(0x0), Entry::Invalid { annotation: 0 });
    for i in 0..3 {
        assert_eq!(
            s2.lookup(0x1000 + i * 0x1000),
            mapped(0x9_0000_3000 + i * 0x1000, l, 3)
        );
    }
    // Unaligned lookups name the page.
    assert_eq!(s2.lookup(0x1abc), mapped(0x9_0000_3000, l, 3));
    assert_eq!(s2.lookup(0x4000), Entry::Invalid { annotation: 0 });
    assert_eq!(s2.table_pages(), 3);
    assert_eq!(s2.pool_len(), 6);
    let r = runs(&s2, 0, 5);
    assert_eq!(
        r,
        vec![
            (0, 1, Entry::Invalid { annotation: 0 }),
            (0x1000, 1, mapped(0x9_0000_3000, l, 3)),
            (0x2000, 1, mapped(0x9_0000_4000, l, 3)),
            (0x3000, 1, mapped(0x9_0000_5000, l, 3)),
            (0x4000, 1, Entry::Invalid { annotation: 0 }),
        ]
    );
    // Mapping invalid -> valid needs no TLBI; a final DSB publishes.
    assert_eq!(mnt.ev, vec![Ev::Dsb]);
    // Early stop.
    let mut n = 0;
    s2.walk(0, 5, &mut |_, _, _| {
        n += 1;
        n < 2
    })
    .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn blocks_where_aligned() {
    let (_m, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    // 2 MiB aligned on both sides, plus a page on each side.
    s2.map(
        MIB2 - 0x1000,
        0x8000_0000 + MIB2 - 0x1000,
        514,
        wb(),
        true,
        &mut mnt,
    )
    .unwrap();
    assert_eq!(
        s2.lookup(MIB2 - 0x1000),
        mapped(0x8000_0000 + MIB2 - 0x1000, wb(), 3)
    );
    assert_eq!(
        s2.lookup(MIB2 + 0x5000),
        mapped(0x8000_0000 + MIB2 + 0x5000, wb(), 2)
    );
    assert_eq!(s2.lookup(2 * MIB2), mapped(0x8000_0000 + 2 * MIB2, wb(), 3));
    let r = runs(&s2, MIB2 - 0x1000, 514);
    assert_eq!(r.len(), 3);
    assert_eq!(r[1], (MIB2, 512, mapped(0x8000_0000 + MIB2, wb(), 2)));
    // root + L2 + two L3.
    assert_eq!(s2.table_pages(), 4);

    // 1 GiB block.
    s2.map(GIB, 0x40_0000_0000, 1 << 18, wb(), true, &mut mnt)
        .unwrap();
    assert_eq!(
        s2.lookup(GIB + 0x1234_5000),
        mapped(0x40_1234_5000, wb(), 1)
    );
    assert_eq!(
        runs(&s2, GIB, 1 << 18),
        vec![(GIB, 1 << 18, mapped(0x40_0000_0000, wb(), 1))]
    );
    assert_eq!(s2.table_pages(), 4);
}

#[test]
fn no_blocks_when_disallowed_misaligned_or_noncacheable() {
    for (pa, memtype, allow) in [
        (0x8000_0000, MemType::NormalWb, false),
        (0x8000_1000, MemType::NormalWb, true),
        (0x8000_0000, MemType::NormalNc, true),
        (0x8000_0000, MemType::Device, true),
    ] {
        let (_m, mut s2) = setup(39, true, 8);
        let l = leaf(RWX, memtype, PageState::Owned);
        s2.map(MIB2, pa, 512, l, allow, &mut Rec::new()).unwrap();
        let r = runs(&s2, MIB2, 512);
        assert_eq!(r.len(), 512, "{memtype:?} allow={allow} pa={pa:#x}");
        for (i, (_, n, e)) in r.into_iter().enumerate() {
            let Entry::Mapped {
                pa: got,
                level,
                leaf: lf,
            } = e
            else {
                panic!()
            };
            assert_eq!((n, level, got), (1, 3, pa + i as u64 * 0x1000));
            // XN forced for non-cacheable types.
            assert_eq!(lf.perms.x, memtype.is_cacheable());
        }
        assert_eq!(s2.tables_needed(4 * MIB2, 512, false), 1);
        assert_eq!(s2.tables_needed(4 * MIB2, 512, true), 0);
    }
}

#[test]
fn xn_forced_for_device_and_nc() {
    let (_m, mut s2) = setup(39, false, 8);
    let mut mnt = Rec::new();
    for (i, t) in [
        MemType::Device,
        MemType::NormalNc,
        MemType::NormalWb,
        MemType::Stage1,
    ]
    .into_iter()
    .enumerate()
    {
        let ipa = i as u64 * 0x1000;
        s2.map(
            ipa,
            0x1_0000_0000 + ipa,
            1,
            leaf(RWX, t, PageState::Owned),
            false,
            &mut mnt,
        )
        .unwrap();
        let (d, level) = s2.descriptor(ipa);
        assert_eq!(level, 3);
        let xn = (d >> 53) & 3;
        assert_eq!(xn, if t.is_cacheable() { 0b00 } else { 0b10 }, "{t:?}");
    }
    s2.map(
        0x10000,
        0x1_0001_0000,
        1,
        leaf(RW, MemType::NormalWb, PageState::Owned),
        false,
        &mut mnt,
    )
    .unwrap();
    assert_eq!((s2.descriptor(0x10000).0 >> 53) & 3, 0b10);
}

#[test]
fn memattr_encodings() {
    // The field values of RULES.md D7.
    assert_eq!(memattr_bits(MemType::Stage1, true), 0b0111);
    assert_eq!(memattr_bits(MemType::NormalWb, true), 0b0110);
    assert_eq!(memattr_bits(MemType::NormalNc, true), 0b0101);
    assert_eq!(memattr_bits(MemType::Device, true), 0b0001);
    assert_eq!(memattr_bits(MemType::Stage1, false), 0b1111);
    assert_eq!(memattr_bits(MemType::NormalWb, false), 0b1111);
    assert_eq!(memattr_bits(MemType::NormalNc, false), 0b0101);
    assert_eq!(memattr_bits(MemType::Device, false), 0b0001);
    assert_eq!(decode_memattr(0b0111, false), None);

    for fwb in [true, false] {
        let (_m, mut s2) = setup(39, fwb, 8);
        let mut mnt = Rec::new();
        for (i, t) in [
            MemType::Stage1,
            MemType::NormalWb,
            MemType::NormalNc,
            MemType::Device,
        ]
        .into_iter()
        .enumerate()
        {
            let ipa = i as u64 * 0x1000;
            let l = leaf(R, t, PageState::SharedBorrowed);
            s2.map(ipa, 0x2_0000_0000 + ipa, 1, l, true, &mut mnt)
                .unwrap();
            let (d, _) = s2.descriptor(ipa);
            assert_eq!((d >> 2) & 0xf, memattr_bits(t, fwb));
            // Valid page, AF, inner shareable, S2AP = RO, state 0b10.
            assert_eq!(d & 3, 3);
            assert_ne!(d & (1 << 10), 0);
            assert_eq!((d >> 8) & 3, 0b11);
            assert_eq!((d >> 6) & 3, 0b01);
            assert_eq!((d >> 55) & 3, 0b10);
            assert_eq!(d & OA, 0x2_0000_0000 + ipa);
            let Entry::Mapped { leaf: got, .. } = s2.lookup(ipa) else {
                panic!()
            };
            let want = if t == MemType::Stage1 && !fwb {
                MemType::NormalWb
            } else {
                t
            };
            assert_eq!(got.memtype, want);
            assert_eq!(got.state, PageState::SharedBorrowed);
        }
    }
}

#[test]
fn annotations_stored_and_survive_splits() {
    let (mem, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    // A whole 1 GiB as one invalid level-1 descriptor.
    s2.set_invalid(GIB, 1 << 18, 0x2a5, &mut mnt).unwrap();
    assert_eq!(s2.descriptor(GIB + 0x5000), (0x2a5 << 2, 1));
    assert_eq!(s2.table_pages(), 1);
    // No valid entry was removed: just the publishing DSB.
    assert_eq!(mnt.take(), vec![Ev::Dsb]);
    // One page in the middle: split twice; every other page keeps 0x2a5.
    s2.map(
        GIB + 3 * MIB2 + 0x7000,
        0x1000_0000,
        1,
        wb(),
        true,
        &mut mnt,
    )
    .unwrap();
    assert_eq!(s2.table_pages(), 3);
    let r = runs(&s2, GIB, 1 << 18);
    let mut pages = 0;
    for (a, n, e) in r {
        if a == GIB + 3 * MIB2 + 0x7000 {
            assert_eq!(e, mapped(0x1000_0000, wb(), 3));
        } else {
            assert_eq!(e, Entry::Invalid { annotation: 0x2a5 }, "{a:#x}");
        }
        pages += n;
    }
    assert_eq!(pages, 1 << 18);
    // Another annotation over a straddling range of pages.
    s2.set_invalid(GIB + 3 * MIB2 - 0x2000, 4, 9, &mut mnt)
        .unwrap();
    assert_eq!(
        s2.lookup(GIB + 3 * MIB2 - 0x3000),
        Entry::Invalid { annotation: 0x2a5 }
    );
    assert_eq!(
        s2.lookup(GIB + 3 * MIB2 - 0x2000),
        Entry::Invalid { annotation: 9 }
    );
    assert_eq!(
        s2.lookup(GIB + 3 * MIB2 + 0x1000),
        Entry::Invalid { annotation: 9 }
    );
    assert_eq!(
        s2.lookup(GIB + 3 * MIB2 + 0x2000),
        Entry::Invalid { annotation: 0x2a5 }
    );
    // Annotation bits [11:2], valid bit clear.
    let d = mem.read(desc_pa(&mem, &s2, GIB + 3 * MIB2, 3));
    assert_eq!(d, 9 << 2);
    assert_eq!(s2.set_invalid(0, 1, 1024, &mut mnt), Err(Error::Annotation));
    s2.set_invalid(0, 1, 1023, &mut mnt).unwrap();
    assert_eq!(s2.lookup(0), Entry::Invalid { annotation: 1023 });
}

#[test]
fn live_block_split_keeps_the_rest_and_orders_bbm() {
    let (mem, mut s2) = setup(39, true, 8);
    let block_pa = 0x8000_0000;
    s2.map(MIB2, block_pa, 512, wb(), true, &mut Rec::new())
        .unwrap();
    let l2 = desc_pa(&mem, &s2, MIB2, 2);
    let old = mem.read(l2);
    assert_eq!(old & 3, 1, "a block");

    // Remap one page inside to another PA with other attributes.
    let mut mnt = Rec::watching(&mem, l2);
    let other = leaf(RW, MemType::NormalWb, PageState::SharedOwned);
    s2.map(MIB2 + 0x5000, 0x9000_0000, 1, other, true, &mut mnt)
        .unwrap();
    // dsb, TLBI of the block at level 2 while the block entry is invalid,
    // dsb; then the new table and entries, published by a final dsb.
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(MIB2, 2), Ev::Dsb, Ev::Dsb]);
    assert_eq!(mnt.seen, vec![0]);
    assert_eq!(mnt.vmid, vec![7]);
    let now = mem.read(l2);
    assert_eq!(now & 3, 3, "a table now");
    for i in 0..512u64 {
        let ipa = MIB2 + i * 0x1000;
        let want = if i == 5 {
            mapped(0x9000_0000, other, 3)
        } else {
            mapped(block_pa + i * 0x1000, wb(), 3)
        };
        assert_eq!(s2.lookup(ipa), want);
    }
    assert_eq!(s2.table_pages(), 3);

    // Splitting a 1 GiB block by unmapping 3 pages straddling a 2 MiB line.
    s2.map(GIB, 0x40_0000_0000, 1 << 18, wb(), true, &mut Rec::new())
        .unwrap();
    let l1 = desc_pa(&mem, &s2, GIB, 1);
    let mut mnt = Rec::watching(&mem, l1);
    s2.set_invalid(GIB + 5 * MIB2 - 0x1000, 3, 0, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(GIB, 1), Ev::Dsb, Ev::Dsb]);
    assert_eq!(mnt.seen, vec![0]);
    let r = runs(&s2, GIB, 1 << 18);
    // 2 MiB blocks 0-3, 511 pages, 3 invalid pages, 510 pages, blocks 6-511.
    assert_eq!(r.len(), 4 + 511 + 3 + 510 + 506);
    for (a, n, e) in r {
        let inside = (GIB + 5 * MIB2 - 0x1000..GIB + 5 * MIB2 + 0x2000).contains(&a);
        match e {
            Entry::Invalid { annotation: 0 } => assert!(inside && n == 1),
            Entry::Mapped { pa, leaf, level } => {
                assert!(!inside);
                assert_eq!(pa, 0x40_0000_0000 + (a - GIB));
                assert_eq!(leaf, wb());
                assert_eq!(
                    (level, n),
                    if a % MIB2 == 0 && n == 512 {
                        (2, 512)
                    } else {
                        (3, 1)
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // The table needed: one level-2 table and two level-3 tables.
    assert_eq!(s2.table_pages(), 6);
}

#[test]
fn page_changes_bbm_or_in_place() {
    let (mem, mut s2) = setup(39, true, 8);
    s2.map(0x3000, 0x5000_3000, 1, wb(), false, &mut Rec::new())
        .unwrap();
    let pte = desc_pa(&mem, &s2, 0x3000, 3);

    // New output address: break (entry invalid at TLBI time), then make.
    let mut mnt = Rec::watching(&mem, pte);
    s2.map(0x3000, 0x6000_3000, 1, wb(), false, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(0x3000, 3), Ev::Dsb, Ev::Dsb]);
    assert_eq!(mnt.seen, vec![0]);
    assert_eq!(s2.lookup(0x3000), mapped(0x6000_3000, wb(), 3));

    // New memory type: break too.
    let dev = leaf(RW, MemType::Device, PageState::Owned);
    let mut mnt = Rec::watching(&mem, pte);
    s2.map(0x3000, 0x6000_3000, 1, dev, false, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(0x3000, 3), Ev::Dsb, Ev::Dsb]);
    assert_eq!(mnt.seen, vec![0]);

    // Permissions only: in place, then dsb + TLBI + dsb (entry already new).
    let ro = leaf(R, MemType::Device, PageState::Owned);
    let mut mnt = Rec::watching(&mem, pte);
    s2.map(0x3000, 0x6000_3000, 1, ro, false, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(0x3000, 3), Ev::Dsb]);
    assert_eq!(mnt.seen.len(), 1);
    assert_eq!(mnt.seen[0] & 1, 1);
    assert_eq!(s2.lookup(0x3000), mapped(0x6000_3000, ro, 3));

    // Software state only: in place, no TLBI.
    let shared = leaf(R, MemType::Device, PageState::SharedOwned);
    let mut mnt = Rec::new();
    s2.map(0x3000, 0x6000_3000, 1, shared, false, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb]);
    assert_eq!(s2.lookup(0x3000), mapped(0x6000_3000, shared, 3));

    // Same content again: nothing written, nothing issued.
    let before = mem.snapshot();
    let mut mnt = Rec::new();
    s2.map(0x3000, 0x6000_3000, 1, shared, false, &mut mnt)
        .unwrap();
    assert!(mnt.ev.is_empty());
    assert!(mem.snapshot() == before);

    // Unmap: write invalid, then dsb + TLBI + dsb.
    let mut mnt = Rec::watching(&mem, pte);
    s2.set_invalid(0x3000, 1, 3, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(0x3000, 3), Ev::Dsb]);
    assert_eq!(mnt.seen, vec![3 << 2]);
    // Unmapping what is unmapped: nothing at all.
    let mut mnt = Rec::new();
    s2.set_invalid(0x3000, 1, 3, &mut mnt).unwrap();
    assert!(mnt.ev.is_empty());
}

/// A one-page update whose descriptor sits in a last-level table takes no
/// table page (it works with an empty pool) and writes only that
/// descriptor; a page inside a block still needs its split counted first.
#[test]
fn one_page_updates_in_a_leaf_table_need_no_pool() {
    // The leaf table for [0, 2 MiB): a level-2 and a level-3 table under
    // the level-1 root, the whole pool.
    let (mem2, mut s2b) = setup(39, true, 2);
    s2b.map(0x3000, 0x5000_3000, 1, wb(), false, &mut Rec::new())
        .unwrap();
    assert_eq!(s2b.pool_len(), 0);
    let pte = desc_pa(&mem2, &s2b, 0x4000, 3);
    let before = mem2.snapshot();
    // An annotated invalid entry next to it: mapped, then annotated again,
    // with the empty pool.
    s2b.set_invalid(0x4000, 1, 9, &mut Rec::new()).unwrap();
    assert_eq!(mem2.read(pte), 9 << 2);
    let mut mnt = Rec::new();
    s2b.map(0x4000, 0x5000_4000, 1, wb(), false, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb]);
    assert_eq!(s2b.lookup(0x4000), mapped(0x5000_4000, wb(), 3));
    let mut mnt = Rec::watching(&mem2, pte);
    s2b.set_invalid(0x4000, 1, 0, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(0x4000, 3), Ev::Dsb]);
    assert_eq!(mnt.seen, vec![0]);
    // Only that descriptor changed, and it is back to what it was.
    assert!(mem2.snapshot() == before);
    assert_eq!(s2b.pool_len(), 0);
    assert_eq!(s2b.lookup(0x3000), mapped(0x5000_3000, wb(), 3));

    // One page inside a block: the split needs two table pages (level 2
    // and level 3 under the level-1 block), the pool has one: NoMem,
    // nothing written.
    let (mem, mut s2) = setup(39, true, 1);
    s2.map(GIB, GIB, 512 * 512, wb(), true, &mut Rec::new())
        .unwrap();
    let before = mem.snapshot();
    let ro = leaf(R, MemType::NormalWb, PageState::Owned);
    assert!(matches!(
        s2.map(GIB + 0x5000, GIB + 0x5000, 1, ro, true, &mut Rec::new()),
        Err(Error::NoMem { .. })
    ));
    assert!(matches!(
        s2.set_invalid(GIB + 0x5000, 1, 0, &mut Rec::new()),
        Err(Error::NoMem { .. })
    ));
    assert!(mem.snapshot() == before);
    assert_eq!(s2.lookup(GIB + 0x5000), mapped(GIB + 0x5000, wb(), 1));
}

/// `lookup_for_update` remembers where the page's descriptor lives for the one-page
/// update that follows it; any write in between (here: the page's
/// last-level table detached, then reused) makes the update walk again.
#[test]
fn one_page_update_after_lookup_sees_tables_changed_since() {
    let (mem, mut s2) = setup(39, true, 4);
    s2.map(0x3000, 0x5000_3000, 1, wb(), false, &mut Rec::new())
        .unwrap();
    let old_leaf_table = desc_pa(&mem, &s2, 0x3000, 3) & !0xfff;
    assert!(matches!(s2.lookup_for_update(0x3000), Entry::Mapped { .. }));
    // The whole 2 MiB: the last-level table is detached (back to the pool).
    s2.set_invalid(0, 512, 0, &mut Rec::new()).unwrap();
    // Two pages elsewhere take table pages (the detached one among them:
    // the pool hands out the page freed last).
    s2.map(MIB2 + 0x1000, 0x5020_1000, 2, wb(), false, &mut Rec::new())
        .unwrap();
    assert_eq!(desc_pa(&mem, &s2, MIB2, 3) & !0xfff, old_leaf_table);
    // The remembered table must not be written through.
    s2.map(0x3000, 0x6000_3000, 1, wb(), false, &mut Rec::new())
        .unwrap();
    assert_eq!(s2.lookup(0x3000), mapped(0x6000_3000, wb(), 3));
    assert_eq!(s2.lookup(MIB2 + 0x1000), mapped(0x5020_1000, wb(), 3));
    assert_eq!(s2.lookup(MIB2 + 0x3000), Entry::Invalid { annotation: 0 });
    assert_eq!(s2.lookup(0x4000), Entry::Invalid { annotation: 0 });
    // The same with a lookup right before an unmap of another page of the
    // same table: the update of the looked-up page still lands.
    assert!(matches!(s2.lookup_for_update(0x3000), Entry::Mapped { .. }));
    s2.set_invalid(0x5000, 2, 4, &mut Rec::new()).unwrap();
    s2.set_invalid(0x3000, 1, 5, &mut Rec::new()).unwrap();
    assert_eq!(s2.lookup(0x3000), Entry::Invalid { annotation: 5 });
    assert_eq!(s2.lookup(0x5000), Entry::Invalid { annotation: 4 });
}

#[test]
fn block_permission_change_in_place() {
    let (mem, mut s2) = setup(39, true, 8);
    s2.map(MIB2, 0x8000_0000, 512, wb(), true, &mut Rec::new())
        .unwrap();
    let l2 = desc_pa(&mem, &s2, MIB2, 2);
    let mut mnt = Rec::watching(&mem, l2);
    let ro = leaf(R, MemType::NormalWb, PageState::Owned);
    s2.map(MIB2, 0x8000_0000, 512, ro, true, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(MIB2, 2), Ev::Dsb]);
    assert_eq!(mnt.seen[0] & 3, 1, "still the (new) block at TLBI time");
    assert_eq!(s2.lookup(MIB2 + 0x3000), mapped(0x8000_3000, ro, 2));
    assert_eq!(s2.table_pages(), 2);
    // The same mapping for part of the block: the block stays.
    s2.map(MIB2 + 0x3000, 0x8000_3000, 2, ro, false, &mut mnt)
        .unwrap();
    assert_eq!(s2.lookup(MIB2 + 0x3000), mapped(0x8000_3000, ro, 2));
}

/// Range updates take the generic path, not the one-page one. A change of
/// software state only is made in place, with no TLBI. A permission change
/// is made in place, and the leaves it rewrote are invalidated after it.
#[test]
fn range_state_changes_need_no_tlbi() {
    let (_mem, mut s2) = setup(39, true, 8);
    let shared = leaf(RWX, MemType::NormalWb, PageState::SharedOwned);
    let ro_shared = leaf(R, MemType::NormalWb, PageState::SharedOwned);

    // Two pages of a leaf table.
    s2.map(0x3000, 0x5000_3000, 2, wb(), false, &mut Rec::new())
        .unwrap();
    let mut mnt = Rec::new();
    s2.map(0x3000, 0x5000_3000, 2, shared, false, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb]);
    assert_eq!(s2.lookup(0x3000), mapped(0x5000_3000, shared, 3));
    assert_eq!(s2.lookup(0x4000), mapped(0x5000_4000, shared, 3));
    let mut mnt = Rec::new();
    s2.map(0x3000, 0x5000_3000, 2, ro_shared, false, &mut mnt)
        .unwrap();
    assert_eq!(
        mnt.ev,
        vec![Ev::Dsb, Ev::Ipa(0x3000, 3), Ev::Ipa(0x4000, 3), Ev::Dsb]
    );
    assert_eq!(s2.lookup(0x4000), mapped(0x5000_4000, ro_shared, 3));

    // A whole block.
    s2.map(MIB2, 0x8000_0000, 512, wb(), true, &mut Rec::new())
        .unwrap();
    let mut mnt = Rec::new();
    s2.map(MIB2, 0x8000_0000, 512, shared, true, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb]);
    assert_eq!(s2.lookup(MIB2 + 0x3000), mapped(0x8000_3000, shared, 2));
    let mut mnt = Rec::new();
    s2.map(MIB2, 0x8000_0000, 512, ro_shared, true, &mut mnt)
        .unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Ipa(MIB2, 2), Ev::Dsb]);
    assert_eq!(s2.lookup(MIB2 + 0x3000), mapped(0x8000_3000, ro_shared, 2));
}

/// What `walk_raw` reports: one run per stretch of consecutive descriptors
/// of one table that map consecutive output addresses with the same
/// attributes, or are invalid with the same annotation; the empty ones
/// left out when asked; nothing more once the callback says stop.
#[test]
fn walk_raw_reports_runs_of_one_table() {
    let (_mem, mut s2) = setup(40, true, 16);
    let mut mnt = Rec::new();
    s2.map(0x3000, 0x5000_3000, 4, wb(), false, &mut mnt)
        .unwrap();
    s2.map(0x7000, 0x9000_0000, 1, wb(), false, &mut mnt)
        .unwrap();
    s2.set_invalid(0x8000, 2, 5, &mut mnt).unwrap();
    // Two blocks of one level-2 table, consecutive in both spaces.
    s2.map(MIB2, 0x8000_0000, 1024, wb(), true, &mut mnt)
        .unwrap();
    // Consecutive pages on both sides of the boundary between the two
    // concatenated root pages (512 GiB each).
    let edge = 1u64 << 39;
    s2.map(edge - 0x1000, 0x7000_0000, 3, wb(), false, &mut mnt)
        .unwrap();

    let raw = |s2: &Stage2<TestMem>, ipa: u64, nr: u64, skip: bool, stop_after: usize| {
        let mut v = Vec::new();
        s2.walk_raw(ipa, nr, skip, &mut |a, n, e| {
            v.push((a, n, e));
            v.len() < stop_after
        })
        .unwrap();
        v
    };
    let head = [
        (0x3000, 4, mapped(0x5000_3000, wb(), 3)),
        (0x7000, 1, mapped(0x9000_0000, wb(), 3)),
        (0x8000, 2, Entry::Invalid { annotation: 5 }),
        (MIB2, 1024, mapped(0x8000_0000, wb(), 2)),
    ];
    assert_eq!(raw(&s2, 0, 3 * 512, true, usize::MAX), head);
    let empty = Entry::Invalid { annotation: 0 };
    let mut all = vec![(0, 3, empty)];
    all.extend_from_slice(&head[..3]);
    all.push((0xa000, 502, empty));
    all.push(head[3]);
    assert_eq!(raw(&s2, 0, 3 * 512, false, usize::MAX), all);
    // The callback stops the walk.
    assert_eq!(raw(&s2, 0, 3 * 512, true, 2), head[..2]);
    assert_eq!(raw(&s2, 0, 3 * 512, false, 1), all[..1]);
    // A range starting inside a run, or inside a block.
    assert_eq!(
        raw(&s2, 0x4000, 2, true, usize::MAX),
        [(0x4000, 2, mapped(0x5000_4000, wb(), 3))]
    );
    assert_eq!(
        raw(&s2, MIB2 + 0x3000, 3, true, usize::MAX),
        [(MIB2 + 0x3000, 3, mapped(0x8000_3000, wb(), 2))]
    );
    // Across the root pages: two tables, two runs; a stop in the first
    // root page ends the walk.
    let across = [
        (edge - 0x1000, 1, mapped(0x7000_0000, wb(), 3)),
        (edge, 2, mapped(0x7000_1000, wb(), 3)),
    ];
    assert_eq!(raw(&s2, edge - MIB2, 1024, true, usize::MAX), across);
    assert_eq!(raw(&s2, edge - MIB2, 1024, true, 1), across[..1]);
    // `walk` too reports addresses in the second root page as they are.
    assert_eq!(
        runs(&s2, edge + 0x1000, 1),
        [(edge + 0x1000, 1, mapped(0x7000_2000, wb(), 3))]
    );
}

#[test]
fn unmap_whole_table_frees_it_after_tlbi() {
    let (mem, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    for i in 0..512 {
        s2.map(
            MIB2 + i * 0x1000,
            0x7000_0000 + i * 0x1000,
            1,
            wb(),
            false,
            &mut mnt,
        )
        .unwrap();
    }
    s2.map(2 * MIB2, 0x7020_0000, 1, wb(), false, &mut mnt)
        .unwrap();
    assert_eq!(s2.table_pages(), 4);
    assert_eq!(s2.pool_len(), 5);
    let l2 = desc_pa(&mem, &s2, MIB2, 2);
    let mut mnt = Rec::watching(&mem, l2);
    // Whole 2 MiB (a full level-3 table) plus one page of the next.
    s2.set_invalid(MIB2, 513, 0x11, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Vmid(7), Ev::Dsb]);
    // At TLBI time the table descriptor was already the invalid block.
    assert_eq!(mnt.seen, vec![0x11 << 2]);
    assert_eq!(s2.descriptor(MIB2 + 0x4000), (0x11 << 2, 2));
    assert_eq!(s2.lookup(2 * MIB2), Entry::Invalid { annotation: 0x11 });
    assert_eq!(s2.table_pages(), 3);
    assert_eq!(s2.pool_len(), 6);
    let t = tables(&mem, s2.root_pa(), s2.root_level());
    assert_eq!(t.len(), 3);
}

#[test]
fn no_mem_writes_nothing() {
    let (mem, mut s2) = setup(39, true, 1);
    let mut mnt = Rec::new();
    s2.map(MIB2, 0x8000_0000, 512, wb(), true, &mut mnt)
        .unwrap();
    let before = mem.snapshot();
    let l = leaf(RW, MemType::NormalWb, PageState::Owned);
    // Splitting the live block needs one page, available; a page far away
    // needs two more.
    assert_eq!(s2.tables_needed(MIB2 + 0x1000, 1, false), 1);
    assert_eq!(s2.tables_needed(GIB, 1, false), 2);
    assert_eq!(
        s2.map(GIB, 0x1000, 1, l, false, &mut mnt),
        Err(Error::NoMem {
            needed: 2,
            available: 0
        })
    );
    assert_eq!(
        s2.map(MIB2 - 0x1000, 0x1000, 2, l, false, &mut mnt),
        Err(Error::NoMem {
            needed: 2,
            available: 0
        })
    );
    assert_eq!(
        s2.set_invalid(MIB2, 1, 0, &mut mnt),
        Err(Error::NoMem {
            needed: 1,
            available: 0
        })
    );
    assert!(mem.snapshot() == before);
    assert!(mnt.ev.iter().all(|e| *e == Ev::Dsb) && mnt.ev.len() == 1);
    assert_eq!(s2.pool_len(), 0);
    // Remapping the block in place needs nothing.
    s2.map(
        MIB2,
        0x8000_0000,
        512,
        leaf(R, MemType::NormalWb, PageState::Owned),
        true,
        &mut mnt,
    )
    .unwrap();
}

#[test]
fn range_errors() {
    let (_m, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    let top = 1u64 << 39;
    for (ipa, nr) in [
        (0x10, 1),
        (0, 0),
        (top - 0x1000, 2),
        (top, 1),
        (!0xfff, 2),
        (0, u64::MAX),
    ] {
        assert_eq!(
            s2.map(ipa, 0, nr, wb(), true, &mut mnt),
            Err(Error::Range),
            "{ipa:#x} {nr}"
        );
        assert_eq!(s2.set_invalid(ipa, nr, 0, &mut mnt), Err(Error::Range));
        assert_eq!(s2.walk(ipa, nr, &mut |_, _, _| true), Err(Error::Range));
        assert_eq!(s2.tables_needed(ipa, nr, true), 0);
    }
    assert_eq!(s2.map(0, 0x123, 1, wb(), true, &mut mnt), Err(Error::Range));
    assert_eq!(
        s2.map(0, (1 << 48) - 0x1000, 2, wb(), true, &mut mnt),
        Err(Error::Range)
    );
    assert_eq!(
        s2.map(0, !0xfff, 1, wb(), true, &mut mnt),
        Err(Error::Range)
    );
    s2.map(top - 0x1000, (1 << 48) - 0x1000, 1, wb(), true, &mut mnt)
        .unwrap();
    assert_eq!(s2.lookup(top - 0x1000), mapped((1 << 48) - 0x1000, wb(), 3));
    assert_eq!(s2.lookup(top), Entry::Invalid { annotation: 0 });
    assert_eq!(s2.lookup(u64::MAX), Entry::Invalid { annotation: 0 });
    assert!(mnt.ev.iter().all(|e| *e == Ev::Dsb));
}

#[test]
fn pool_is_intrusive_and_take_zeroes() {
    let (mem, mut s2) = setup(39, true, 0);
    let pages: Vec<u64> = (10..14).map(TestMem::page).collect();
    let before = mem.snapshot();
    for &p in &pages {
        s2.pool_add(p);
    }
    // Only the added pages changed (their link words).
    let after = mem.snapshot();
    for (i, (a, b)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if a != b {
            assert!(pages.contains(&TestMem::page(i as u64)));
        }
    }
    assert_eq!(s2.pool_len(), 4);
    let p = s2.pool_take().unwrap();
    assert!(pages.contains(&p));
    for i in 0..512 {
        assert_eq!(mem.read(p + i * 8), 0);
    }
    assert_eq!(s2.pool_len(), 3);
}

#[test]
fn destroy_returns_each_page_once() {
    let (mem, mut s2) = setup(40, true, 40);
    let mut mnt = Rec::new();
    s2.map(0x80_0000_0000, 0x1000, 3, wb(), false, &mut mnt)
        .unwrap();
    s2.map(GIB + MIB2, 0x8000_0000 + MIB2, 1024, wb(), true, &mut mnt)
        .unwrap();
    s2.set_invalid(5 * GIB, 1, 3, &mut mnt).unwrap();
    let taken = s2.pool_take().unwrap();
    let tables_before = tables(&mem, s2.root_pa(), s2.root_level());
    assert_eq!(tables_before.len(), s2.table_pages());
    let mut got = vec![];
    s2.destroy(&mut |pa| got.push(pa));
    let mut want: Vec<u64> = (0..=40)
        .map(TestMem::page)
        .filter(|&p| p != taken)
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn level0_root_whole_entries() {
    let (mem, mut s2) = setup(48, true, 8);
    let g512 = 512 * GIB;
    let pages = g512 / 4096;
    // Level 0 cannot hold a block: a whole 512 GiB needs one level-1 table.
    assert_eq!(s2.set_invalid_tables_needed(g512, pages, 3), 1);
    assert_eq!(s2.tables_needed(g512, pages, true), 1);
    let mut mnt = Rec::new();
    s2.set_invalid(g512, pages, 3, &mut mnt).unwrap();
    assert_eq!(s2.table_pages(), 2);
    assert_eq!(s2.descriptor(g512 + 7 * GIB), (3 << 2, 1));
    assert_eq!(
        runs(&s2, g512 - GIB, pages + 2 * (GIB / 4096)).len(),
        1 + 512 + 1
    );
    // Unmapping it again detaches the level-1 table: one invalid level-0
    // descriptor, and the page goes back to the pool after a VMID TLBI.
    let mut mnt = Rec::new();
    s2.set_invalid(g512, pages, 0, &mut mnt).unwrap();
    assert_eq!(mnt.ev, vec![Ev::Dsb, Ev::Vmid(7), Ev::Dsb]);
    assert_eq!(s2.descriptor(g512 + 7 * GIB), (0, 0));
    assert_eq!((s2.table_pages(), s2.pool_len()), (1, 8));
    // 1 GiB blocks over a whole level-0 entry.
    assert_eq!(s2.map_tables_needed(g512, 2 * g512, pages, wb(), true), 1);
    assert_eq!(
        s2.map_tables_needed(g512, 2 * g512 + MIB2, pages, wb(), true),
        1 + 512
    );
    s2.map(g512, 2 * g512, pages, wb(), true, &mut Rec::new())
        .unwrap();
    assert_eq!(
        s2.lookup(g512 + 5 * GIB + 0x3000),
        mapped(2 * g512 + 5 * GIB + 0x3000, wb(), 1)
    );
    assert_eq!(tables(&mem, s2.root_pa(), s2.root_level()).len(), 2);
    // Too big for the pool: refused, not panicking.
    let all = (1u64 << 48) / 4096;
    assert!(matches!(
        s2.map(0, 0, all, wb(), false, &mut Rec::new()),
        Err(Error::NoMem { .. })
    ));
    // Every level-0 entry needs 1 + 512 * (1 + 512) tables; one level-1
    // table exists already.
    assert_eq!(
        s2.tables_needed(0, all, false),
        512 * (1 + 512 * (1 + 512)) - 1
    );
}

/// The refusals explain themselves: their messages carry the counts.
#[test]
fn errors_display_what_went_wrong() {
    use pagetables::Error;
    assert_eq!(
        Error::NoMem {
            needed: 3,
            available: 1
        }
        .to_string(),
        "stage-2 needs 3 table pages, pool holds 1"
    );
    assert_eq!(
        Error::Range.to_string(),
        "address range outside the stage-2 or malformed"
    );
    assert_eq!(Error::Annotation.to_string(), "annotation above 1023");
}

/// A table page freed when an invalid block replaces it goes back to the
/// pool once the maintenance for it was issued: the pool gets back every
/// page it lent.
#[test]
fn a_table_replaced_by_a_block_returns_to_the_pool() {
    let (_m, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    let (tables, pool) = (s2.table_pages(), s2.pool_len());
    // 2 MiB as 512 pages: a level-2 and a level-3 table from the pool.
    s2.map(MIB2, 0x40_0000_0000, 512, wb(), false, &mut mnt)
        .unwrap();
    assert_eq!((s2.table_pages(), s2.pool_len()), (tables + 2, pool - 2));
    // The whole 2 MiB made invalid: one invalid level-2 descriptor, and
    // the level-3 table, detached, is free again after its TLB maintenance.
    s2.set_invalid(MIB2, 512, 5, &mut mnt).unwrap();
    assert_eq!(
        runs(&s2, MIB2, 512),
        [(MIB2, 512, Entry::Invalid { annotation: 5 })]
    );
    assert_eq!((s2.table_pages(), s2.pool_len()), (tables + 1, pool - 1));
}

/// The table says whether it was built for FWB, both ways.
#[test]
fn fwb_is_what_the_table_was_built_with() {
    for fwb in [false, true] {
        let (_m, s2) = setup(39, fwb, 0);
        assert_eq!(s2.fwb(), fwb);
    }
}

#[test]
fn room_is_the_pool_to_the_page() {
    // 39 IPA bits: a level-1 root. A page under a new level-1 entry needs a
    // level-2 and a level-3 table.
    let (_m, s2) = setup(39, true, 2);
    assert_eq!(s2.tables_needed(GIB, 1, false), 2);
    assert_eq!(s2.room(0), Ok(()));
    assert_eq!(s2.room(2), Ok(()));
    assert_eq!(
        s2.room(3),
        Err(Error::NoMem {
            needed: 3,
            available: 2
        })
    );
    assert_eq!(s2.room_for(GIB, 1, false), Ok(()));
    // Two 1 GiB entries apart: four tables.
    assert_eq!(
        s2.room_for(GIB - 0x1000, 2, false),
        Err(Error::NoMem {
            needed: 4,
            available: 2
        })
    );
    // A whole 2 MiB block needs only the level-2 table.
    let (_m, s2) = setup(39, true, 1);
    assert_eq!(s2.room_for(GIB, 512, true), Ok(()));
    assert_eq!(
        s2.room_for(GIB, 512, false),
        Err(Error::NoMem {
            needed: 2,
            available: 1
        })
    );
    // A malformed range needs nothing.
    let (_m, s2) = setup(39, true, 0);
    assert_eq!(s2.room_for(GIB + 1, 1, false), Ok(()));
}

#[test]
fn covers_page_is_the_input_address_space() {
    let (_m, s2) = setup(39, true, 0);
    let pages = 1u64 << (39 - 12);
    assert!(s2.covers_page(0));
    assert!(s2.covers_page(pages - 1));
    assert!(!s2.covers_page(pages));
    assert!(!s2.covers_page(u64::MAX));
    let (_m, s2) = setup(48, true, 0);
    assert!(s2.covers_page((1 << 36) - 1));
    assert!(!s2.covers_page(1 << 36));
}

#[test]
fn descriptor_pa_is_where_the_walk_stops() {
    let (mem, mut s2) = setup(39, true, 8);
    let mut mnt = Rec::new();
    let page = GIB + 0x5000;
    s2.map(page, 0x8000_0000, 1, wb(), false, &mut mnt).unwrap();
    s2.map(4 * MIB2, 0x9000_0000, 512, wb(), true, &mut mnt)
        .unwrap();
    // A leaf page (level 3), a block (level 2), an invalid level-3 entry
    // next to the page, an invalid level-1 entry of the root.
    for (ipa, level, shift) in [
        (page, 3, 12),
        (4 * MIB2 + 0x7000, 2, 21),
        (page + 0x1000, 3, 12),
        (5 * GIB + 0x3000, 1, 30),
    ] {
        let at = s2.descriptor_pa(ipa).unwrap();
        let (value, l) = s2.descriptor(ipa);
        assert_eq!(l, level, "{ipa:#x}");
        assert_eq!(mem.read(at), value, "{ipa:#x}");
        assert_eq!((at & 0xfff) / 8, (ipa >> shift) & 511, "{ipa:#x}");
        if level == 1 {
            assert_eq!(at & !0xfff, s2.root_pa(), "{ipa:#x}");
        } else {
            assert_ne!(at & !0xfff, s2.root_pa(), "{ipa:#x}");
        }
    }
    // The page and its invalid neighbour share one last-level table.
    assert_eq!(
        s2.descriptor_pa(page).unwrap() + 8,
        s2.descriptor_pa(page + 0x1000).unwrap()
    );
    assert!(s2.descriptor_pa((1 << 39) - 0x1000).is_some());
    assert_eq!(s2.descriptor_pa(1 << 39), None);
    assert_eq!(s2.descriptor_pa(u64::MAX), None);
}
