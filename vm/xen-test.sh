#!/usr/bin/env bash
# vm/xen-test.sh: boots Xen 4.17 with a Debian 6.1 dom0 under QEMU (TCG) and tests, inside
# dom0, the xen backend against the real /dev/xen devices and the BPF LSM programs of ebpf/;
# stage 2 adds a storage domU (xl) running virtuos-storage over Xen sessions and a redirected
# file workload in dom0 (see vm/README.md). Ends with `xen-test: PASS` (exit 0) or `FAIL`.
#
#   vm/xen-test.sh [--no-build] [--verbose] [--timeout SECS] [--cache DIR] [--stage1-only]
#
# Downloads (apt-get download, no install) into the cache (default /var/cache/virtuos-vm, kept
# between runs): the kernel linux-image-amd64 points to, xen-hypervisor-4.17-amd64,
# busybox-static, and for stage 2 the Xen tools and sqlite3. Needs root only to install
# qemu-system-x86 / cpio when they are missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VIRTUOS_VM_CACHE:-/var/cache/virtuos-vm}
BUILD=1
VERBOSE=0
TIMEOUT=900
STAGE2=auto
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) BUILD=0 ;;
    --verbose | -v) VERBOSE=1 ;;
    --timeout) TIMEOUT=$2; shift ;;
    --cache) CACHE=$2; shift ;;
    --stage1-only) STAGE2=0 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "xen-test: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[%6ss] %s\n' "$(elapsed)" "$*"; }
die() { say "xen-test: FAIL: $*"; say "harness wall time: $(elapsed)s"; exit 1; }

DEBS=$CACHE/debs
PKGS=$CACHE/pkgs
mkdir -p "$DEBS" "$PKGS" "$CACHE/logs"

# ---------------------------------------------------------------- host tools
need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v cpio >/dev/null || need_apt+=(cpio)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing host tools: ${need_apt[*]}"
    [ "$(id -u)" = 0 ] || die "run as root (or install ${need_apt[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# ---------------------------------------------------------------- (a) packages
# The exact kernel package linux-image-amd64 depends on now (never a glob: that would fetch
# every old kernel).
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$KPKG" ] || die "apt-cache cannot resolve linux-image-amd64 (run apt-get update)"
KVER=${KPKG#linux-image-}
STAGE1_PKGS=("$KPKG" xen-hypervisor-4.17-amd64 busybox-static)
# Stage 2: the Xen tools (xl, xenstored, xenconsoled) and their libraries.
STAGE2_PKGS=(xen-utils-4.17 xenstore-utils libxenstore4 libxenmisc4.17 libxencall1
    libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenhypfs1
    libxentoolcore1 libxentoollog1 libyajl2 sqlite3 libsqlite3-0)

fetch_pkgs() {
    local missing=() p
    for p in "$@"; do
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt-get download ${missing[*]}"
        (cd "$DEBS" && apt-get download "${missing[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' | sed 's/^/    /') ||
            return 1
    fi
    for p in "$@"; do
        local deb
        deb=$(compgen -G "$DEBS/${p}_*.deb" | sort -V | tail -n1)
        [ -n "$deb" ] || { say "package $p was not downloaded"; return 1; }
        if [ ! -e "$PKGS/$p/.unpacked" ] || [ "$PKGS/$p/.unpacked" -ot "$deb" ]; then
            rm -rf "${PKGS:?}/$p"
            mkdir -p "$PKGS/$p"
            dpkg -x "$deb" "$PKGS/$p"
            # Of the kernel's modules only the Xen device drivers are used (saves ~400 MB).
            if [ "$p" = "$KPKG" ]; then
                find "$PKGS/$p/lib/modules" -name '*.ko' ! -path '*/drivers/xen/*' -delete
            fi
            touch "$PKGS/$p/.unpacked"
        fi
    done
}
say "packages (cache $CACHE): ${STAGE1_PKGS[*]}"
fetch_pkgs "${STAGE1_PKGS[@]}" || die "downloading the stage-1 packages failed"
if [ "$STAGE2" != 0 ]; then
    say "stage-2 packages: ${STAGE2_PKGS[*]}"
    if fetch_pkgs "${STAGE2_PKGS[@]}"; then STAGE2=1; else
        say "stage 2 skipped: its packages could not be fetched"
        STAGE2=0
    fi
fi

KROOT=$PKGS/$KPKG
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
XENGZ=$PKGS/xen-hypervisor-4.17-amd64/boot/xen-4.17-amd64.gz
[ -f "$VMLINUZ" ] || die "no $VMLINUZ in $KPKG"
[ -f "$XENGZ" ] || die "no xen-4.17-amd64.gz in xen-hypervisor-4.17-amd64"
XEN=$CACHE/xen-4.17-amd64.elf
if [ ! -f "$XEN" ] || [ "$XEN" -ot "$XENGZ" ]; then
    gunzip -c "$XENGZ" >"$XEN.tmp" && mv "$XEN.tmp" "$XEN"
fi

# ---------------------------------------------------------------- workspace build
if [ "$BUILD" = 1 ]; then
    say "cargo build --release --workspace (shared target dir; may wait for other builds)"
    (cd "$ROOT" && nice cargo build --release --workspace 2>&1 | grep -E '^(error|warning: unused)|Finished' | sed 's/^/    /') ||
        die "workspace build failed"
    (cd "$ROOT" && nice cargo build --release -p xen-transport --example xen_probe --example xen_bridge 2>&1 | grep -E '^error|Finished' | sed 's/^/    /') ||
        die "xen_probe/xen_bridge build failed"
    if [ ! -f "$ROOT/target/bpf/virtuos-ebpf.o" ] || [ -n "$(find "$ROOT/ebpf/src" -newer "$ROOT/target/bpf/virtuos-ebpf.o" -name '*.rs')" ]; then
        say "building the eBPF object (scripts/build-ebpf.sh)"
        "$ROOT/scripts/build-ebpf.sh" 2>&1 | tail -n 2 | sed 's/^/    /'
    fi
fi
REL=$ROOT/target/release
for f in "$REL/virtuos-redirect" "$REL/virtuos-storage" "$REL/libvirtuos_preload.so" \
    "$REL/examples/xen_probe" "$REL/examples/xen_bridge" "$ROOT/target/bpf/virtuos-ebpf.o"; do
    [ -f "$f" ] || die "$f missing (build the workspace, the xen_probe example and scripts/build-ebpf.sh)"
done

# ---------------------------------------------------------------- (b) initramfs
# copy_elf FILE DEST DIR: FILE (debug info stripped) at DIR/DEST, and every library ldd
# resolves for it (with the dynamic loader) at its own path. Libraries found in the unpacked
# packages ($PKGS/<pkg>/...) go to the path they have in their package.
copy_libs() {
    local f=$1 dir=$2 lib dest
    LD_LIBRARY_PATH=${PKG_LIBS:-} ldd "$f" 2>/dev/null |
        awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 } /not found/ { print "MISSING:" $1 }' |
        while read -r lib; do
            case "$lib" in MISSING:*) echo "    warning: $f needs ${lib#MISSING:}, not found" >&2; continue ;; esac
            dest=$lib
            case "$lib" in "$PKGS"/*) dest=/${lib#"$PKGS"/*/} ;; esac
            [ -e "$dir$dest" ] && continue
            mkdir -p "$dir$(dirname "$dest")"
            cp -L "$lib" "$dir$dest"
        done
}
copy_elf() {
    local f=$1 dest=$2 dir=$3
    mkdir -p "$(dirname "$dir$dest")"
    objcopy --strip-debug "$f" "$dir$dest" 2>/dev/null || cp -L "$f" "$dir$dest"
    copy_libs "$f" "$dir"
}

build_initramfs() { # DIR ROLE-SCRIPTS...
    local dir=$1
    shift
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,var,opt/virtuos/bin,lib/modules/$KVER}
    cp "$PKGS/busybox-static/bin/busybox" "$dir/bin/busybox"
    install -m 755 "$ROOT/vm/guest/init" "$dir/init"
    local s
    for s in "$@"; do install -m 755 "$ROOT/vm/guest/$s" "$dir/$s"; done
    echo "virtuos vm ($KPKG, xen 4.17)" >"$dir/etc/virtuos-vm"
    echo "root:x:0:0:root:/root:/bin/sh" >"$dir/etc/passwd"
    echo "root:x:0:" >"$dir/etc/group"
    local m
    for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
        find "$KROOT/lib/modules/$KVER" -name "$m.ko" -exec cp {} "$dir/lib/modules/$KVER/" \;
    done
    copy_elf "$REL/virtuos-redirect" /opt/virtuos/bin/virtuos-redirect "$dir"
    copy_elf "$REL/virtuos-storage" /opt/virtuos/bin/virtuos-storage "$dir"
    copy_elf "$REL/libvirtuos_preload.so" /opt/virtuos/bin/libvirtuos_preload.so "$dir"
    copy_elf "$REL/examples/xen_probe" /opt/virtuos/bin/xen_probe "$dir"
    copy_elf "$REL/examples/xen_bridge" /opt/virtuos/bin/xen_bridge "$dir"
    cp "$ROOT/target/bpf/virtuos-ebpf.o" "$dir/opt/virtuos/bin/virtuos-ebpf.o"
}
pack() { # DIR OUT
    (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$2.tmp"
    mv "$2.tmp" "$2"
}

if [ "$STAGE2" = 1 ]; then
    say "building the storage domU initramfs"
    build_initramfs "$CACHE/domu-root" role-storage.sh
    pack "$CACHE/domu-root" "$CACHE/domu-initrd.gz"
    say "domU initramfs: $(du -h "$CACHE/domu-initrd.gz" | cut -f1)"
fi

say "building the dom0 initramfs"
INITRD=$CACHE/dom0-initrd.gz
if [ "$STAGE2" = 1 ]; then
    build_initramfs "$CACHE/dom0-root" role-dom0.sh role-dom0-stage2.sh
    D=$CACHE/dom0-root
    PKG_LIBS=$(find "$PKGS" -path '*/usr/lib/x86_64-linux-gnu/*.so*' -printf '%h\n' | sort -u | tr '\n' :)
    XB=usr/lib/xen-4.17/bin
    for b in $XB/xl $XB/xenstored $XB/xenconsoled $XB/xen-init-dom0 $XB/xenconsole usr/bin/xenstore; do
        src=$(find "$PKGS" -path "*/$b" -type f | head -n1)
        [ -n "$src" ] || die "$b not found in the stage-2 packages"
        copy_elf "$src" "/$b" "$D"
    done
    for l in ls read write list rm exists chmod; do ln -sf xenstore "$D/usr/bin/xenstore-$l"; done
    # The redirected workload: dynamically linked programs (the preload shim needs a dynamic
    # loader), coreutils from this Debian host and sqlite3 from its package.
    for b in /usr/bin/cp /usr/bin/ls /usr/bin/sha256sum; do copy_elf "$b" "$b" "$D"; done
    copy_elf "$PKGS/sqlite3/usr/bin/sqlite3" /usr/bin/sqlite3 "$D"
    mkdir -p "$D/etc/xen" "$D/boot"
    cp "$VMLINUZ" "$D/boot/vmlinuz"
    cp "$CACHE/domu-initrd.gz" "$D/boot/domu-initrd.gz"
    install -m 644 "$ROOT/vm/guest/storage.cfg" "$D/etc/xen/storage.cfg"
    : >"$D/etc/xen/xl.conf"
    ln -sfn /run "$D/var/run"
else
    build_initramfs "$CACHE/dom0-root" role-dom0.sh
fi
pack "$CACHE/dom0-root" "$INITRD"
say "dom0 initramfs: $(du -h "$INITRD" | cut -f1) ($(find "$CACHE/dom0-root" -type f | wc -l) files)"

# ---------------------------------------------------------------- (c) boot
LOG=$CACHE/logs/serial-$(date +%Y%m%d-%H%M%S).log
ln -sfn "$(basename "$LOG")" "$CACHE/logs/latest.log"
# Multiboot module arguments: QEMU splits -initrd at commas, ",," is a literal comma.
LSM="lockdown,,capability,,landlock,,yama,,apparmor,,tomoyo,,bpf"
DOM0_CMD="console=hvc0 earlyprintk=xen loglevel=4 panic=5 lsm=$LSM virtuos.role=dom0"
XEN_CMD="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning"
QEMU=(qemu-system-x86_64 -accel tcg -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+x2apic
    -m 2048 -smp 2 -display none -monitor none -serial stdio -no-reboot
    -kernel "$XEN" -append "$XEN_CMD"
    -initrd "$VMLINUZ $DOM0_CMD,$INITRD")
say "booting Xen + dom0 under QEMU (TCG, nice -n 10, timeout ${TIMEOUT}s); serial log $LOG"
BOOT0=$(date +%s.%N)
set +e
timeout --foreground -k 10 "$TIMEOUT" nice -n 10 "${QEMU[@]}" </dev/null 2>&1 |
    sed -u 's/\r$//' | tee "$LOG" |
    while IFS= read -r line; do
        if [ "$VERBOSE" = 1 ]; then
            say "| $line"
        else
            case "$line" in
            VM:* | VIRTUOS-VM-RESULT:* | *"Kernel panic"* | *"(XEN) Panic"* | *"BUG:"* | *Oops* | *"Xen version"*)
                say "| $line" ;;
            esac
        fi
    done
qrc=${PIPESTATUS[0]}
set -e
BOOT_S=$(awk -v a="$BOOT0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
say "QEMU exited with status $qrc after ${BOOT_S}s"

# ---------------------------------------------------------------- result
result=$(grep -a '^VIRTUOS-VM-RESULT:' "$LOG" | tail -n1 || true)
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    say "QEMU ran into the ${TIMEOUT}s timeout"
fi
say "harness wall time: $(elapsed)s (VM boot+test ${BOOT_S}s)"
case "$result" in
"VIRTUOS-VM-RESULT: PASS"*)
    say "xen-test: PASS"
    exit 0
    ;;
*)
    grep -a '^VM: FAIL' "$LOG" | sed 's/^/    /' || true
    say "xen-test: FAIL (${result:-no result line on the serial console; see $LOG})"
    exit 1
    ;;
esac
