# shellcheck shell=bash
# The commands on a ground: up, down, status, kubeconfig, env (build and bin-dir are in build.sh).
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

cmd_up() {
  local start_ns want_live=${ORRERY_GROUND_LIVE:-}
  case ${1:-} in
    "") ;;
    --live) want_live=1 ;;
    *) die "usage: e2e/ground up [--live]" ;;
  esac
  start_ns=$(date +%s%N)
  command -v curl >/dev/null || die "curl is needed to probe the components"
  command -v openssl >/dev/null || die "openssl is needed for the tenant etcd's certificates"
  cmd_build
  load_ground
  require_port_base
  bin=$(bin_dir)
  if [ "$want_live" = 1 ] && ! $live; then
    [ ! -f "$state/pki.done" ] ||
      die "ground '$ground' was set up without the live tier: 'e2e/ground down --purge' it first, or use another ORRERY_GROUND"
    enable_live
  fi
  mkdir -p "$state/logs" "$state/pids" "$state/data"
  ensure_pki
  ensure_tenant_pki

  start_etcd
  start_tenant_etcd
  start_apiserver
  wait_for 30 "healthy" etcd etcd_healthy
  wait_for 120 "ready" kube-apiserver api_ready
  ensure_admin_binding
  start_controller_manager
  start_scheduler
  start_kwok
  ensure_nodes
  wait_for 60 "healthy" kube-controller-manager kcm_healthy
  wait_for 60 "healthy" kube-scheduler scheduler_healthy
  wait_for 60 "healthy" kwok kwok_healthy
  wait_for 60 "all $node_count nodes Ready" kwok nodes_ready
  wait_for 60 "the default ServiceAccount made" kube-controller-manager default_service_account
  wait_for 30 "healthy" tenant-etcd tenant_healthy
  ensure_tenant_auth
  wait_for 30 "healthy with authentication" tenant-etcd tenant_healthy
  if $live; then up_live; fi

  local ms=$((($(date +%s%N) - start_ns) / 1000000))
  say "ground '$ground' is up at $api_url in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
  say "use it with: eval \"\$(e2e/ground env)\""
}

cmd_down() {
  local purge=false
  case ${1:-} in
    "") ;;
    --purge) purge=true ;;
    *) die "usage: e2e/ground down [--purge]" ;;
  esac
  load_ground
  if [ -d "$state/pids" ]; then
    if $live; then bin=$(locate_bin); fi
    stop_all
  fi
  if $purge && [ -d "$state" ]; then
    rm -rf "${state:?}"
    say "ground '$ground' stopped and its state deleted"
  else
    say "ground '$ground' stopped"
  fi
}

cmd_status() {
  load_ground
  require_port_base
  [ -d "$state" ] || die "ground '$ground' was never set up: run 'e2e/ground up'"
  local c pid all=0
  for c in "${components[@]}"; do
    if pid=$(running_pid "$c"); then
      printf '%-24s %-8s running\n' "$c" "$pid"
    else
      pid=$(cat "$(pid_file "$c")" 2>/dev/null || echo -)
      printf '%-24s %-8s stopped\n' "$c" "$pid"
      all=1
    fi
  done
  printf '%-24s %s\n' apiserver "$api_url"
  if $live; then
    printf '%-24s %s\n' live-node "$live_node at $node_ip (pods $live_pod_cidr, DNS $live_dns_ip)"
    printf '%-24s %s\n' containerd-socket "$containerd_sock"
  fi
  return "$all"
}

cmd_kubeconfig() {
  load_ground
  [ -f "$kubeconfigs/admin.conf" ] || die "ground '$ground' was never set up: run 'e2e/ground up'"
  echo "$kubeconfigs/admin.conf"
}

# Shell exports for this ground; works before `up` (it then names paths that `up` fills).
cmd_env() {
  load_ground
  require_port_base
  bin=$(locate_bin)
  export_line KUBECONFIG "$kubeconfigs/admin.conf"
  export_line ORRERY_GROUND "$ground"
  export_line ORRERY_GROUND_BIN "$bin"
  export_line ORRERY_GROUND_STATE "$state"
  export_line ORRERY_GROUND_API "$api_url"
  export_line ORRERY_TENANT_ETCD_ENDPOINT "$tenant_url"
  export_line ORRERY_TENANT_ETCD_DIR "$tenant"
  export_line ORRERY_CSI_SANITY "$(locate_csi_sanity)"
  if $live; then
    export_line ORRERY_GROUND_LIVE 1
    export_line ORRERY_GROUND_NODE "$live_node"
    export_line ORRERY_GROUND_NODE_IP "$node_ip"
    export_line ORRERY_GROUND_CONTAINERD_SOCK "$containerd_sock"
    export_line CONTAINER_RUNTIME_ENDPOINT "unix://$containerd_sock"
    export_line ORRERY_GROUND_LIVE_BIN "$(cat "$live_dir/live-bin" 2>/dev/null || true)"
  fi
  export_line PATH "$bin:$PATH"
}

export_line() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }
