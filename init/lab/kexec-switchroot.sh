#!/bin/bash
# QEMU proof of init's real flash-to-hand-off path (tier 3; needs qemu-system-x86_64,
# squashfs-tools, busybox-static, cpio, python3 and the lab kernel cache).
#
#   boot 1: shelfboot-init-lab as PID 1 loads virtio-blk + block2mtd (waits for /dev/vda),
#           attaches UBI to a 0xFF flash image, commits a boot image + a squashfs package
#           with card's Store over real UBI ioctls, counts the boot, stages the boot image
#           in tmpfs and kexecs into it with shelfboot.stored=1;
#   boot 2: (kexec'd kernel + stage-2 initramfs) attaches the same flash, does not count
#           again, ubiblock + squashfs + overlayfs, moves /dev /proc /sys /run, switch_root,
#           execs the package's /sbin/init (busybox script) which prints LAB: lines and
#           powers off.
#
#   SHELFBOOT_LAB_FLASH=zero  start from a zero-filled flash (pristine-format path)
#   SHELFBOOT_LAB_MODE=ram    test mode: the package is booted from RAM via a loop device,
#                             nothing is written to flash, no kexec
#   SHELFBOOT_LAB_BIN=FILE    use this shelfboot-init-lab binary instead of building it
#
# Usage: init/lab/kexec-switchroot.sh [WORKDIR]   (exit 0 when every expected line appeared)
# Skips (exit 0 with a message) unless SHELFBOOT_TIER_QEMU=1.
set -euo pipefail
if [ "${SHELFBOOT_TIER_QEMU:-}" != 1 ]; then
    echo "skipped: QEMU tier; run with SHELFBOOT_TIER_QEMU=1"; exit 0
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${1:-$(mktemp -d /tmp/shelfboot-init-lab.XXXXXX)}
KVER=6.1.0-56-amd64
KR=${SHELFBOOT_KERNEL_ROOT:-$ROOT/lab-cache/kernel/$KVER/root}
M=lib/modules/$KVER/kernel
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[ -f "$KR/boot/vmlinuz-$KVER" ] || { echo "no lab kernel at $KR (see qemu/)"; exit 1; }
BIN=${SHELFBOOT_LAB_BIN:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build -q -p shelfboot-init --profile init-release \
        --target x86_64-unknown-linux-musl --features lab --bin shelfboot-init-lab)
    BIN=$TARGET_DIR/x86_64-unknown-linux-musl/init-release/shelfboot-init-lab
fi
rm -rf "$W/pkg" "$W/stage" && mkdir -p "$W" && cd "$W"

# the package: a busybox root whose /sbin/init reports and powers off
mkdir -p pkg/bin pkg/sbin pkg/proc pkg/sys pkg/dev pkg/run pkg/tmp
cp "$(command -v busybox)" pkg/bin/busybox
for a in sh cat echo poweroff mount sync grep tr; do ln -sf busybox pkg/bin/$a; done
cat > pkg/sbin/init <<'S'
#!/bin/sh
echo "LAB: SWITCHED-ROOT-OK pid=$$"
echo "LAB: cmdline: $(cat /proc/cmdline)"
echo "LAB: root: $(grep ' / ' /proc/mounts)"
echo "LAB: env: $(tr '\0' ' ' < /proc/1/environ)"
sync; poweroff -f
S
chmod +x pkg/sbin/init
mksquashfs pkg base.sqfs -noappend -comp xz -quiet -all-root >/dev/null

# the initramfs common to both stages
mkdir -p stage/lib/modules stage/dev stage/proc stage/sys stage/run
cp "$BIN" stage/init
echo "# shelfboot load.list v1: IMAGE-PATH [PARAMS...], load in this order" > stage/lib/modules/load.list
for m in drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko \
         drivers/mtd/mtd.ko drivers/mtd/devices/block2mtd.ko drivers/mtd/ubi/ubi.ko \
         drivers/block/loop.ko fs/squashfs/squashfs.ko fs/overlayfs/overlay.ko; do
    mkdir -p "stage/$(dirname $M/$m)"; cp "$KR/$M/$m" "stage/$M/$m"
    p=""; [ "$m" = drivers/mtd/devices/block2mtd.ko ] && p=" block2mtd=/dev/vda,128KiB"
    echo "$M/$m$p" >> stage/lib/modules/load.list
done
(cd stage && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > stage2.cpio

SETCMD="console=ttyS0 quiet panic=-1 ipv6.disable=1 shelfboot.carrier_timeout=1"
python3 - "$KR/boot/vmlinuz-$KVER" stage2.cpio "$SETCMD" <<'PY'
import hashlib, struct, sys, os
k = open(sys.argv[1], 'rb').read(); i = open(sys.argv[2], 'rb').read(); c = sys.argv[3].encode()
h = b'SHBOOTIM' + struct.pack('<IIQQII', 1, 144, len(k), len(i), len(c), 0)
h += hashlib.sha256(k).digest() + hashlib.sha256(i).digest() + hashlib.sha256(c).digest() + bytes(8)
assert len(h) == 144
open('boot.img', 'wb').write(h + c + k + i)
PY
mkdir -p stage/lab/set && cp boot.img base.sqfs stage/lab/set/
line() { echo "$1 $2 $(sha256sum "$3" | cut -d' ' -f1) $(stat -c %s "$3") $(basename "$3")"; }
{ line boot kernel boot.img; line pkg base base.sqfs; echo "cmdline $SETCMD"; } > stage/lab/set/manifest
# SHELFBOOT_LAB_MODE=ram: test mode (packages from RAM through a loop device, flash untouched)
RAM=0; [ "${SHELFBOOT_LAB_MODE:-}" = ram ] && RAM=1 && echo "mode ram" >> stage/lab/set/manifest
(cd stage && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > stage1.cpio
# erased flash (0xFF) by default; SHELFBOOT_LAB_FLASH=zero gives a zero-filled "foreign"
# device that UBI refuses, so init must take the pristine-format path (MEMERASE64).
FILL=ff; EXTRA=()
if [ "${SHELFBOOT_LAB_FLASH:-}" = zero ]; then FILL=00; EXTRA=("formatted and attached mtd0 as ubi0"); fi
python3 -c "open('flash.img', 'wb').write(bytes.fromhex('$FILL') * (64 << 20))"

set +e
timeout 240 qemu-system-x86_64 -accel tcg -m 512M -nodefaults -display none -serial stdio -no-reboot \
    -kernel "$KR/boot/vmlinuz-$KVER" -initrd stage1.cpio \
    -append "console=ttyS0 quiet panic=-1 ipv6.disable=1 shelfboot.carrier_timeout=1" \
    -drive file=flash.img,format=raw,if=virtio > console.log 2>&1
rc=$?
set -e
fail=0
WANT=("attached mtd0 as ubi0" "lab: committed set" "booting committed set, attempt 1"
      "kexec: sync and reboot into the stored image" "stored          true"
      "switch_root: exec /sbin/init" "LAB: SWITCHED-ROOT-OK pid=1"
      "LAB: cmdline: .*shelfboot.stored=1" "LAB: root: overlay / overlay" "${EXTRA[@]}")
if [ $RAM = 1 ]; then
    WANT=("attached mtd0 as ubi0" "test mode: booting 1 packages from RAM; flash untouched"
          "switch_root: exec /sbin/init" "LAB: SWITCHED-ROOT-OK pid=1" "LAB: root: overlay / overlay")
    if grep -q "lab: committed set\|kexec:" console.log; then echo "FAIL test mode wrote flash or kexeced"; fail=1; fi
fi
for want in "${WANT[@]}"; do
    if grep -q -- "$want" console.log; then echo "ok   $want"; else echo "FAIL $want"; fail=1; fi
done
echo "qemu rc=$rc, console log: $W/console.log"
exit $fail
