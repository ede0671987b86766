//! ELF to arm64 "Image": the flat binary QEMU's `-kernel` and `-device
//! loader` take, made from a bare-metal image's loadable segments.
//!
//! A minimal reader of 64-bit little-endian AArch64 ELF files (program
//! headers only); every read is bounds-checked, so a malformed file gives an
//! error, never a panic.

/// `PT_LOAD` program header type.
const PT_LOAD: u32 = 1;
/// `EM_AARCH64` machine number.
const EM_AARCH64: u16 = 183;
/// Size of a 64-bit ELF header and program header.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// Offset and value of the arm64 Image header's magic ("ARM\x64").
const IMAGE_MAGIC_OFFSET: usize = 0x38;
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
/// Largest image accepted (the span from the first to the last loaded byte).
const MAX_IMAGE: u64 = 256 << 20;

fn bytes(data: &[u8], at: u64, len: u64) -> Result<&[u8], String> {
    let start = usize::try_from(at).map_err(|_| "offset out of range".to_string())?;
    let len = usize::try_from(len).map_err(|_| "length out of range".to_string())?;
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| format!("ELF truncated: {len} bytes at {at:#x} are past its end"))
}

fn u16_at(data: &[u8], at: u64) -> Result<u16, String> {
    let b = bytes(data, at, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: u64) -> Result<u32, String> {
    let mut w = [0u8; 4];
    w.copy_from_slice(bytes(data, at, 4)?);
    Ok(u32::from_le_bytes(w))
}

fn u64_at(data: &[u8], at: u64) -> Result<u64, String> {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes(data, at, 8)?);
    Ok(u64::from_le_bytes(w))
}

/// One loadable segment.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn load_segments(elf: &[u8]) -> Result<Vec<Segment>, String> {
    if elf.len() < EHDR_SIZE || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let machine = u16_at(elf, 0x12)?;
    if machine != EM_AARCH64 {
        return Err(format!(
            "ELF machine {machine} is not AArch64 ({EM_AARCH64})"
        ));
    }
    let phoff = u64_at(elf, 0x20)?;
    let phentsize = u64::from(u16_at(elf, 0x36)?);
    let phnum = u64::from(u16_at(elf, 0x38)?);
    if phentsize < PHDR_SIZE as u64 {
        return Err(format!("program header size {phentsize} is too small"));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or("program header offset overflows")?;
        bytes(elf, ph, PHDR_SIZE as u64)?;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let seg = Segment {
            offset: u64_at(elf, ph + 8)?,
            paddr: u64_at(elf, ph + 24)?,
            filesz: u64_at(elf, ph + 32)?,
            memsz: u64_at(elf, ph + 40)?,
        };
        if seg.filesz > seg.memsz {
            return Err(format!(
                "segment at {:#x}: file size {:#x} exceeds memory size {:#x}",
                seg.paddr, seg.filesz, seg.memsz
            ));
        }
        if seg.memsz == 0 {
            continue;
        }
        seg.paddr
            .checked_add(seg.memsz)
            .ok_or_else(|| format!("segment at {:#x} wraps around", seg.paddr))?;
        bytes(elf, seg.offset, seg.filesz)?;
        segments.push(seg);
    }
    segments.sort_by_key(|s| s.paddr);
    for pair in segments.windows(2) {
        if pair[0].paddr + pair[0].memsz > pair[1].paddr {
            return Err(format!(
                "segments at {:#x} and {:#x} overlap",
                pair[0].paddr, pair[1].paddr
            ));
        }
    }
    Ok(segments)
}

/// The flat binary of `elf`'s PT_LOAD segments, by physical address: from
/// the lowest `p_paddr` to the last byte that comes from the file, gaps
/// zero-filled (the BSS tail after it is left out: the Image header's
/// `image_size` covers it). The first byte must start an arm64 Image header
/// (magic "ARM\x64" at 0x38), else this is an error.
pub fn elf_to_image(elf: &[u8]) -> Result<Vec<u8>, String> {
    let segments = load_segments(elf)?;
    let base = segments
        .first()
        .map(|s| s.paddr)
        .ok_or("the ELF file has no loadable segment")?;
    let end = segments
        .iter()
        .filter(|s| s.filesz > 0)
        .map(|s| s.paddr + s.filesz)
        .max()
        .unwrap_or(base);
    if end - base > MAX_IMAGE {
        return Err(format!(
            "loaded bytes span {:#x}..{end:#x}, more than {MAX_IMAGE:#x} bytes",
            base
        ));
    }
    let mut image = vec![0u8; (end - base) as usize];
    for s in segments.iter().filter(|s| s.filesz > 0) {
        let from = bytes(elf, s.offset, s.filesz)?;
        let at = (s.paddr - base) as usize;
        image[at..at + from.len()].copy_from_slice(from);
    }
    match image.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) {
        Some(magic) if magic == IMAGE_MAGIC => Ok(image),
        _ => Err(format!(
            "the first loaded byte ({base:#x}) does not start an arm64 Image header \
             (no \"ARM\\x64\" at offset {IMAGE_MAGIC_OFFSET:#x})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (p_type, p_paddr, file bytes, p_memsz)
    type Seg<'a> = (u32, u64, &'a [u8], u64);

    /// A synthetic AArch64 ELF with the given program headers; segment data
    /// follows the headers in order.
    fn elf(segs: &[Seg]) -> Vec<u8> {
        let phoff = EHDR_SIZE;
        let mut data_off = phoff + PHDR_SIZE * segs.len();
        let mut out = vec![0u8; data_off];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        out[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[0x34..0x36].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        out[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(kind, paddr, file, memsz)) in segs.iter().enumerate() {
            let ph = phoff + i * PHDR_SIZE;
            let put = |out: &mut Vec<u8>, at: usize, v: u64| {
                out[ph + at..ph + at + 8].copy_from_slice(&v.to_le_bytes())
            };
            out[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            put(&mut out, 8, data_off as u64);
            put(&mut out, 16, paddr);
            put(&mut out, 24, paddr);
            put(&mut out, 32, file.len() as u64);
            put(&mut out, 40, memsz);
            data_off += file.len();
        }
        for &(_, _, file, _) in segs {
            out.extend_from_slice(file);
        }
        out
    }

    /// 0x40 bytes of arm64 Image header followed by some code bytes.
    fn text() -> Vec<u8> {
        let mut t = vec![0u8; 0x48];
        t[..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
        t[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(IMAGE_MAGIC);
        t[0x40..0x48].copy_from_slice(&[0xaa; 8]);
        t
    }

    #[test]
    fn segments_are_laid_out_by_physical_address() {
        let text = text();
        let data = [1u8, 2, 3, 4];
        let e = elf(&[
            (PT_LOAD, 0x4400_0000, &text, text.len() as u64),
            (6, 0, &[], 0),                           // PT_PHDR: ignored
            (PT_LOAD, 0x4400_1000, &data, 0x10_0000), // data, then BSS
        ]);
        let image = elf_to_image(&e).unwrap();
        assert_eq!(
            image.len(),
            0x1004,
            "BSS tail trimmed after the last file byte"
        );
        assert_eq!(&image[..text.len()], &text[..]);
        assert!(
            image[text.len()..0x1000].iter().all(|&b| b == 0),
            "gap zero-filled"
        );
        assert_eq!(&image[0x1000..], &data);
    }

    #[test]
    fn a_bss_only_segment_at_the_end_adds_nothing() {
        let text = text();
        let e = elf(&[
            (PT_LOAD, 0x4400_0000, &text, text.len() as u64),
            (PT_LOAD, 0x4400_1000, &[], 0x2_0000), // NOBITS only
        ]);
        assert_eq!(elf_to_image(&e).unwrap(), text);
    }

    #[test]
    fn segment_order_in_the_file_does_not_matter() {
        let text = text();
        let e = elf(&[
            (PT_LOAD, 0x4400_2000, &[9; 8], 8),
            (PT_LOAD, 0x4400_0000, &text, 0x100),
        ]);
        let image = elf_to_image(&e).unwrap();
        assert_eq!(image.len(), 0x2008);
        assert_eq!(&image[..4], &text[..4]);
        assert_eq!(&image[0x2000..], &[9; 8]);
    }

    #[test]
    fn a_bss_gap_between_segments_is_zero() {
        let text = text();
        let e = elf(&[
            (PT_LOAD, 0x1000, &text, 0x800), // text followed by its own BSS
            (PT_LOAD, 0x1800, &[7; 4], 4),
        ]);
        let image = elf_to_image(&e).unwrap();
        assert_eq!(image.len(), 0x804);
        assert!(image[text.len()..0x800].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_an_image_without_the_header() {
        let e = elf(&[(PT_LOAD, 0x4400_0000, &[0u8; 0x80], 0x80)]);
        let err = elf_to_image(&e).unwrap_err();
        assert!(err.contains("Image header"), "{err}");
        // Too short to hold the magic at all.
        let e = elf(&[(PT_LOAD, 0x4400_0000, &[0u8; 8], 8)]);
        assert!(elf_to_image(&e).is_err());
    }

    #[test]
    fn refuses_malformed_files() {
        assert!(elf_to_image(b"").unwrap_err().contains("not an ELF"));
        assert!(elf_to_image(&[0u8; 100])
            .unwrap_err()
            .contains("not an ELF"));
        let text = text();
        let good = elf(&[(PT_LOAD, 0x1000, &text, 0x100)]);

        let mut e = good.clone();
        e[4] = 1; // 32-bit
        assert!(elf_to_image(&e).unwrap_err().contains("64-bit"));
        let mut e = good.clone();
        e[5] = 2; // big endian
        assert!(elf_to_image(&e).unwrap_err().contains("little-endian"));
        let mut e = good.clone();
        e[0x12] = 62; // x86-64
        assert!(elf_to_image(&e).unwrap_err().contains("AArch64"));
        let mut e = good.clone();
        e.truncate(e.len() - 1); // segment data cut short
        assert!(elf_to_image(&e).unwrap_err().contains("truncated"));
        let mut e = good.clone();
        e[0x38] = 200; // more program headers than the file holds
        assert!(elf_to_image(&e).unwrap_err().contains("truncated"));
        let mut e = good;
        e[EHDR_SIZE + 40..EHDR_SIZE + 48].copy_from_slice(&1u64.to_le_bytes()); // memsz < filesz
        assert!(elf_to_image(&e).unwrap_err().contains("exceeds"));

        assert!(elf_to_image(&elf(&[])).unwrap_err().contains("no loadable"));
    }

    #[test]
    fn refuses_overlapping_or_huge_layouts() {
        let text = text();
        let e = elf(&[
            (PT_LOAD, 0x1000, &text, 0x100),
            (PT_LOAD, 0x1080, &[1; 4], 4),
        ]);
        assert!(elf_to_image(&e).unwrap_err().contains("overlap"));
        let e = elf(&[
            (PT_LOAD, 0x1000, &text, 0x100),
            (PT_LOAD, 0x1_0000_0000, &[1; 4], 4),
        ]);
        assert!(elf_to_image(&e).unwrap_err().contains("span"));
        let e = elf(&[(PT_LOAD, u64::MAX - 4, &text, 0x100)]);
        assert!(elf_to_image(&e).unwrap_err().contains("wraps"));
    }
}
