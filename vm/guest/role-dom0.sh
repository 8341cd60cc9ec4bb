#!/bin/sh
# The dom0 test of vm/xen-test.sh: Xen devices and the xen backend against them, then the BPF
# LSM programs of the ebpf crate loaded into this (Debian 6.1, lsm=...,bpf) kernel and each
# denying what it should. Prints `VIRTUOS-VM-RESULT: PASS` or `... FAIL (...)` at the end.
fails=""
fail() { echo "VM: FAIL: $*"; fails="$fails|$1"; }
ok() { echo "VM: ok: $*"; }
step() { echo "VM: == $* (t=$(cut -d' ' -f1 /proc/uptime)s)"; }

step "kernel and LSMs"
lsms=$(cat /sys/kernel/security/lsm 2>/dev/null)
echo "VM: /sys/kernel/security/lsm = $lsms"
echo "VM: /proc/cmdline = $(cat /proc/cmdline)"
echo "VM: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource), $(nproc) vCPU(s), $(awk '/MemTotal/ { print $2 / 1024 " MiB" }' /proc/meminfo)"
case ",$lsms," in
*,bpf,*) ok "BPF LSM is active" ;;
*) fail "lsm" "bpf missing from the active LSMs" ;;
esac
[ -r /sys/kernel/btf/vmlinux ] && ok "kernel BTF present" || fail "btf" "no /sys/kernel/btf/vmlinux"

step "Xen devices"
for d in gntalloc gntdev evtchn privcmd xenbus; do
    if [ -e "/dev/xen/$d" ]; then ok "/dev/xen/$d"; else
        case $d in gntalloc|gntdev|evtchn) fail "dev-$d" "/dev/xen/$d missing" ;; *) echo "VM: (no /dev/xen/$d)" ;; esac
    fi
done
[ -r /proc/xen/capabilities ] && echo "VM: /proc/xen/capabilities = $(cat /proc/xen/capabilities)"

step "xen backend probe (gntalloc -> gntdev, evtchn loopback, ping-pong)"
if timeout 300 xen_probe self 4 "${XEN_PROBE_ROUNDS:-1000}" >/tmp/probe.out 2>&1; then
    sed 's/^/VM: /' /tmp/probe.out
    ok "xen backend probe"
else
    rc=$?
    sed 's/^/VM: /' /tmp/probe.out
    fail "xen-probe" "xen_probe exited with $rc"
fi

step "BPF LSM: attach --enforce"
export VIRTUOS_BPF_OBJ=/opt/virtuos/bin/virtuos-ebpf.o
mkdir -p /export
mount -t tmpfs -o size=8m export /export
echo "the storage domain's data" >/export/data
mkdir -p /sys/fs/cgroup/app
if virtuos-redirect attach --cgroup /sys/fs/cgroup/app --enforce --export /export >/tmp/attach.out 2>&1; then
    sed 's/^/VM: /' /tmp/attach.out
    ok "attach --enforce"
else
    sed 's/^/VM: /' /tmp/attach.out
    fail "attach" "virtuos-redirect attach --enforce failed"
fi
# Each hook's state as the loader recorded it.
hook_state() { awk -v h="$1" '$2 == h { print $3; exit }' /tmp/attach.out; }
for h in lsm/socket_create lsm/file_open lsm_cgroup/socket_create; do
    s=$(hook_state "$h")
    if [ "$s" = active ]; then ok "$h active"; else fail "hook-$h" "$h is '${s:-missing}'"; fi
done
s=$(hook_state lsm/uring_allowed)
echo "VM: lsm/uring_allowed: ${s:-missing} (the uring_allowed LSM hook exists from Linux 6.16 on; this kernel is $(uname -r))"

step "status"
virtuos-redirect status >/tmp/status.out 2>&1
sed 's/^/VM: /' /tmp/status.out
for p in lsm_socket_create lsm_file_open lsm_cg_socket_create; do
    # Program names are truncated to 15 characters by the kernel.
    short=$(printf %.15s "$p")
    if grep -q "program $short .*attached" /tmp/status.out && ! grep -q "program $short .*not attached" /tmp/status.out; then
        ok "status: $p attached"
    else
        fail "status-$p" "status does not report $p attached"
    fi
done

# Runs "$@" inside the enforced cgroup.
incg() { sh -c 'echo $$ >/sys/fs/cgroup/app/cgroup.procs && exec "$@"' incg "$@"; }

counter() {
    virtuos-redirect top --once --json --interval-ms 10 >/tmp/top.json 2>&1
    grep -o "\"$1\":[0-9]*" /tmp/top.json | head -n1 | cut -d: -f2
}
pins=$(awk '/pinned under/ { print $NF }' /tmp/attach.out)
# sock_test NAME COUNTER: a direct AF_INET and AF_INET6 socket from the cgroup fail with EPERM,
# and COUNTER (the DENIED slot of the program expected to deny) went up.
sock_test() {
    before=$(counter "$2")
    out=$(incg timeout 10 nc 127.0.0.1 9 </dev/null 2>&1)
    echo "VM: inside the cgroup:  nc 127.0.0.1 9 -> $out"
    out6=$(incg timeout 10 nc ::1 9 </dev/null 2>&1)
    echo "VM: inside the cgroup:  nc ::1 9 -> $out6"
    after=$(counter "$2")
    echo "VM: DENIED[$2]: ${before:-0} -> ${after:-0}"
    case "$out" in *"socket: Operation not permitted"*) ;; *) fail "$1" "AF_INET socket not denied with EPERM: $out"; return ;; esac
    case "$out6" in *"socket: Operation not permitted"*) ;; *) fail "$1" "AF_INET6 socket not denied with EPERM: $out6"; return ;; esac
    if [ "${after:-0}" -ge $((${before:-0} + 2)) ]; then
        ok "$2 denied the AF_INET and AF_INET6 sockets (EPERM)"
    else
        fail "$1" "sockets denied, but not by $2"
    fi
}

step "denials: direct AF_INET socket"
out=$(timeout 10 nc 127.0.0.1 9 </dev/null 2>&1)
echo "VM: outside the cgroup: nc 127.0.0.1 9 -> ${out:-ok}"
case "$out" in *"not permitted"*) fail "sock-outside" "socket denied outside the enforced cgroup" ;; esac
# All hooks attached: the newest program on the socket_create trampoline runs first, so the
# lsm_cgroup one denies and the global one passes its verdict on.
sock_test sock-all lsm_cgroup_socket_create
# Each of the others alone: dropping a link's pin detaches it (the pin is its only holder).
rm -f "$pins/link_lsm_cg_socket_create"
echo "VM: detached lsm_cgroup/socket_create (removed its link pin)"
sock_test sock-lsm lsm_socket_create
rm -f "$pins/link_lsm_socket_create"
echo "VM: detached lsm/socket_create (removed its link pin)"
sock_test sock-cgroup sock_create

step "denials: direct open of the storage export"
out=$(cat /export/data 2>&1)
echo "VM: outside the cgroup: cat /export/data -> $out"
[ "$out" = "the storage domain's data" ] || fail "open-outside" "export unreadable outside the cgroup"
out=$(incg cat /export/data 2>&1)
echo "VM: inside the cgroup:  cat /export/data -> $out"
case "$out" in *"Operation not permitted"*) ok "open of the export denied with EPERM" ;;
*) fail "open-inside" "open of the export not denied: $out" ;; esac
out=$(incg cat /etc/virtuos-vm 2>&1)
echo "VM: inside the cgroup:  cat /etc/virtuos-vm -> $out"
case "$out" in virtuos*) ok "other files still open inside the cgroup" ;;
*) fail "open-other" "a file off the export was not readable: $out" ;; esac

step "denial counters"
for c in sock_create lsm_socket_create lsm_cgroup_socket_create lsm_file_open; do
    echo "VM: DENIED[$c] = $(counter $c)"
done
n=$(counter lsm_file_open)
if [ "${n:-0}" -ge 1 ]; then ok "lsm_file_open denied ${n} time(s)"; else fail "count-lsm_file_open" "lsm_file_open never denied"; fi

step "detach"
if virtuos-redirect detach --cgroup /sys/fs/cgroup/app >/tmp/detach.out 2>&1; then
    sed 's/^/VM: /' /tmp/detach.out
    out=$(incg cat /export/data 2>&1)
    [ "$out" = "the storage domain's data" ] && ok "after detach the export opens again" ||
        fail "after-detach" "still denied after detach: $out"
else
    sed 's/^/VM: /' /tmp/detach.out
    fail "detach" "detach failed"
fi

if [ -x /role-dom0-stage2.sh ]; then
    /role-dom0-stage2.sh || fails="$fails|stage2"
fi

if [ -z "$fails" ]; then
    echo "VIRTUOS-VM-RESULT: PASS (t=$(cut -d' ' -f1 /proc/uptime)s)"
    exit 0
fi
echo "VIRTUOS-VM-RESULT: FAIL (${fails#|})"
exit 1
