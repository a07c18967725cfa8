#!/usr/bin/env bash
# Installs what the lab needs on a fresh Debian machine, as root, and caches the slow part.
#
#   scripts/provision.sh            # Debian packages + Kubernetes 1.20.2 server and node binaries
#
# Kubernetes: only bookworm's `kubernetes` source package (1.20.5+really1.20.2) still carries the server
# code, so kube-apiserver, kube-controller-manager, kube-scheduler, and for real lab nodes kubelet,
# kube-proxy and the pause container's binary (static, from build/pause), are built from it once and
# cached in $FERRY_CACHE (default ~/.cache/ferry/k8s-1.20.2); only what is missing is built. A second run
# finds the cache and takes a second. The node runtime comes from Debian: containerd 1.6, runc, the CNI
# plugins, iptables (kube-proxy) and busybox-static (the lab's workload image).
set -euo pipefail

CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
K8S_DIR=$CACHE/k8s-1.20.2
BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[provision] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "provision: must run as root (it installs Debian packages and the lab creates network namespaces); fix: sudo make ..." >&2
  exit 1
fi

# --- Debian packages -------------------------------------------------------------------------------
PKGS=(etcd-server iproute2 iputils-ping nftables iperf3 wireguard-tools openssl procps psmisc ethtool conntrack bind9-dnsutils curl
  containerd runc containernetworking-plugins iptables busybox-static)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server's package starts a system etcd on 2379; the lab runs its own etcds, so keep that one off.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true; systemctl disable etcd >/dev/null 2>&1 || true
fi
pkill -x etcd -f 2>/dev/null && sleep 0.2 || true

# --- Kubernetes server binaries --------------------------------------------------------------------
# containerd's package may start a system containerd; the lab runs one per node with its own root, state
# and socket, so the system one is left alone (it shares nothing with them).
missing_bins=()
for b in "${BINS[@]}"; do [ -x "$K8S_DIR/$b" ] || missing_bins+=("$b"); done
need_pause=0; [ -x "$K8S_DIR/pause" ] || need_pause=1
if [ ${#missing_bins[@]} = 0 ] && [ $need_pause = 0 ]; then
  log "Kubernetes 1.20.2 binaries cached in $K8S_DIR"
  exit 0
fi

log "building Kubernetes 1.20.2 once: ${missing_bins[*]} $([ $need_pause = 1 ] && echo pause) (about 5-8 minutes per server binary on 2 cores); cache: $K8S_DIR"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go rsync dpkg-dev libc6-dev >/dev/null

work=$CACHE/build
rm -rf "$work"; mkdir -p "$work/lists/partial" "$work/src"
# A deb-src list derived from the machine's own apt source (never a hard-coded mirror), pinned to bookworm.
srclist=$work/sources.list.d; mkdir -p "$srclist"
src=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
if [ -n "$src" ]; then
  sed -e 's/^Types:.*/Types: deb-src/' "$src" >"$srclist/debsrc.sources"
else
  grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"$srclist/debsrc.list"
fi
APTOPT=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$srclist" -o "Dir::State::Lists=$work/lists")
log "fetching the deb-src index"
apt-get "${APTOPT[@]}" update -qq
cd "$work/src"
log "downloading the kubernetes source package (bookworm)"
apt-get "${APTOPT[@]}" source --download-only -qq kubernetes/bookworm 2>/dev/null \
  || apt-get "${APTOPT[@]}" source --download-only -qq kubernetes
dsc=$(ls kubernetes_*.dsc | head -n1)
log "unpacking $dsc"
dpkg-source --no-check -x "$dsc" tree >/dev/null
# reflect2 in vendor/ panics on every write under Go >= 1.18; swap in Debian's fixed copy.
log "replacing vendor/github.com/modern-go/reflect2 with Debian's golang-github-modern-go-reflect2-dev"
mkdir -p "$work/reflect2" && cd "$work/reflect2"
apt-get download -qq golang-github-modern-go-reflect2-dev
dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb x
r2=$(find x -type d -path '*github.com/modern-go/reflect2' | head -n1)
rm -rf "$work/src/tree/vendor/github.com/modern-go/reflect2"
cp -r "$r2" "$work/src/tree/vendor/github.com/modern-go/reflect2"
cd "$work/src/tree"
export GOFLAGS=-mod=vendor GOCACHE=$work/gocache GO111MODULE=on
for b in "${missing_bins[@]}"; do
  log "go build $b ($(date +%T))"
  make WHAT="cmd/$b" >"$work/make-$b.log" 2>&1 || { tail -n 40 "$work/make-$b.log" >&2; exit 1; }
done
mkdir -p "$K8S_DIR"
for b in "${missing_bins[@]}"; do
  out=$(find _output -type f -name "$b" -perm -u+x | head -n1)
  cp "$out" "$K8S_DIR/$b"
done
if [ $need_pause = 1 ]; then
  # the pause container's one process, as upstream builds it: static, so the image needs nothing else
  log "cc -static build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-ferry -o "$K8S_DIR/pause" build/pause/linux/pause.c
fi
cd /; rm -rf "$work"
log "done: $(ls "$K8S_DIR" | tr '\n' ' ')"
