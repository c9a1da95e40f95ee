#!/usr/bin/env bash
# The reference for `cargo xtask bench mesh`: a mesh provisioned the way a typical hand-rolled
# launcher does it, with the same base images: cloud-localds seeds, a genisoimage repo image,
# qemu-img overlays, an `ip` bridge and taps in a namespace, QEMU, then ping and SSH polling
# one node after another. Prints "launched S", "ready S" and "teardown S" (seconds).
#
# usage: reference-launcher.sh WORKDIR REPO_DIR X86_IMAGE_DIR AARCH_IMAGE_DIR N_X86 N_AARCH
set -euo pipefail
work=$1 repo=$2 x86=$3 arm=$4 nx=$5 na=$6
ns=vmref$$
start=$(date +%s.%N)
elapsed() { awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.2f", a - b }'; }
mkdir -p "$work"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
genisoimage -quiet -r -J -V repo -o "$work/repo.iso" "$repo"

ip netns add "$ns"
cleanup() {
  for p in "$work"/*.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 10.99.0.1/24 dev br0
ip -n "$ns" link set br0 up

i=0
nodes=()
launch() {
  local arch=$1 img=$2
  i=$((i + 1))
  local name=n$i addr=10.99.0.$((i + 1)) mac tap=rtap$i
  mac=$(printf '52:54:00:99:00:%02x' "$i")
  cat > "$work/$name-user-data" <<UD
#cloud-config
hostname: $name
disable_root: false
ssh_authorized_keys: [$(cat "$work/key.pub")]
UD
  printf 'instance-id: %s\nlocal-hostname: %s\n' "$name" "$name" > "$work/$name-meta-data"
  cat > "$work/$name-net" <<NC
version: 2
ethernets:
  eth0:
    match: {macaddress: "$mac"}
    set-name: eth0
    addresses: [$addr/24]
NC
  cloud-localds -N "$work/$name-net" "$work/$name-seed.iso" "$work/$name-user-data" "$work/$name-meta-data"
  qemu-img create -q -f qcow2 -F qcow2 -b "$img/disk.qcow2" "$work/$name.qcow2"
  ip -n "$ns" tuntap add dev "$tap" mode tap
  ip -n "$ns" link set "$tap" master br0 up
  local qemu machine cpu console
  if [ "$arch" = x86_64 ]; then
    qemu=qemu-system-x86_64 machine=q35 cpu=max console=ttyS0
  else
    qemu=qemu-system-aarch64 machine=virt cpu=max,pauth-impdef=on console=ttyAMA0
  fi
  ip netns exec "$ns" "$qemu" -machine "$machine" -accel tcg -cpu "$cpu" -m 1024 -smp 1 \
    -nodefaults -display none -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=LABEL=vmroot rw console=$console" \
    -drive "file=$work/$name.qcow2,if=virtio,format=qcow2" \
    -drive "file=$work/$name-seed.iso,if=virtio,format=raw,readonly=on" \
    -drive "file=$work/repo.iso,if=virtio,format=raw,readonly=on" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$mac" \
    -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0 \
    -serial "file:$work/$name.log" -daemonize -pidfile "$work/$name.pid"
  nodes+=("$addr")
}
for _ in $(seq 1 "$nx"); do launch x86_64 "$x86"; done
for _ in $(seq 1 "$na"); do launch aarch64 "$arm"; done
echo "launched $(elapsed)"

for addr in "${nodes[@]}"; do
  until ip netns exec "$ns" ping -c 1 -W 1 "$addr" >/dev/null 2>&1; do sleep 1; done
  until ip netns exec "$ns" ssh -i "$work/key" -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o BatchMode=yes -o LogLevel=ERROR \
      "root@$addr" true 2>/dev/null; do sleep 2; done
done
echo "ready $(elapsed)"

td=$(date +%s.%N)
cleanup
trap - EXIT
echo "teardown $(awk -v a="$(date +%s.%N)" -v b="$td" 'BEGIN { printf "%.2f", a - b }')"
