//! The boot manifest: the platform facts a device tree does not carry
//! (COHERENT memory, MMIO regions that guests may be given, extra memory for
//! the hypervisor). The format is described in the crate documentation.

use alloc::vec::Vec;

use crate::error::{Origin, PlatformError};
use crate::PAGE_SHIFT;

/// What a manifest line declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// `coherent`: cacheable-capable device memory (class COHERENT).
    Coherent,
    /// `mmio`: an MMIO region assignable to guests, DEVICE only.
    Mmio,
    /// `mmio-uc`: an MMIO region assignable to guests, NORMAL_NC allowed too.
    MmioUncached,
    /// `hyp`: extra memory reserved for the hypervisor (class HYP).
    Hyp,
    /// `withheld`: MMIO the host may not map (an abort), because the device
    /// behind it is a bus master the hypervisor owns or keeps from the host
    /// (RULES.md S1); its device-tree nodes are removed from the host's tree.
    Withheld,
}

impl ManifestKind {
    fn from_keyword(word: &str) -> Option<Self> {
        Some(match word {
            "coherent" => Self::Coherent,
            "mmio" => Self::Mmio,
            "mmio-uc" => Self::MmioUncached,
            "hyp" => Self::Hyp,
            "withheld" => Self::Withheld,
            _ => return None,
        })
    }
}

/// One declaration of the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// What the range is.
    pub kind: ManifestKind,
    /// Base physical address in bytes, page aligned.
    pub base: u64,
    /// Size in bytes, page aligned, not zero.
    pub size: u64,
    /// The line it came from, counting from 1.
    pub line: usize,
}

impl ManifestEntry {
    /// First page frame number.
    pub fn base_pfn(&self) -> u64 {
        self.base >> PAGE_SHIFT
    }

    /// One past the last page frame number.
    pub fn end_pfn(&self) -> u64 {
        (self.base + self.size) >> PAGE_SHIFT
    }
}

/// A parsed and checked boot manifest: every range page aligned, not empty,
/// inside the physical address space, and no two overlapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
    host_image: Option<u64>,
}

impl Manifest {
    /// Parse `text` for a machine with `pa_bits` of physical address space.
    pub fn parse(text: &str, pa_bits: u32) -> Result<Self, PlatformError> {
        let pa_limit = pa_limit(pa_bits)?;
        let mut entries = Vec::new();
        let mut host_image = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let mut words = content.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            if keyword == "host-image" {
                // Where the boot loader put the host kernel (an arm64 Image).
                let (Some(addr), None) = (words.next(), words.next()) else {
                    return Err(PlatformError::ManifestSyntax { line });
                };
                let addr = parse_number(addr).ok_or(PlatformError::BadNumber { line })?;
                let at = Origin::Manifest { line };
                if addr & ((1u64 << PAGE_SHIFT) - 1) != 0 {
                    return Err(PlatformError::Unaligned { at });
                }
                if addr >= pa_limit {
                    return Err(PlatformError::OutsidePaSpace { at });
                }
                if host_image.replace(addr).is_some() {
                    return Err(PlatformError::ManifestSyntax { line });
                }
                continue;
            }
            let kind = ManifestKind::from_keyword(keyword)
                .ok_or(PlatformError::UnknownKeyword { line })?;
            let (Some(base), Some(size), None) = (words.next(), words.next(), words.next()) else {
                return Err(PlatformError::ManifestSyntax { line });
            };
            let base = parse_number(base).ok_or(PlatformError::BadNumber { line })?;
            let size = parse_number(size).ok_or(PlatformError::BadNumber { line })?;
            let at = Origin::Manifest { line };
            if size == 0 {
                return Err(PlatformError::Empty { at });
            }
            let page_mask = (1u64 << PAGE_SHIFT) - 1;
            if base & page_mask != 0 || size & page_mask != 0 {
                return Err(PlatformError::Unaligned { at });
            }
            match base.checked_add(size) {
                Some(end) if end <= pa_limit => {}
                _ => return Err(PlatformError::OutsidePaSpace { at }),
            }
            entries.push(ManifestEntry {
                kind,
                base,
                size,
                line,
            });
        }
        let mut sorted: Vec<&ManifestEntry> = entries.iter().collect();
        sorted.sort_by_key(|e| e.base);
        // Sorted by base, any overlap shows up between neighbours.
        for pair in sorted.windows(2) {
            if let [a, b] = pair {
                if b.base < a.base + a.size {
                    let line = a.line.max(b.line);
                    return Err(PlatformError::Overlap {
                        at: Origin::Manifest { line },
                    });
                }
            }
        }
        Ok(Self {
            entries,
            host_image,
        })
    }

    /// The physical address of the host kernel image (`host-image` line).
    pub fn host_image(&self) -> Option<u64> {
        self.host_image
    }

    /// The declarations, in file order.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }
}

/// The first byte address past a `pa_bits` physical address space.
pub(crate) fn pa_limit(pa_bits: u32) -> Result<u64, PlatformError> {
    if (32..=48).contains(&pa_bits) {
        Ok(1u64 << pa_bits)
    } else {
        Err(PlatformError::BadPaBits(pa_bits))
    }
}

/// `0x` hexadecimal or decimal, `_` allowed between digits, an optional
/// `K`, `M` or `G` suffix (powers of 1024). `None` on anything else or on
/// overflow.
fn parse_number(word: &str) -> Option<u64> {
    let (digits, shift) = match word.as_bytes().last()? {
        b'K' => (&word[..word.len() - 1], 10),
        b'M' => (&word[..word.len() - 1], 20),
        b'G' => (&word[..word.len() - 1], 30),
        _ => (word, 0),
    };
    let (digits, radix) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    if digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)?;
        value = value.checked_mul(radix.into())?.checked_add(d.into())?;
        any = true;
    }
    if !any {
        return None;
    }
    value.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("4096"), Some(4096));
        assert_eq!(parse_number("0x1000"), Some(0x1000));
        assert_eq!(parse_number("0X1_000"), Some(0x1000));
        assert_eq!(parse_number("0x4000_0000"), Some(0x4000_0000));
        assert_eq!(parse_number("1_024"), Some(1024));
        assert_eq!(parse_number("4K"), Some(4096));
        assert_eq!(parse_number("64M"), Some(64 << 20));
        assert_eq!(parse_number("1G"), Some(1 << 30));
        assert_eq!(parse_number("0x10M"), Some(16 << 20));
        assert_eq!(parse_number("0xffff_ffff_ffff_ffff"), Some(u64::MAX));
        for bad in [
            "",
            "K",
            "0x",
            "0xK",
            "_1",
            "1_",
            "0x_1",
            "-1",
            "+1",
            "1k",
            "1T",
            "0x1g",
            "12a",
            "0b101",
            "1.5",
            "0x1_0000_0000_0000_0000",
            "18446744073709551616",
            "17179869184G",
            "１",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }
}
