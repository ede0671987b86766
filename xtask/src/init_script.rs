//! Pieces of the busybox `/init` scripts that the Linux steps boot (hosts
//! and guests), as macros that expand to string literals, so that each
//! script is one `concat!` at compile time and a piece is written once.

/// The start of every `/init`: busybox's applets installed as commands,
/// /proc, /sys and /dev mounted.
macro_rules! preamble {
    () => {
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"
    };
}
pub(crate) use preamble;

/// A guest's wait for its virtio console and disk (the devices probe
/// after /init starts), then everything to the console.
macro_rules! guest_devices {
    () => {
        r#"i=0
while [ ! -e /dev/hvc0 ] || [ ! -e /dev/vda ]; do
    i=$((i + 1))
    if [ $i -gt 200 ]; then echo "GUEST no /dev/hvc0 or /dev/vda"; break; fi
    sleep 0.05
done
exec >/dev/hvc0 2>&1
"#
    };
}
pub(crate) use guest_devices;

/// A guest writes MESSAGE to a file on its virtio disk and reads it back
/// (`status` 1 on any failure).
macro_rules! guest_disk {
    () => {
        r#"mkdir -p /mnt
if mount -t ext2 /dev/vda /mnt; then
    echo "MESSAGE" >/mnt/hello.txt || status=1
    sync
    back=$(cat /mnt/hello.txt)
    echo "GUEST read back: $back"
    [ "$back" = "MESSAGE" ] || status=1
    umount /mnt || status=1
else
    echo "GUEST cannot mount /dev/vda"
    status=1
fi
"#
    };
}
pub(crate) use guest_disk;

/// `cargo xtask bench`, when the command line says `guestbench`: boot to
/// /init (the kernel's line, with its time) and virtio-blk throughput, a
/// 16 MiB direct read of the raw disk and an 8 MiB synced write to its
/// file system, timed by the kernel's clock (the guest's virtual counter,
/// in ns). `xtask/src/vmm.rs` (`parse_bench`) reads the lines.
macro_rules! guest_bench {
    () => {
        r#"if [ $status = 0 ] && grep -q guestbench /proc/cmdline; then
    now() { sed -n 's/^now at \([0-9]*\) nsecs$/\1/p' /proc/timer_list | head -n 1; }
    echo "GUEST BENCH $(dmesg | grep -m1 'Run /init as init process')"
    t0=$(now)
    dd if=/dev/vda of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null || status=1
    t1=$(now)
    echo "GUEST BENCH read 32768 sectors in $((t1 - t0)) ns"
    mount -t ext2 /dev/vda /mnt || status=1
    t0=$(now)
    dd if=/dev/zero of=/mnt/bench bs=64k count=128 conv=fsync 2>/dev/null || status=1
    t1=$(now)
    echo "GUEST BENCH wrote 16384 sectors in $((t1 - t0)) ns"
    rm -f /mnt/bench
    umount /mnt || status=1
fi
"#
    };
}
pub(crate) use guest_bench;
