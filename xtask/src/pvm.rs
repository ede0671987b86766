//! Linux 7.3's own pKVM guest code (`drivers/virt/coco/pkvm-guest`),
//! unmodified, as a protected VM under the Debian 6.1 host: the guest
//! kernel of `cargo xtask guest-kernel`, run by the VMM with `--protected`
//! on the real image. The same kernel also runs in a normal VM.
//!
//! The protected guest's `/init` prints through the virtio console, checks
//! its kernel log (the KVM services bitmap, both CPUs up through its own
//! PSCI CPU_ON, the restricted DMA pool shared), writes a file on the
//! virtio disk and reads it back, then runs `guest-secret`
//! (tests/guest-secret): a private page whose guest-physical address it
//! prints and whose content it checks again once the host said so through
//! a mailbox sector of the disk. Meanwhile the host's `/init` shows that
//! it cannot read that page (the VMM's own mapping: SIGBUS; `/dev/mem`:
//! refused) while PAGE_QUERY says a guest owns it; after the VMM exits,
//! that every page came back to the host, zeroed.
//!
//! A run passes when the host's `/init` reports `LINUXHOST DONE 0`, the
//! guest `GUEST DONE 0`, and the console holds none of
//! [`linux::BAD_MARKERS`] (judged by [`vmm::boot`]).

use std::fs;
use std::path::PathBuf;

use crate::linux::{self, EXEC, FILE};
use crate::vmm::{self, Prepared};
use crate::{guest_kernel, init_script, workspace_root};

/// The disk's ext2 file system is 16 MiB; the image is 1 MiB longer, and
/// its first sector past the file system is the mailbox through which
/// the host tells the guest it finished its checks.
const MAILBOX_SECTOR: u64 = 16 << 11;
/// What the host writes into the mailbox.
const GO: &str = "PKVMRS-GO";

/// The guest's `/init`. FEATURES is the KVM services line's expected
/// ending; PROTECTED is 1 in a protected VM.
const GUEST_INIT: &str = concat!(
    init_script::preamble!(),
    init_script::guest_devices!(),
    r#"status=0
echo "GUEST hello through the virtio console, on $(nproc) CPUs"
[ "$(nproc)" = 2 ] || status=1
smp=$(dmesg | grep 'SMP: Total of')
echo "GUEST dmesg: $smp"
[ "${smp#*Total of 2 processors activated}" != "$smp" ] || status=1
kvm=$(dmesg | grep 'hypervisor services detected')
echo "GUEST dmesg: $kvm"
[ "${kvm%FEATURES)}" != "$kvm" ] || { echo "GUEST expected a bitmap ending FEATURES)"; status=1; }
dmesg | grep -i -e swiotlb -e 'restricted' -e 'decrypt' -e 'mem_encrypt' | sed 's/^/GUEST dmesg: /'
if [ PROTECTED = 1 ]; then
    # Both DMA pools shared: the default one (mem_init) and the
    # restricted one of the virtio devices.
    if dmesg | grep -q 'Failed to decrypt'; then status=1; fi
    dmesg | grep -q 'assigned reserved memory node restricted_dma' || status=1
else
    # A normal VM's devices have no pool (and no VIRTIO_F_ACCESS_PLATFORM).
    if dmesg | grep -q 'assigned reserved memory node'; then status=1; fi
fi
"#,
    init_script::guest_disk!(),
    init_script::guest_bench!(),
    r#"if [ PROTECTED = 1 ] && [ $status = 0 ]; then
    /guest-secret /dev/vda MAILBOX GOWORD || status=1
fi
echo "GUEST DONE $status"
poweroff -f
"#
);

/// The host's `/init`: run the VMM (VMMFLAGS) on the 7.3 guest, its
/// output also in /vmm.out. In a protected VM (PROTECTED = 1), once the
/// guest printed its secret's IPA: try to read it through the VMM's
/// mapping (monitor `peek`: SIGBUS expected), ask the driver who owns it
/// (monitor `query`: a guest, owner 2), try /dev/mem (refused), then
/// write the go-ahead into the disk image's mailbox sector. After the VMM
/// exited with 0: every page back with the driver, none found not zeroed,
/// the secret's frame the host's again (PAGE_QUERY owner 0), the guest's
/// file in the disk image.
const HOST_INIT: &str = concat!(
    init_script::preamble!(),
    r#"echo "LINUXHOST init at $(cut -d' ' -f1 /proc/uptime)s on $(grep -c ^processor /proc/cpuinfo) CPUs"
status=0
insmod /pkvm_rs.ko || status=1
base=$(/vmm stats)
echo "LINUXHOST driver before: $base"
# Waits (bounded only as a safety net) until /vmm.out has a line
# matching $1, or the VMM exited; prints the line.
await() {
    n=0
    while ! grep -q "$1" /vmm.out && ! grep -q '^LINUXHOST vmm exited' /vmm.out; do
        n=$((n + 1)); [ $n -gt 6000 ] && break; sleep 0.1
    done
    grep -m1 "$1" /vmm.out | tr -d '\r'
}
mkfifo /monitor
: >/vmm.out
if [ $status = 0 ]; then
    echo "LINUXHOST vmm run VMMFLAGS --cpus 2 --mem 192"
    start=$(cut -d' ' -f1 /proc/uptime)
    ( /vmm run VMMFLAGS --kernel /guest/Image --initrd /guest/initramfs.cpio --disk /guest/disk.img --cpus 2 --mem 192 --monitor /monitor --cmdline "GUESTCMD"; echo "LINUXHOST vmm exited with $? after $start..$(cut -d' ' -f1 /proc/uptime)s" ) 2>&1 | tee /vmm.out &
fi
pfn=
if [ $status = 0 ] && [ PROTECTED = 1 ]; then
    ipa=$(await 'GUEST SECRET ipa=' | sed -n 's/.*SECRET ipa=\(0x[0-9a-f]*\).*/\1/p')
    if [ -n "$ipa" ]; then
        exec 3>/monitor
        echo "peek $ipa" >&3
        peek=$(await "^vmm monitor: peek $ipa:")
        echo "LINUXHOST the VMM reading the secret through its mapping: $peek"
        [ "${peek%SIGBUS*}" != "$peek" ] || status=1
        echo "query $ipa" >&3
        q=$(await "^vmm monitor: query $ipa:")
        pfn=$(echo "$q" | sed -n 's/.* pfn \(0x[0-9a-f]*\) .*/\1/p')
        owner=$(echo "$q" | sed -n 's/.* owner \([0-9]*\) .*/\1/p')
        echo "LINUXHOST the secret's page: host pfn $pfn, PAGE_QUERY owner $owner (2: a guest)"
        [ "$owner" = 2 ] || status=1
        echo "count-shared 0x80000000 49152" >&3
        c=$(await "^vmm monitor: count-shared")
        echo "LINUXHOST guest RAM pages at the guest's /init: ${c##*: }"
        # At least the restricted DMA pool (8 MiB) is shared back.
        shared=$(echo "${c##*: }" | sed -n 's/.* donated, \([0-9]*\) shared.*/\1/p')
        [ "${shared:-0}" -ge 2048 ] || status=1
        if [ -n "$pfn" ]; then
            err=$(dd if=/dev/mem of=/dev/null bs=4096 skip=$((pfn)) count=1 2>&1)
            e=$?
            echo "LINUXHOST /dev/mem read of pfn $pfn: exit $e: $(echo $err | head -c 120)"
            [ $e != 0 ] || status=1
        else
            status=1
        fi
        if dmesg | grep -q -e 'Internal error' -e 'Unable to handle'; then
            echo "LINUXHOST the host kernel oopsed"; status=1
        fi
        exec 3>&-
    else
        echo "LINUXHOST the guest printed no GUEST SECRET line"
        status=1
    fi
    # The go-ahead, whatever happened: the guest then finishes.
    printf 'GOWORD' | dd of=/guest/disk.img bs=512 seek=MAILBOX conv=notrunc 2>/dev/null
fi
wait
vmm=$(sed -n 's/^LINUXHOST vmm exited with \([0-9]*\) .*/\1/p' /vmm.out)
[ "$vmm" = 0 ] || status=1
after=$(/vmm stats)
echo "LINUXHOST driver after: $after"
[ "$after" = "$base" ] || status=1
[ "${after%pages_not_zeroed 0}" != "$after" ] || status=1
if [ -n "$pfn" ]; then
    page=$(/vmm page $pfn)
    echo "LINUXHOST the secret's frame after the VMM exited: $page"
    [ "${page#*owner 0 host_state 0 }" != "$page" ] || status=1
fi
if [ $status = 0 ]; then
    for m in MODULES; do insmod /lib/modules/$m.ko || status=1; done
    mkdir -p /mnt
    if mount -o loop,ro -t ext2 /guest/disk.img /mnt; then
        found=$(cat /mnt/hello.txt)
        echo "LINUXHOST found in the disk image: $found"
        [ "$found" = "MESSAGE" ] || status=1
        umount /mnt
    else
        echo "LINUXHOST cannot mount the disk image"
        status=1
    fi
fi
echo "LINUXHOST DONE $status"
poweroff -f
"#
);

/// One kind of run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Protected,
    Normal,
}

impl Kind {
    fn protected(self) -> bool {
        self == Kind::Protected
    }
}

/// The guest's command line: the kernel's console on hvc0 (no early
/// console: a protected guest's device accesses before its MMIO guard
/// hook cannot be emulated), a panic ends the VM.
const GUEST_CMDLINE: &str = "console=hvc0 panic=-1";

/// A normal VM's: the UART's early console too (its accesses before the
/// MMIO guard hook arrive with their syndrome and are emulated).
const NORMAL_CMDLINE: &str = "console=hvc0 earlycon=uart8250,mmio,0x9000000 panic=-1";

/// Builds the 7.3 guest kernel (or reuses it), the VMM, the driver, the
/// guest's and the host's initramfs.
fn prepare(
    kind: Kind,
    host_init: &str,
    guest_cmdline: &str,
    name: &str,
) -> Result<Prepared, String> {
    let k = &linux::BOOKWORM;
    let guest_image = guest_kernel::build()?;
    let root = linux::fetch_and_unpack(k)?;
    linux::ensure_cross_compiler()?;
    let module = linux::build_module(k, &root)?;
    let vmm_bin = vmm::build_vmm()?;
    let dir = linux::linux_dir().join(k.abi).join("pvm");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Both kinds: the guest's bitmap is ABI.md's (docs/PKVM_GUEST.md,
    // section 5.3): a normal VM sees the same 0x9d.
    let guest_init = GUEST_INIT
        .replace("FEATURES", "0x0000009d")
        .replace("PROTECTED", if kind.protected() { "1" } else { "0" })
        .replace("MAILBOX", &MAILBOX_SECTOR.to_string())
        .replace("GOWORD", GO);
    let mut guest_extra = Vec::new();
    if kind.protected() && std::env::var_os("XTASK_NO_SECRET").is_none() {
        guest_extra.push(("guest-secret", EXEC, vmm::read(&build_secret()?)?));
    }
    let guest = vmm::initramfs(k, &root, &guest_init, &[], &guest_extra)?;
    let mut disk = vmm::disk_image(&dir)?;
    disk.resize(disk.len() + (1 << 20), 0);
    let host_init = host_init
        .replace(
            "VMMFLAGS",
            if kind.protected() { "--protected" } else { "" },
        )
        .replace("GUESTCMD", guest_cmdline)
        .replace("PROTECTED", if kind.protected() { "1" } else { "0" })
        .replace("MAILBOX", &MAILBOX_SECTOR.to_string())
        .replace("GOWORD", GO);
    let extra = [
        ("pkvm_rs.ko", FILE, vmm::read(&module)?),
        ("vmm", EXEC, vmm::read(&vmm_bin)?),
        ("guest/Image", FILE, vmm::read(&guest_image)?),
        ("guest/initramfs.cpio", FILE, guest),
        ("guest/disk.img", FILE, disk),
    ];
    let host = vmm::initramfs(k, &root, &host_init, &vmm::HOST_MODULES, &extra)?;
    let initramfs = dir.join(name);
    fs::write(&initramfs, host).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    Ok(Prepared {
        hyp: crate::image::build_images()?.hyp,
        image: root.join(k.image_path),
        initramfs,
    })
}

/// Builds `guest-secret` (tests/guest-secret) for the guest: a static
/// aarch64 musl binary, as the VMM is built.
fn build_secret() -> Result<PathBuf, String> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "guest-secret",
                "--target",
                vmm::TARGET,
            ])
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building guest-secret failed ({status})"));
    }
    Ok(workspace_root()
        .join("target")
        .join(vmm::TARGET)
        .join("release")
        .join("guest-secret"))
}

/// The step's name.
pub fn step_name(kind: Kind, cpu: &str, smp: u32) -> String {
    match kind {
        Kind::Protected => format!(
            "protected Linux guest ({} pKVM guest kernel, VMM, real image, {cpu}, {smp} CPUs)",
            guest_kernel::VERSION_NAME
        ),
        Kind::Normal => format!(
            "Linux guest in a normal VM ({} pKVM guest kernel, VMM, real image, {cpu}, {smp} CPUs)",
            guest_kernel::VERSION_NAME
        ),
    }
}

/// The steps of `cargo xtask test`.
pub fn tests(configs: &[(Kind, &str, u32)]) -> Result<(), String> {
    let mut prepared: Vec<(Kind, Prepared)> = Vec::new();
    for &(kind, cpu, smp) in configs {
        let step = step_name(kind, cpu, smp);
        if !crate::test_all::selected(&step) {
            continue;
        }
        if !prepared.iter().any(|(k, _)| *k == kind) {
            println!("==> build: the 7.3 guest kernel, the VMM, the guest's initramfs and disk");
            let name = if kind.protected() {
                "host-initramfs-protected.cpio"
            } else {
                "host-initramfs-normal.cpio"
            };
            let cmdline = match kind {
                Kind::Protected => GUEST_CMDLINE,
                Kind::Normal => NORMAL_CMDLINE,
            };
            let p = prepare(kind, HOST_INIT, cmdline, name).map_err(|e| {
                println!("xtask: {e}");
                step.clone()
            })?;
            prepared.push((kind, p));
        }
        let Some((_, p)) = prepared.iter().find(|(k, _)| *k == kind) else {
            continue;
        };
        println!("==> {step}");
        match vmm::boot(p, cpu, smp, false) {
            Ok(None) => {}
            Ok(Some(why)) => {
                println!("xtask: {why}");
                return Err(step);
            }
            Err(e) => {
                println!("xtask: {e}");
                return Err(step);
            }
        }
    }
    Ok(())
}

/// The bench's guest command line: quiet, the kernel log timed (this
/// kernel has no CONFIG_PRINTK_TIME), the guest's bench block on.
const BENCH_CMDLINE: &str = "console=hvc0 panic=-1 quiet printk.time=1 guestbench";

/// What one bench run measured.
struct Figures {
    guest: vmm::GuestFigures,
    /// (donated, shared) guest RAM pages at the guest's `/init`.
    shared: Option<(u64, u64)>,
}

fn shared_pages(console: &str) -> Option<(u64, u64)> {
    let l = console.lines().find_map(|l| {
        l.trim()
            .strip_prefix("LINUXHOST guest RAM pages at the guest's /init: ")
    })?;
    let (donated, rest) = l.split_once(" donated, ")?;
    let shared = rest.split_whitespace().next()?;
    Some((donated.trim().parse().ok()?, shared.parse().ok()?))
}

fn bench_one(kind: Kind, cpu: &str) -> Result<Figures, String> {
    let name = match kind {
        Kind::Protected => "bench-host-initramfs-protected.cpio",
        Kind::Normal => "bench-host-initramfs-normal.cpio",
    };
    let p = prepare(kind, HOST_INIT, BENCH_CMDLINE, name)?;
    let run = crate::qemu::QemuRun {
        cpu: cpu.to_string(),
        mte: crate::qemu::mte_supported(cpu),
        smmu: true,
        smp: 2,
        kernel: p.hyp.clone(),
        initrd: Some(p.initramfs.clone()),
        loader: vec![(p.image.clone(), linux::HOST_IMAGE_ADDR)],
        extra: ["-icount", "shift=0,sleep=off", "-seed", "1"]
            .map(String::from)
            .to_vec(),
        timeout: linux::TIMEOUT,
    };
    let out = run.run(&crate::deps::qemu_binary(), false)?;
    let log = p.initramfs.with_extension("console.txt");
    let _ = fs::write(&log, &out.text);
    for l in out.text.lines() {
        let l = l.trim_end();
        if l.starts_with("LINUXHOST") || l.starts_with("GUEST") || l.starts_with("vmm") {
            println!("{l}");
        }
    }
    if let Some(why) = vmm::judge(&out.text, out.timed_out) {
        return Err(why);
    }
    Ok(Figures {
        guest: vmm::parse_bench(&out.text),
        shared: shared_pages(&out.text),
    })
}

/// `cargo xtask bench --linux`: the 7.3 pKVM guest kernel as a normal and
/// as a protected guest (2 vCPUs, 192 MiB) in the Debian 6.1 host, under
/// `-icount shift=0,sleep=off -seed 1`: boot to /init, the guest RAM
/// pages shared back to the host at /init (protected: MEM_SHAREs of
/// boot not undone), and virtio-blk throughput (protected: bounced
/// through the restricted DMA pool).
pub fn bench(cpu: &str) -> Result<(), String> {
    println!(
        "==> bench: the {} pKVM guest kernel, normal and protected VM (2 vCPUs) in the Linux host, -cpu {cpu}, -icount shift=0,sleep=off -seed 1",
        guest_kernel::VERSION_NAME
    );
    let normal = bench_one(Kind::Normal, cpu)?;
    let protected = bench_one(Kind::Protected, cpu)?;
    let rate = |f: Option<(u64, u64)>| {
        f.map_or("-".to_string(), |(bytes, ns)| {
            format!("{:.1}", bytes as f64 * 1000.0 / ns.max(1) as f64)
        })
    };
    let init = |f: Option<u64>| f.map_or("-".to_string(), |n| format!("{:.3}", n as f64 / 1e9));
    println!("bench: 7.3 guest                     normal      protected");
    println!(
        "bench: boot to /init (G instr)      {:>9} {:>12}",
        init(normal.guest.init),
        init(protected.guest.init)
    );
    println!(
        "bench: virtio-blk read (B/kinstr)   {:>9} {:>12}",
        rate(normal.guest.read),
        rate(protected.guest.read)
    );
    println!(
        "bench: virtio-blk write (B/kinstr)  {:>9} {:>12}",
        rate(normal.guest.write),
        rate(protected.guest.write)
    );
    match protected.shared {
        Some((donated, shared)) => println!(
            "bench: protected guest at /init: {donated} RAM pages donated, {shared} shared back (MEM_SHARE, SHARED_BORROWED)"
        ),
        None => return Err("the protected run printed no shared-page count".into()),
    }
    for (what, f) in [("normal", &normal.guest), ("protected", &protected.guest)] {
        if f.init.is_none() || f.read.is_none() || f.write.is_none() {
            return Err(format!(
                "the {what} guest printed no complete bench lines: {f:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_page_line() {
        assert_eq!(
            shared_pages("x\nLINUXHOST guest RAM pages at the guest's /init: 3000 donated, 2100 shared with the host\r\n"),
            Some((3000, 2100))
        );
        assert_eq!(
            shared_pages("LINUXHOST guest RAM pages at the guest's /init: error"),
            None
        );
    }
}
