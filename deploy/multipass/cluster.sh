#!/usr/bin/env bash
# A multi-node rkube cluster on multipass VMs, the way k3s clusters are built:
#
#   deploy/multipass/cluster.sh up [--agents N] [--rkube PATH] [--image IMAGE] [--prefix NAME]
#   deploy/multipass/cluster.sh down [--prefix NAME]
#
# `up` launches <prefix>-server and <prefix>-agent-1..N with cloud-init.yaml, installs the
# rkube binary (PATH, default target/release/rkube, else target/debug/rkube: build it
# with `cargo build --release -p deploy`) and the systemd units from deploy/systemd/,
# starts `rkube server` on the first VM, joins the agents with its token, and writes
# ./<prefix>.kubeconfig for kubectl on this machine. `down` deletes the VMs.
#
# The binary runs inside the VMs, so it must suit their architecture and C library: one
# built on Debian 12 or Ubuntu 22.04+ runs on the default image (Ubuntu 24.04).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
action="${1:-}"
[ $# -gt 0 ] && shift
agents=2
prefix=rkube
image=24.04
rkube=""
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) agents="$2"; shift 2 ;;
    --rkube) rkube="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

server="$prefix-server"
agent_names() { for i in $(seq 1 "$agents"); do echo "$prefix-agent-$i"; done; }

install_rkube() {
  local vm="$1"
  multipass transfer "$rkube" "$vm:/tmp/rkube"
  multipass transfer "$repo/deploy/systemd/rkube-server.service" "$repo/deploy/systemd/rkube-agent.service" "$vm:/tmp/"
  multipass exec "$vm" -- sudo install -m 0755 /tmp/rkube /usr/local/bin/rkube
  multipass exec "$vm" -- sudo install -m 0644 /tmp/rkube-server.service /tmp/rkube-agent.service /etc/systemd/system/
  multipass exec "$vm" -- sudo mkdir -p /etc/rkube
  multipass exec "$vm" -- sudo systemctl daemon-reload
}

vm_ip() {
  multipass info "$1" --format csv | awk -F, 'NR == 2 { print $3 }'
}

case "$action" in
  up)
    if [ -z "$rkube" ]; then
      for candidate in "$repo/target/release/rkube" "$repo/target/debug/rkube"; do
        if [ -x "$candidate" ]; then rkube="$candidate"; break; fi
      done
    fi
    [ -n "$rkube" ] && [ -x "$rkube" ] || { echo "cluster.sh: no rkube binary; build it with: cargo build --release -p deploy" >&2; exit 1; }
    command -v multipass >/dev/null || { echo "cluster.sh: multipass is not installed (https://multipass.run)" >&2; exit 1; }

    echo "launching $server and $agents agents ($image)"
    multipass launch "$image" --name "$server" --cpus 2 --memory 2G --disk 10G --cloud-init "$here/cloud-init.yaml"
    for vm in $(agent_names); do
      multipass launch "$image" --name "$vm" --cpus 1 --memory 1G --disk 8G --cloud-init "$here/cloud-init.yaml"
    done

    install_rkube "$server"
    server_ip="$(vm_ip "$server")"
    # The apiserver's certificate names the server's address; the VM's name too, for
    # kubeconfigs that use it.
    multipass exec "$server" -- sudo sh -c "echo 'RKUBE_SERVER_ARGS=--tls-san $server' > /etc/rkube/server.env"
    multipass exec "$server" -- sudo systemctl enable --now rkube-server
    echo "waiting for the server's join token"
    for _ in $(seq 1 120); do
      if multipass exec "$server" -- sudo test -s /var/lib/rkube/server/token; then break; fi
      sleep 1
    done
    token="$(multipass exec "$server" -- sudo cat /var/lib/rkube/server/token)"

    for vm in $(agent_names); do
      install_rkube "$vm"
      multipass exec "$vm" -- sudo sh -c "umask 077; printf 'RKUBE_SERVER=https://%s:6443\nRKUBE_TOKEN=%s\n' '$server_ip' '$token' > /etc/rkube/agent.env"
      multipass exec "$vm" -- sudo systemctl enable --now rkube-agent
    done

    kubeconfig="$PWD/$prefix.kubeconfig"
    multipass exec "$server" -- sudo cat /var/lib/rkube/admin.kubeconfig \
      | sed "s#server: https://[^ ]*#server: https://$server_ip:6443#" > "$kubeconfig"
    chmod 600 "$kubeconfig"
    echo "waiting for $((agents + 1)) nodes to be Ready"
    for _ in $(seq 1 180); do
      ready="$(KUBECONFIG="$kubeconfig" kubectl get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)"
      [ "$ready" -ge $((agents + 1)) ] && break
      sleep 2
    done
    KUBECONFIG="$kubeconfig" kubectl get nodes -o wide
    echo
    echo "export KUBECONFIG=$kubeconfig"
    ;;
  down)
    multipass delete --purge "$server" $(multipass list --format csv | awk -F, -v p="$prefix-agent-" 'index($1, p) == 1 { print $1 }') 2>/dev/null || true
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
