#!/bin/sh
# The storage domU of vm/xen-test.sh stage 2: serves the cross-domain probe (grants pages to
# dom0, binds an unbound event channel for it, publishes both through xenstore, answers dom0's
# requests), then offers a real transport session through xenstore and answers its Nop calls
# (ring latency over Xen). Its console goes to xenconsoled's log in dom0, which dom0 prints.
echo "VM: storage domU: $(uname -r), clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
for d in gntalloc gntdev evtchn xenbus; do
    [ -e "/dev/xen/$d" ] && echo "VM: /dev/xen/$d present" || echo "VM: /dev/xen/$d missing"
done
timeout 900 xen_probe serve 4
echo "VM: xen_probe serve exited with $?"
timeout 900 xen_probe ring-serve
echo "VM: xen_probe ring-serve exited with $?"

# The storage domain proper: virtuos-storage exporting a tmpfs, serving dom0's sessions over
# Xen (requests through xenstore, grant-shared regions, event channels).
mkdir -p /export
mount -t tmpfs -o size=128m export /export
echo "VM: starting virtuos-storage --root /export --threads 1 --xen-peer 0"
NO_COLOR=1 RUST_LOG=info virtuos-storage --root /export --listen /run/storage.sock --threads 1 --xen-peer 0 2>&1 &
while sleep 5; do
    if [ -f /export/.virtuos-vm-done ]; then
        echo "VM: export after the workload: $(find /export -type f | wc -l) files, $(du -sk /export | cut -f1) KiB"
        rm -f /export/.virtuos-vm-done
    fi
done
