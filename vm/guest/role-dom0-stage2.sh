#!/bin/sh
# Stage 2 of the dom0 test: the Xen tools (xenstored, xenconsoled), a PV storage domU created
# with xl, and the xen backend across the two domains with the rendezvous through xenstore.
fails=""
fail() { echo "VM: FAIL: $*"; fails="$fails|$1"; }
ok() { echo "VM: ok: $*"; }
step() { echo "VM: == $* (t=$(cut -d' ' -f1 /proc/uptime)s)"; }
export PATH=$PATH:/usr/lib/xen-4.17/bin
domu_log=/var/log/xen/console/guest-storage.log
show_domu() {
    [ -f $domu_log ] && sed -e 's/\r$//' -e 's/^/VM: [domU] /' $domu_log | grep -a "VM: \[domU\] \(VM:\|xen_probe\|.*panic\|.*BUG\|.*session\|.*ERROR\|.*WARN\)"
}

step "stage 2: Xen tools in dom0"
mkdir -p /var/lib/xen /var/lib/xenstored /var/log/xen/console /run/xen /run/xenstored /var/lock
if xenstored --pid-file /run/xen/xenstored.pid; then
    ok "xenstored started"
else
    fail "xenstored" "xenstored did not start"; exit 1
fi
xen-init-dom0 >/tmp/init-dom0.out 2>&1 || { sed 's/^/VM: /' /tmp/init-dom0.out; fail "init-dom0" "xen-init-dom0 failed"; exit 1; }
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xen/xenconsoled.pid ||
    fail "xenconsoled" "xenconsoled did not start"
echo "VM: xenstore: dom0 name = $(xenstore-read /local/domain/0/name 2>&1)"

step "stage 2: xl create the storage domU"
t0=$(cut -d' ' -f1 /proc/uptime)
if xl create /etc/xen/storage.cfg >/tmp/xl.out 2>&1; then
    sed 's/^/VM: /' /tmp/xl.out
    domid=$(xl domid storage)
    ok "xl create: storage is dom$domid"
else
    sed 's/^/VM: /' /tmp/xl.out
    fail "xl-create" "xl create failed"; exit 1
fi
xl list 2>&1 | sed 's/^/VM: /'

step "stage 2: rendezvous through xenstore and the xen backend across domains"
if timeout 600 xen_probe connect "$domid" "${XEN_PROBE_ROUNDS:-1000}" >/tmp/connect.out 2>&1; then
    sed 's/^/VM: /' /tmp/connect.out
    ok "dom0 <-> dom$domid over grants and an interdomain event channel"
else
    rc=$?
    sed 's/^/VM: /' /tmp/connect.out
    fail "cross-domain" "xen_probe connect exited with $rc"
fi
step "stage 2: a transport session over Xen (ring protocol, Nop calls)"
if timeout 600 xen_probe ring-connect "$domid" "${XEN_PROBE_ROUNDS:-1000}" >/tmp/ring.out 2>&1; then
    sed 's/^/VM: /' /tmp/ring.out
    ok "Session::call over the xen backend, rendezvous through xenstore"
else
    rc=$?
    sed 's/^/VM: /' /tmp/ring.out
    fail "ring-session" "xen_probe ring-connect exited with $rc"
fi
step "stage 2: redirected file workload in dom0, served by virtuos-storage in dom$domid over Xen"
xen_bridge --listen /run/virtuos-xen.sock --domid "$domid" >/tmp/bridge.log 2>&1 &
bridge=$!
for i in $(seq 50); do [ -S /run/virtuos-xen.sock ] && break; sleep 0.2; done
R="virtuos-redirect run --storage /run/virtuos-xen.sock --mount /xen --"
mkdir -p /tmp/tree/a/b /tmp/tree/c
i=0
for f in a/one a/b/two a/b/three c/four five six; do
    i=$((i + 1))
    dd if=/dev/urandom of="/tmp/tree/$f" bs=1k count=$((i * i * 13 + 1)) 2>/dev/null
done
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/sums.in
echo "VM: tree: $(wc -l </tmp/sums.in) files, $(du -sk /tmp/tree | cut -f1) KiB"
w0=$(cut -d' ' -f1 /proc/uptime)
if $R /usr/bin/cp -r /tmp/tree /xen/tree >/tmp/w.out 2>&1; then ok "cp -r /tmp/tree /xen/tree (into the storage domain)"; else
    sed 's/^/VM: /' /tmp/w.out; fail "copy-in" "cp into /xen failed"; fi
$R /usr/bin/ls -lR /xen/tree 2>&1 | head -n 20 | sed 's/^/VM: /'
if $R /usr/bin/cp -r /xen/tree /tmp/back >/tmp/w.out 2>&1; then ok "cp -r /xen/tree /tmp/back (out of the storage domain)"; else
    sed 's/^/VM: /' /tmp/w.out; fail "copy-out" "cp out of /xen failed"; fi
(cd /tmp/back && find . -type f | sort | xargs sha256sum) >/tmp/sums.out
$R /usr/bin/sha256sum /xen/tree/a/one /xen/tree/six 2>&1 | sed 's/^/VM: /'
if cmp -s /tmp/sums.in /tmp/sums.out; then ok "checksums of the round trip match ($(wc -l </tmp/sums.out) files)"; else
    diff /tmp/sums.in /tmp/sums.out | sed 's/^/VM: /'; fail "checksums" "the tree changed on the round trip"; fi
sq=$($R /usr/bin/sqlite3 /xen/test.db "create table t(k integer primary key, v text); \
    with recursive n(i) as (select 1 union all select i + 1 from n where i < 2000) insert into t(v) select hex(randomblob(64)) from n; \
    create index tv on t(v); select count(*) from t; pragma integrity_check;" 2>&1)
echo "VM: sqlite3 /xen/test.db -> $(echo $sq)"
case "$(echo $sq)" in "2000 ok") ok "sqlite3 on the storage domain: 2000 rows, integrity_check ok" ;;
*) fail "sqlite" "sqlite3 on /xen: $sq" ;; esac
sq=$($R /usr/bin/sqlite3 /xen/test.db "pragma integrity_check; select count(*) from t;" 2>&1)
echo "VM: sqlite3 reopen -> $(echo $sq)"
[ "$(echo $sq)" = "ok 2000" ] || fail "sqlite-reopen" "reopened database: $sq"
$R /usr/bin/cp /dev/null /xen/.virtuos-vm-done 2>/dev/null
w1=$(cut -d' ' -f1 /proc/uptime)
echo "VM: workload time: $(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f", b - a }')s (guest clock)"
[ -s /tmp/bridge.log ] && sed 's/^/VM: bridge: /' /tmp/bridge.log | tail -n 20
kill $bridge 2>/dev/null
sleep 6
t1=$(cut -d' ' -f1 /proc/uptime)
echo "VM: domU create..probe done: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')s (guest clock)"
sleep 1
show_domu
xl destroy storage 2>&1 | sed 's/^/VM: /'

[ -z "$fails" ] && exit 0
echo "VM: stage 2 failures: ${fails#|}"
exit 1
