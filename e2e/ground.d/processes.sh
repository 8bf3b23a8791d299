# shellcheck shell=bash
# Starting, watching and stopping the ground's processes.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

pid_file() { printf '%s/pids/%s.pid\n' "$state" "$1"; }

# The program a component runs as: every one is a link to a built binary.
component_program() {
  case $1 in
    tenant-etcd) echo etcd ;;
    *) echo "$1" ;;
  esac
}

# Where a component's program is: the ground's build, but containerd comes from Debian.
component_path() {
  case $1 in
    containerd) command -v containerd ;;
    *) echo "$bin/$(component_program "$1")" ;;
  esac
}

# One argument that only this component of this ground has on its command line. PIDs are
# reused, so a PID counts as the component only if the process still carries this argument.
component_marker() {
  case $1 in
    etcd) echo "--data-dir=$state/data/etcd" ;;
    tenant-etcd) echo "--data-dir=$state/data/tenant-etcd" ;;
    kube-apiserver) echo "--tls-cert-file=$pki/apiserver.crt" ;;
    kube-controller-manager) echo "--kubeconfig=$kubeconfigs/controller-manager.conf" ;;
    kube-scheduler) echo "--kubeconfig=$kubeconfigs/scheduler.conf" ;;
    kwok) echo "--config=$state/kwok.yaml" ;;
    containerd) echo "--config=$live_dir/containerd.toml" ;;
    kubelet) echo "--config=$live_dir/kubelet.yaml" ;;
    kube-proxy) echo "--config=$live_dir/kube-proxy.yaml" ;;
    *) die "unknown component $1" ;;
  esac
}

# Whether a PID is a running process of the component: its argv[0] names the component's
# program and its arguments hold the component's marker. An exited process that nobody has
# reaped yet (a zombie) is not running.
is_component_process() { # pid component
  local pid=$1 stat args
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] || return 1
  mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
  ((${#args[@]} > 1)) || return 1
  [ "$(basename "${args[0]}")" = "$(component_program "$2")" ] || return 1
  local arg marker
  marker=$(component_marker "$2")
  for arg in "${args[@]:1}"; do [ "$arg" = "$marker" ] && return 0; done
  return 1
}

# Prints the PID of a component that runs; fails if it does not.
running_pid() { # component
  local file pid
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  is_component_process "$pid" "$1" || return 1
  echo "$pid"
}

# Components this `up` started or found running; they must stay alive while `up` waits.
watched=()

# Starts a component unless it runs already. setsid gives it its own session, so it outlives
# this script and a Ctrl-C in the terminal. A child of a non-interactive shell is never a
# process group leader, so setsid execs in place and $! is the component's own PID.
start() { # component args...
  local c=$1 program pid
  shift
  watched+=("$c")
  if pid=$(running_pid "$c"); then
    say "$c runs (pid $pid)"
    return
  fi
  program=$(component_path "$c")
  if [ "$c" = containerd ]; then
    # PID 1 of a PID namespace of its own, which its hostPID containers share: KubeVirt's
    # virt-handler reaches the host through /proc/1/root and /proc/1/ns/mnt, and this machine's
    # own PID 1 is closed to us. Its /proc must show that namespace (containerd names its own
    # threads there), so it gets a mount namespace too, whose shared mounts ("/", the kubelet
    # root, /run/kubevirt: kubevirt.sh) stay peers of the host's. The recorded PID is containerd's.
    setsid unshare --pid --fork --kill-child --mount --propagation unchanged --mount-proc -- \
      "$program" "$(component_marker "$c")" "$@" </dev/null >"$state/logs/$c.log" 2>&1 &
    pid=$(forked_child $!) || fail_component "$c" "did not start"
  else
    setsid "$program" "$(component_marker "$c")" "$@" </dev/null >"$state/logs/$c.log" 2>&1 &
    pid=$!
  fi
  echo "$pid" >"$(pid_file "$c")"
  say "$c started (pid $pid)"
}

# The PID of the one child a process forks, once it is there (up to 5 s).
forked_child() { # pid
  local i child
  for ((i = 0; i < 50; i++)); do
    child=$(pgrep -P "$1" | head -1 || true)
    [ -n "$child" ] && { echo "$child"; return 0; }
    sleep 0.1
  done
  return 1
}

fail_component() { # component reason
  say "$1 $2; last 30 lines of $state/logs/$1.log:"
  tail -n 30 "$state/logs/$1.log" >&2 || true
  die "$1 $2 (the other components still run: 'e2e/ground down' stops them)"
}

# Polls a check until it passes. Meanwhile every watched component must stay alive: one that
# exits fails `up` at once with its log. On timeout the blamed component's log is shown.
wait_for() { # seconds what blamed-component check...
  local timeout=$1 what=$2 blamed=$3 deadline c
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    for c in "${watched[@]}"; do
      running_pid "$c" >/dev/null || fail_component "$c" "exited"
    done
    ((SECONDS < deadline)) || fail_component "$blamed" "did not get $what within ${timeout}s"
    sleep 0.3
  done
}

# Stops the recorded processes: SIGTERM, up to 10 s of grace, then SIGKILL.
stop_all() {
  if $live; then stop_live; fi
  stop_components "${components[@]}"
  rm -f "$state"/pids/*.pid
}

# Stops the given components, all at once: SIGTERM, up to 10 s of grace, then SIGKILL.
stop_components() { # component...
  local c pid pids=() names=() deadline i
  for c in "$@"; do
    if pid=$(running_pid "$c"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$c")
    fi
  done
  deadline=$((SECONDS + 10))
  for i in "${!pids[@]}"; do
    while is_component_process "${pids[$i]}" "${names[$i]}" && ((SECONDS < deadline)); do sleep 0.1; done
    if is_component_process "${pids[$i]}" "${names[$i]}"; then
      say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 10s: killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      while is_component_process "${pids[$i]}" "${names[$i]}"; do sleep 0.1; done
    fi
    say "${names[$i]} stopped (pid ${pids[$i]})"
  done
}
