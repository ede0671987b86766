//! Target `decode`: everything that turns untrusted words into typed
//! values. Never panics, and where an encoder exists, decode∘encode gives
//! the input back.
//!
//! Input: records until the bytes run out, each a selector byte then:
//! - 0: host-call registers: a PA-size byte and x0..x6 (raw u64 each);
//!   [`HostCall::decode`] must not panic, and an accepted call must
//!   encode back to exactly these registers;
//! - 1: a guest-call x0, an `inject_irq` word, a GUEST_MAP_DEVICE x5, an
//!   x1 errno word and an exit-reason word (raw u64 each);
//! - 2: a run page (up to 4096 bytes, zero-padded), read as the hypervisor
//!   reads it, field by field, and as one [`RunPage`].

use host_interface::prot::{decode_device_prot, encode_device_prot};
use host_interface::{
    Errno, ExitReason, GuestCallId, HostCall, HostCallId, IrqRequest, Prot, RunPage,
    MAX_INJECT_INTID, PAGE_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use super::input::{Input, Output};

/// PA sizes the decoder is asked about (every size arm64 defines).
pub const PA_BITS: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

/// Records per input.
pub const MAX_RECORDS: usize = 256;

/// The target: see the module documentation.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut inp = Input::new(data);
    for _ in 0..MAX_RECORDS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 3 {
            0 => host_call(&mut inp)?,
            1 => words(&mut inp)?,
            _ => run_page(inp.bytes(PAGE_SIZE as usize))?,
        }
    }
    Ok(())
}

/// Writes a host-call record for `regs` (for the corpus).
pub fn write_host_call(out: &mut Output, pa_bits: u32, regs: &[u64; 7]) {
    out.u8(0);
    out.u8(PA_BITS.iter().position(|&b| b == pa_bits).unwrap_or(0) as u8);
    for &r in regs {
        out.u64(r);
    }
}

/// Writes a record of guest-side words (for the corpus).
pub fn write_words(out: &mut Output, words: [u64; 5]) {
    out.u8(1);
    for w in words {
        out.u64(w);
    }
}

fn host_call(inp: &mut Input<'_>) -> Result<(), String> {
    let pa_bits = PA_BITS[usize::from(inp.u8()) % PA_BITS.len()];
    let mut regs = [0u64; 7];
    for r in &mut regs {
        *r = inp.u64();
    }
    let Ok(call) = HostCall::decode(&regs, pa_bits) else {
        return Ok(());
    };
    if HostCallId::from_id(regs[0]) != Some(call.id()) {
        return Err(format!("{regs:x?} decoded as {call:?}, another ID"));
    }
    let back = call.encode();
    if back != regs {
        return Err(format!(
            "{regs:x?} decoded as {call:?}, which encodes as {back:x?}"
        ));
    }
    Ok(())
}

fn words(inp: &mut Input<'_>) -> Result<(), String> {
    let (x0, irq, x5, x1, reason) = (inp.u64(), inp.u64(), inp.u64(), inp.u64(), inp.u64());
    if let Some(call) = GuestCallId::from_id(x0) {
        let alias = call.smc32_alias().map(u64::from);
        if u64::from(call.id()) != x0 && alias != Some(x0) {
            return Err(format!("guest call {x0:#x} decoded as {call:?}"));
        }
        if GuestCallId::from_name(call.name()) != Some(call) {
            return Err(format!(
                "{call:?}: its name {} does not name it",
                call.name()
            ));
        }
    }
    match IrqRequest::decode(irq) {
        IrqRequest::Inject(intid)
            if intid > MAX_INJECT_INTID || IrqRequest::encode(intid) != Some(irq) =>
        {
            return Err(format!("inject_irq {irq:#x} decoded as INTID {intid}"));
        }
        IrqRequest::None if irq != 0 => return Err(format!("inject_irq {irq:#x} read as none")),
        _ => {}
    }
    let intid = (irq & 0x3ff) as u32;
    if let Some(v) = IrqRequest::encode(intid) {
        if IrqRequest::decode(v) != IrqRequest::Inject(intid) {
            return Err(format!(
                "INTID {intid} encodes as {v:#x}, which does not decode"
            ));
        }
    }
    if let Some((prot, memtype)) = decode_device_prot(x5) {
        if encode_device_prot(prot, memtype) != x5 {
            return Err(format!("x5 {x5:#x} decoded as {prot:?} {memtype:?}"));
        }
    }
    if let Some(prot) = Prot::from_bits(x5) {
        if prot.bits() != x5 {
            return Err(format!("prot {x5:#x} decoded as {prot:?}"));
        }
    }
    if let Some(e) = Errno::from_x1(x1) {
        if e.to_x1() != x1 {
            return Err(format!("x1 {x1:#x} read as {e:?}"));
        }
    }
    if let Some(r) = ExitReason::from_u64(reason) {
        if r as u64 != reason {
            return Err(format!("exit reason {reason:#x} read as {r:?}"));
        }
    }
    Ok(())
}

/// A run page from untrusted bytes: each field the way the core reads it
/// (one word at a time), and the whole page as a [`RunPage`].
pub fn run_page(bytes: &[u8]) -> Result<(), String> {
    let mut page = [0u8; PAGE_SIZE as usize];
    page[..bytes.len()].copy_from_slice(bytes);
    let rp = RunPage::read_from_bytes(&page).map_err(|_| "a 4 KiB run page did not read")?;
    if rp.as_bytes() != page {
        return Err("the run page does not write back as read".into());
    }
    let phys = crate::SimPhys::new(0x4000_0000, 0x1000);
    for (w, chunk) in page.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        hyp::phys::write_u64(&phys, 0x4000_0000 + 8 * w as u64, u64::from_le_bytes(b));
    }
    let inject = core::mem::offset_of!(RunPage, inject_irq);
    let read = hyp::phys::run_read(&phys, 0x4_0000, inject);
    if read != rp.inject_irq {
        return Err(format!(
            "inject_irq read {read:#x}, page holds {:#x}",
            rp.inject_irq
        ));
    }
    let _ = IrqRequest::decode(read);
    let _ = ExitReason::from_u64(rp.exit_reason);
    Ok(())
}
