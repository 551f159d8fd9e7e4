#!/usr/bin/env bash
# Builds Tether's guest image for QEMU `microvm` into
#   ${TETHER_CACHE_DIR:-$HOME/.cache/tether}/guest/
#     vmlinux     uncompressed ELF kernel (Debian linux-image-<ver>-cloud-amd64), booted via PVH (-kernel)
#     initrd.img  gzip'd newc cpio: busybox-static, virtio/button/evdev modules, guest/ scripts
#     rootfs.img  raw ext4 base disk (24 MiB) holding the marker file /TETHER-ROOTFS
#     stamp       hash of this script + guest/ files + busybox; kernel version (written last)
# Idempotent: when the three files and a matching stamp exist it only prints where they are.
# `--force` (or TETHER_GUEST_FORCE=1) rebuilds anyway. The kernel is never installed on the host.
#
# Guest contract (serial console ttyS0; lines end in \r\n on the serial port):
#   kernel command line keys
#     tether.ip=<cidr>          static address for eth0 (eth0 is brought up whenever it exists)
#     tether.gw=<ip>            default route via eth0
#     tether.uid=<uid>          echoed as `TETHER-GUEST-UID <uid>`
#     tether.ignore_powerdown=1 power button and ctrl-alt-del are ignored (forced-stop tests)
#     tether.flood_console=1    after READY, `TETHER-FLOOD …` lines flood the console until power off
#                               (console-cap tests)
#   markers printed, each alone on a line
#     TETHER-ROOTFS-OK          /dev/vda mounted read-only at /mnt and /mnt/TETHER-ROOTFS exists
#     TETHER-GUEST-READY        boot finished (the VMM adapter's readiness marker)
#     TETHER-GUEST-POWEROFF     graceful stop started: sync, then immediate power off (QEMU exits
#                               with -no-reboot); triggered by QMP system_powerdown (ACPI power
#                               button -> acpid) or QMP send-key ctrl-alt-delete (needs -device i8042)
#     TETHER-GUEST-POWERDOWN-IGNORED <reason>   a stop signal arrived under tether.ignore_powerdown=1
#   expected QEMU shape: -M microvm -m 80..96 -device i8042 -no-reboot, kernel cmdline with
#   console=ttyS0 and tsc_early_khz=<host kHz>; disk as virtio-blk-device, NIC as virtio-net-device.
set -euo pipefail

log() { echo "[build-guest] $*"; }
die() { echo "[build-guest] ERROR: $*" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
GUEST_SRC="$REPO_DIR/guest"
CACHE_DIR="${TETHER_CACHE_DIR:-${HOME:?set HOME or TETHER_CACHE_DIR}/.cache/tether}"
OUT_DIR="$CACHE_DIR/guest"
DEB_DIR="$CACHE_DIR/debs"
BUSYBOX=/bin/busybox
ROOTFS_MIB=24
MODULES=(virtio_ring virtio virtio_mmio failover net_failover virtio_net virtio_blk button evdev)
FORCE=${TETHER_GUEST_FORCE:-0}
[ "${1:-}" = "--force" ] && FORCE=1

[ -d "$GUEST_SRC" ] || die "guest sources not found at $GUEST_SRC"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: install busybox-static (scripts/install-system.sh)"

# Hash of everything that shapes the image (the kernel follows Debian's cloud meta package).
input_hash() {
  (
    cd "$REPO_DIR"
    sha256sum scripts/build-guest.sh $(find guest -type f | LC_ALL=C sort)
    sha256sum "$BUSYBOX" | cut -d' ' -f1
  ) | sha256sum | cut -d' ' -f1
}
HASH=$(input_hash)

is_current() {
  [ "$FORCE" = 1 ] && return 1
  [ -s "$OUT_DIR/vmlinux" ] && [ -s "$OUT_DIR/initrd.img" ] && [ -s "$OUT_DIR/rootfs.img" ] \
    && [ -f "$OUT_DIR/stamp" ] && grep -qx "hash=$HASH" "$OUT_DIR/stamp"
}
report() {
  local kver
  kver=$(sed -n 's/^kernel=//p' "$OUT_DIR/stamp")
  log "guest image ($1): kernel $kver"
  log "  $OUT_DIR/vmlinux"
  log "  $OUT_DIR/initrd.img"
  log "  $OUT_DIR/rootfs.img"
}

if is_current; then report "up to date"; exit 0; fi

mkdir -p "$CACHE_DIR" "$OUT_DIR" "$DEB_DIR"
# One builder at a time; a waiter re-checks and usually finds the image built.
exec 9>"$CACHE_DIR/guest.lock"
flock 9
if is_current; then report "up to date"; exit 0; fi

for tool in apt-get dpkg-deb lz4 mkfs.ext4 gzip sha256sum perl; do
  command -v "$tool" >/dev/null || die "'$tool' not found (needed: apt, lz4, e2fsprogs, gzip; see scripts/install-system.sh)"
done

T0=$(date +%s.%N)
rm -rf "$CACHE_DIR"/.guest-build.*  # left by a killed build (we hold the lock)
WORK=$(mktemp -d "$CACHE_DIR/.guest-build.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'echo "[build-guest] interrupted" >&2; exit 130' INT TERM
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# --- kernel package ---------------------------------------------------------------------------
APT_OPTS=(-q -o APT::Sandbox::User=root)
resolve_and_download() {
  local meta dep
  rm -f "$WORK"/linux-image-cloud-amd64_*.deb
  (cd "$WORK" && apt-get "${APT_OPTS[@]}" download linux-image-cloud-amd64 >/dev/null 2>"$WORK/apt.err") || return 1
  meta=$(ls "$WORK"/linux-image-cloud-amd64_*.deb)
  dep=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64' | head -n1)
  [ -n "$dep" ] || { echo "no linux-image-<ver>-cloud-amd64 in Depends of $meta" >"$WORK/apt.err"; return 1; }
  KPKG=$dep
  KDEB=$(ls "$DEB_DIR/${KPKG}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$KDEB" ]; then
    log "downloading $KPKG"
    (cd "$WORK" && apt-get "${APT_OPTS[@]}" download "$KPKG" >/dev/null 2>"$WORK/apt.err") || return 1
    KDEB=$(ls "$WORK/${KPKG}"_*.deb)
    mv "$KDEB" "$DEB_DIR/"  # keep for rebuilds; old versions are pruned below
    KDEB="$DEB_DIR/$(basename "$KDEB")"
  else
    log "using cached $(basename "$KDEB")"
  fi
}
log "resolving linux-image-cloud-amd64"
if ! resolve_and_download; then
  log "apt-get download failed ($(grep -m1 -E '^E:' "$WORK/apt.err" || tail -n1 "$WORK/apt.err")); running apt-get update"
  apt-get -qq update >/dev/null || die "apt-get update failed"
  resolve_and_download || die "cannot download the kernel package: $(cat "$WORK/apt.err")"
fi
find "$DEB_DIR" -name 'linux-image-*.deb' ! -path "$KDEB" -delete
KVER=${KPKG#linux-image-}
log "kernel $KVER ($(basename "$KDEB"))"
dpkg-deb -x "$KDEB" "$WORK/kpkg"
MODDIR="$WORK/kpkg/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no /lib/modules/$KVER in $(basename "$KDEB")"

# --- vmlinux: ELF out of the LZ4-compressed bzImage --------------------------------------------
VMLINUZ="$WORK/kpkg/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no /boot/vmlinuz-$KVER in the package"
log "extracting vmlinux (LZ4)"
found=""
for off in $(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$VMLINUZ" | cut -d: -f1); do
  tail -c +"$((off + 1))" "$VMLINUZ" | lz4 -dc 2>/dev/null >"$WORK/vmlinux" || true
  if [ "$(head -c 4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then found=$off; break; fi
done
[ -n "$found" ] || die "no LZ4 stream with an ELF kernel in $VMLINUZ"
log "vmlinux: $(($(stat -c %s "$WORK/vmlinux") / 1024 / 1024)) MiB ELF (LZ4 stream at byte $found)"

# --- initramfs --------------------------------------------------------------------------------
log "assembling initramfs"
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/acpi/PWRF,lib/modules,proc,sys,dev,mnt,tmp,run,root,var/log}
ln -s ../run "$R/var/run"
cp "$BUSYBOX" "$R/bin/busybox"
# Applet symlinks at their standard paths (perl-base is essential; one process, not ~400 ln forks).
"$BUSYBOX" --list-full | R="$R" perl -ne '
  chomp; next if $_ eq "" || -e "$ENV{R}/$_" || -l "$ENV{R}/$_";
  (my $d = "$ENV{R}/$_") =~ s{/[^/]*$}{}; mkdir $d unless -d $d;
  symlink("/bin/busybox", "$ENV{R}/$_") or die "symlink $_: $!\n";'
ln -s /bin/busybox "$R/init"
for m in "${MODULES[@]}"; do
  ko=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
  [ -n "$ko" ] || die "module $m not found in the kernel package"
  case "$ko" in
    *.ko.xz) command -v xz >/dev/null || die "$m is xz-compressed and xz is missing"; xz -dc "$ko" >"$R/lib/modules/$m.ko" ;;
    *.ko.zst) command -v zstd >/dev/null || die "$m is zstd-compressed and zstd is missing"; zstd -qdc "$ko" >"$R/lib/modules/$m.ko" ;;
    *) cp "$ko" "$R/lib/modules/$m.ko" ;;
  esac
done
install -m 644 "$GUEST_SRC/inittab" "$R/etc/inittab"
install -m 755 "$GUEST_SRC/rcS" "$R/etc/init.d/rcS"
install -m 755 "$GUEST_SRC/tether-powerdown" "$R/sbin/tether-powerdown"
ln -s /sbin/tether-powerdown "$R/etc/acpi/PWRF/00000080"
echo "$KVER" >"$R/etc/tether-kernel"
if [ "$(id -u)" = 0 ]; then  # the kernel's built-in initramfs has /dev/console too
  mknod -m 600 "$R/dev/console" c 5 1
  mknod -m 666 "$R/dev/null" c 1 3
fi
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -6n >"$WORK/initrd.img")
log "initrd.img: $(($(stat -c %s "$WORK/initrd.img") / 1024)) KiB"

# --- rootfs -----------------------------------------------------------------------------------
log "making rootfs.img (${ROOTFS_MIB} MiB ext4)"
mkdir -p "$WORK/rootfs"
printf 'tether rootfs\nkernel=%s\n' "$KVER" >"$WORK/rootfs/TETHER-ROOTFS"
mkfs.ext4 -q -F -L tether-root -E root_owner=0:0 -d "$WORK/rootfs" "$WORK/rootfs.img" "${ROOTFS_MIB}M" >/dev/null \
  || die "mkfs.ext4 -d failed (needs e2fsprogs >= 1.43)"

# --- publish: stamp removed first, files renamed in, stamp written last -----------------------
rm -f "$OUT_DIR/stamp"
for f in vmlinux initrd.img rootfs.img; do mv -f "$WORK/$f" "$OUT_DIR/$f"; done
printf 'hash=%s\nkernel=%s\nbuilt=%s\n' "$HASH" "$KVER" "$(date -u +%FT%TZ)" >"$WORK/stamp"
mv -f "$WORK/stamp" "$OUT_DIR/stamp"
report "built in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
