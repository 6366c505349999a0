#!/bin/busybox sh
# The Linux peer's init: PID 1 of the initramfs harness/src/linux.rs builds.
# It mounts the pseudo file systems, loads the virtio modules in the order
# /vt/modules gives (their dependencies first), runs the test's plan
# (/vt/plan.sh), and powers off. Every check prints "vt: NAME: start", then
# "vt: NAME: ok ..." or "vt: NAME: FAIL ..."; the last line is "vt: end".
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
export PATH=/bin:/vt

say() { echo "vt: $*"; }

# check NAME COMMAND...: runs COMMAND, reports its last line of output.
check() {
    name=$1
    shift
    say "$name: start"
    out=$("$@" 2>&1)
    rc=$?
    last=$(echo "$out" | tail -n 1)
    if [ "$rc" = 0 ]; then
        say "$name: ok $last"
    else
        say "$name: FAIL (exit $rc) $(echo "$out" | tr '\n' ' ')"
    fi
}

# wait_for PATH SECONDS: until PATH exists.
wait_for() {
    i=0
    while [ ! -e "$1" ] && [ "$i" -lt $(($2 * 10)) ]; do
        usleep 100000
        i=$((i + 1))
    done
    [ -e "$1" ]
}

for m in $(cat /vt/modules); do
    insmod "/lib/modules/$m.ko" || say "insmod $m: FAIL"
done
say "modules loaded"
. /vt/plan.sh
say "end"
sync
poweroff -f
