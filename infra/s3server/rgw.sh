#!/usr/bin/env bash
# Single-node Ceph RADOS Gateway (S3) on loopback, for the test suite.
#
#   rgw.sh start    install packages if missing, (re)start mon + memstore osd + radosgw,
#                   create the S3 user, print an env block on stdout
#   rgw.sh stop     stop everything started from the state dir
#   rgw.sh status   say whether it runs
#
# Usage: eval "$(infra/s3server/rgw.sh start)"
# Everything except the env block goes to stderr.
set -euo pipefail

STATE_DIR=${ZAPGATE_RGW_DIR:-/tmp/zapgate-rgw}
RGW_PORT=${ZAPGATE_RGW_PORT:-7480}
ACCESS_KEY=${ZAPGATE_RGW_ACCESS_KEY:-zapgate}
SECRET_KEY=${ZAPGATE_RGW_SECRET_KEY:-zapgate-secret}
# Internal monitor port; the next free one is used if it is taken.
MON_PORT=${ZAPGATE_RGW_MON_PORT:-3300}
TIMEOUT=${ZAPGATE_RGW_TIMEOUT:-90}
REGION=us-east-1
ENDPOINT="http://127.0.0.1:${RGW_PORT}"

PACKAGES=(ceph-common ceph-mon ceph-osd radosgw curl procps)
CONF="$STATE_DIR/ceph.conf"
RGW_NAME=client.rgw.zapgate
# Stop order: gateway first, monitor last.
DAEMONS=("$RGW_NAME" osd.0 mon.a)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)

STARTING=0

log() { echo "rgw.sh: $*" >&2; }

die() {
    log "ERROR: $1"
    if [[ -n ${2:-} && -f $2 ]]; then
        log "--- last lines of $2 ---"
        tail -n 40 "$2" >&2
    fi
    if ((STARTING)); then
        STARTING=0
        log "stopping what was started (logs stay in $STATE_DIR/log)"
        cmd_stop || true
    fi
    exit 1
}

# Daemons fork into the background only once they reached the monitor; bound
# the wait for that (a radosgw that cannot authenticate waits 300 s otherwise).
launch() { timeout "$TIMEOUT" "$@" </dev/null; }

ceph_cli() { timeout 20 ceph -c "$CONF" --connect-timeout 10 "$@"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_file() { echo "$STATE_DIR/run/$1.pid"; }

# Prints the pid of a daemon if its pid file points at a live process.
daemon_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -n $pid ]] && alive "$pid" || return 1
    echo "$pid"
}

# wait_for <description> <log file> <command...>: retry until the command succeeds.
wait_for() {
    local what=$1 logfile=$2 deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${TIMEOUT}s" "$logfile"
        sleep 0.5
    done
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0

    local t0=$SECONDS
    log "installing ${missing[*]} (takes a few minutes the first time)"
    local apt=(apt-get -o DPkg::Lock::Timeout=300 -q)
    local install=(env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}")
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! "${install[@]}" >&2; then
        log "running apt-get update"
        "${apt[@]}" update >&2 || die "apt-get update failed"
        "${install[@]}" >&2 || die "apt-get install ${missing[*]} failed"
    fi
    log "packages installed in $((SECONDS - t0))s"
}

write_conf() {
    cat >"$CONF" <<EOF
[global]
fsid = $1
mon host = v2:127.0.0.1:${MON_PORT}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false

auth cluster required = none
auth service required = none
auth client required = none

run dir = $STATE_DIR/run
pid file = $STATE_DIR/run/\$name.pid
admin socket = $STATE_DIR/run/\$cluster-\$name.asok
log file = $STATE_DIR/log/\$name.log
mon cluster log file = $STATE_DIR/log/cluster.log
crash dir = $STATE_DIR/crash
keyring = $STATE_DIR/keyring

osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# Every pool radosgw creates is a monitor round trip; the default 1 s batching
# interval makes startup and the first bucket/object several seconds slower.
paxos propose interval = 0.05
# The state dir usually lives on /tmp; never let a full disk stop the monitor.
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = $STATE_DIR/mon/\$cluster-\$id

[osd]
osd data = $STATE_DIR/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = 4294967296

[$RGW_NAME]
rgw data = $STATE_DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:${RGW_PORT} tcp_nodelay=1
# radosgw defaults to "secure" mon connections, which auth none cannot provide
# (it then hangs for 300 s with "get_initial_auth_request returned -13").
ms mon client mode = crc
EOF
}

start_mon() {
    local fsid=$1 logfile="$STATE_DIR/log/mon.a.log"
    log "starting monitor on 127.0.0.1:$MON_PORT"
    {
        monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:${MON_PORT}]" "$STATE_DIR/monmap" &&
            ceph-authtool --create-keyring "$STATE_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' &&
            ceph-mon -c "$CONF" -i a --mkfs --monmap "$STATE_DIR/monmap" --keyring "$STATE_DIR/keyring"
    } >>"$logfile" 2>&1 || die "creating the monitor failed" "$logfile"
    launch ceph-mon -c "$CONF" -i a >>"$logfile" 2>&1 || die "ceph-mon failed to start" "$logfile"
    wait_for "ceph monitor" "$logfile" ceph_cli mon stat
}

start_osd() {
    local uuid id logfile="$STATE_DIR/log/osd.0.log"
    log "starting memstore osd"
    uuid=$(</proc/sys/kernel/random/uuid)
    # The same uuid must be registered with the monitor and written by --mkfs.
    id=$(ceph_cli osd create "$uuid" 2>>"$logfile") || die "ceph osd create failed" "$logfile"
    [[ $id == 0 ]] || die "expected osd id 0, got '$id'"
    mkdir -p "$STATE_DIR/osd/ceph-0"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$logfile" 2>&1 \
        || die "ceph-osd --mkfs failed" "$logfile"
    launch ceph-osd -c "$CONF" -i 0 >>"$logfile" 2>&1 || die "ceph-osd failed to start" "$logfile"
    wait_for "ceph osd" "$logfile" osd_is_up
}

osd_is_up() { ceph_cli osd dump | grep -q '^osd\.0 up'; }

start_rgw() {
    local logfile="$STATE_DIR/log/$RGW_NAME.log"
    log "starting radosgw on 127.0.0.1:$RGW_PORT"
    mkdir -p "$STATE_DIR/rgw"
    launch radosgw -c "$CONF" -n "$RGW_NAME" >>"$logfile" 2>&1 || die "radosgw failed to start" "$logfile"
    wait_for "radosgw" "$logfile" rgw_answers
}

# Anonymous GET / answers with an (empty) ListAllMyBucketsResult once the gateway is ready.
rgw_answers() { curl -sf --max-time 5 "$ENDPOINT/" | grep -q '<?xml'; }

create_user() {
    log "creating S3 user $ACCESS_KEY"
    timeout 60 radosgw-admin -c "$CONF" -n "$RGW_NAME" user create \
        --uid zapgate --display-name zapgate \
        --access-key "$ACCESS_KEY" --secret "$SECRET_KEY" >/dev/null \
        2>>"$STATE_DIR/log/radosgw-admin.log" \
        || die "radosgw-admin user create failed" "$STATE_DIR/log/radosgw-admin.log"
}

find_python_with_boto3() {
    local py
    for py in "$REPO_DIR/.venv/bin/python" python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import boto3' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

# A signed ListBuckets proves the credentials work; without boto3 fall back to
# an anonymous request that must still answer XML.
verify_s3() {
    local py
    if py=$(find_python_with_boto3); then
        log "verifying signed S3 request with $py"
        ZAPGATE_S3_ENDPOINT=$ENDPOINT ZAPGATE_S3_ACCESS_KEY=$ACCESS_KEY \
            ZAPGATE_S3_SECRET_KEY=$SECRET_KEY ZAPGATE_S3_REGION=$REGION \
            timeout 30 "$py" - >&2 <<'EOF' || die "signed S3 request failed" "$STATE_DIR/log/$RGW_NAME.log"
import os, boto3
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["ZAPGATE_S3_ENDPOINT"],
    aws_access_key_id=os.environ["ZAPGATE_S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["ZAPGATE_S3_SECRET_KEY"],
    region_name=os.environ["ZAPGATE_S3_REGION"],
)
s3.list_buckets()
EOF
    else
        log "boto3 not importable; verifying with curl"
        rgw_answers || die "S3 endpoint does not answer XML" "$STATE_DIR/log/$RGW_NAME.log"
    fi
}

env_block() {
    cat <<EOF
export ZAPGATE_S3_ENDPOINT=$ENDPOINT
export ZAPGATE_S3_ACCESS_KEY=$ACCESS_KEY
export ZAPGATE_S3_SECRET_KEY=$SECRET_KEY
export ZAPGATE_S3_REGION=$REGION
EOF
}

# True while the process exists and is not a zombie: PID 1 of some containers
# reaps orphans only every few seconds, so exited daemons linger as zombies.
alive() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $stat != Z* ]]
}

# terminate <pid>: SIGTERM, then SIGKILL if it is still running after 15 s.
terminate() {
    local pid=$1 deadline=$((SECONDS + 15))
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "pid $pid ignores SIGTERM, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 15))
        fi
        sleep 0.1
    done
}

cmd_stop() {
    local name pid pids=() strays=() deadline
    for name in "${DAEMONS[@]}"; do
        pid=$(daemon_pid "$name") || continue
        log "stopping $name (pid $pid)"
        pids+=("$pid")
    done
    # Processes started with our ceph.conf whose pid file is gone.
    for pid in $(pgrep -f -- "-c $CONF( |\$)" || true); do
        [[ " ${pids[*]} " == *" $pid "* ]] && continue
        log "stopping stray process $pid: $(ps -o args= -p "$pid" || true)"
        strays+=("$pid")
    done
    pids=("${strays[@]}" "${pids[@]}")
    if ((${#pids[@]} == 0)); then
        log "not running"
        return 0
    fi
    # One after the other: radosgw hangs on shutdown when the OSD goes away
    # under it, and the OSD waits for the monitor to acknowledge its shutdown.
    for pid in "${pids[@]}"; do
        terminate "$pid"
    done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
    done
    rm -f "$STATE_DIR"/run/*.pid
    log "stopped"
}

cmd_start() {
    local start=$SECONDS fsid
    install_packages
    cmd_stop
    port_in_use "$RGW_PORT" && die "port $RGW_PORT is taken by another program (set ZAPGATE_RGW_PORT)"
    while port_in_use "$MON_PORT"; do
        MON_PORT=$((MON_PORT + 1))
    done
    if [[ -d $STATE_DIR && ! -f $CONF && -n $(ls -A "$STATE_DIR") ]]; then
        die "$STATE_DIR is not empty and not an rgw.sh state dir; refusing to wipe it"
    fi
    STARTING=1

    rm -rf "$STATE_DIR"
    mkdir -p "$STATE_DIR"/{mon/ceph-a,osd,rgw,log,run,crash}
    fsid=$(</proc/sys/kernel/random/uuid)
    write_conf "$fsid"

    start_mon "$fsid"
    start_osd
    start_rgw
    create_user
    verify_s3

    STARTING=0
    env_block >"$STATE_DIR/env"
    log "S3 endpoint $ENDPOINT ready in $((SECONDS - start))s (env also in $STATE_DIR/env)"
    env_block
}

cmd_status() {
    local name pid down=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            down=1
        fi
    done
    if ((down == 0)) && rgw_answers; then
        echo "S3 endpoint $ENDPOINT: answering"
        return 0
    fi
    echo "S3 endpoint $ENDPOINT: not available"
    return 3
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
