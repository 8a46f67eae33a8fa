#!/usr/bin/env bash
# Postamt benchmark harness: `make bench` (full) and `make bench-quick`.
#
#   scripts/bench.sh [--quick] [--servers "postamt postfix mailpit smtp-sink"]
#   scripts/bench.sh --sandbox [--quick]   # the sandbox against Mailpit (see below)
#
# Measures, in one run and on 127.0.0.1 high ports only:
#   - smtp-sink (Postfix's test sink: the protocol/client ceiling of this machine)
#   - the fsync rate of 10 KB files in the data directories' file system
#   - Postfix, as a private instance in a temp directory (virtual(8) -> Maildir)
#   - Postamt (bin/postamt, config generated from docs/contract.md)
#   - Mailpit (accept rate only: it stores, it does not deliver)
# Throughput scenarios (10 KB messages at 10 and 50 connections) are run in
# rounds, servers interleaved within each round, reported as medians; plus
# 5,000 idle connections against Postamt for memory per connection.
# Writes bench/out/results.md (also printed) and bench/out/throughput.png.
# See docs/benchmarks.md.
#
# --sandbox compares `postamt sandbox` with Mailpit: the throughput rounds above
# with servers "postamt-sandbox mailpit" (scenario c), then, on fresh servers,
# resident memory after 10,000 and 100,000 stored 10 KB messages, search
# latency and the UI's list API time (tools/sandboxbench; BENCH_SANDBOX_STEPS
# overrides "10000,100000"). Writes bench/out/sandbox.md.
#
# Environment overrides: BENCH_N (messages per run), BENCH_ROUNDS, BENCH_CONNS
# ("10 50"), BENCH_SIZE (bytes), BENCH_IDLE (idle connections), BENCH_HOLD
# (e.g. 15s), BENCH_SERVERS.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=full
SERVERS_ARG=""
SANDBOX=0
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) MODE=quick ;;
	--full) MODE=full ;;
	--servers) SERVERS_ARG=$2; shift ;;
	--sandbox) SANDBOX=1 ;;
	-h | --help) sed -n '2,28p' "$0"; exit 0 ;;
	*) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

if [ "$MODE" = quick ]; then
	N=${BENCH_N:-2000}; ROUNDS=${BENCH_ROUNDS:-1}; HOLD=${BENCH_HOLD:-5s}; FSYNC_DUR=2s; WARMUP=0; QUIET_WAIT=5s
else
	N=${BENCH_N:-20000}; ROUNDS=${BENCH_ROUNDS:-3}; HOLD=${BENCH_HOLD:-15s}; FSYNC_DUR=5s; WARMUP=1; QUIET_WAIT=60s
fi
CONNS=${BENCH_CONNS:-"10 50"}
SIZE=${BENCH_SIZE:-10240}
IDLE=${BENCH_IDLE:-5000}
SERVERS=${SERVERS_ARG:-${BENCH_SERVERS:-"postamt postfix mailpit smtp-sink"}}
if [ "$SANDBOX" = 1 ] && [ -z "$SERVERS_ARG" ]; then SERVERS="postamt-sandbox mailpit"; fi
MAILPIT_VERSION=v1.33.1
RCPT=user@bench.test
# bounds: no single load run may take longer than this, nor a delivery wait
LOAD_DEADLINE=600s
DELIVERY_TIMEOUT=$((120 + N / 50))s

OUT=$ROOT/bench/out
BIN=$ROOT/bin
T_START=$(date +%s)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# one benchmark at a time on this machine (two would measure each other)
exec 9>/var/tmp/postamt-bench.lock
if ! flock -n 9; then
	log "another bench.sh is running; waiting for it (at most 20 minutes)"
	flock -w 1200 9 || { log "gave up waiting for the other bench.sh"; exit 1; }
fi

# ------------------------------------------------------------------ cleanup
WORK=""
CHILD_PIDS=()     # processes this script started (servers, monitors)
PF_CONFS=()       # Postfix instances this script started
cleanup() {
	local rc=$?
	set +e
	for c in "${PF_CONFS[@]}"; do
		[ -f "$c/main.cf" ] && postfix -c "$c" stop >/dev/null 2>&1
	done
	for p in "${CHILD_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	sleep 0.5
	for p in "${CHILD_PIDS[@]}"; do
		kill -KILL "$p" 2>/dev/null
	done
	[ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() { # drop a pid from CHILD_PIDS once it is gone
	local keep=() p
	for p in "${CHILD_PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
	CHILD_PIDS=("${keep[@]}")
}

# wait_gone PID SECONDS: wait for a process to exit (bounded)
wait_gone() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

rm -rf "$OUT/runs" "$OUT/warmup" "$OUT/unavailable" "$OUT/logs" "$OUT"/idle-*.json "$OUT"/fsync-*.json "$OUT"/sandbox*.json "$OUT/sandbox.md" \
	"$OUT/results.md" "$OUT/throughput.png" "$OUT/chart.tsv" "$OUT/machine.md"
mkdir -p "$OUT/runs" "$OUT/warmup" "$OUT/unavailable" "$OUT/logs" "$BIN"

unavailable() { # server reason
	log "$1 unavailable: $2"
	printf '%s\n' "$2" >"$OUT/unavailable/$1.txt"
}
is_unavailable() { [ -f "$OUT/unavailable/$1.txt" ]; }
want() { [[ " $SERVERS " == *" $1 "* ]]; }

# ------------------------------------------------------------------ install
install_postfix() {
	if [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-sink ]; then return 0; fi
	log "installing postfix (debconf: No configuration, so no system instance starts)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix >"$OUT/logs/apt.log" 2>&1; then
		log "install failed; apt-get update and retry"
		apt-get update >>"$OUT/logs/apt.log" 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix >>"$OUT/logs/apt.log" 2>&1 || return 1
	fi
	[ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-sink ]
}

if want postfix || want smtp-sink; then
	if ! install_postfix; then
		unavailable postfix "apt-get install postfix failed (see bench/out/logs/apt.log)"
		unavailable smtp-sink "apt-get install postfix failed (smtp-sink ships with it)"
	fi
fi

MAILPIT=$BIN/mailpit
if want mailpit; then
	if ! go version -m "$MAILPIT" 2>/dev/null | grep -q "mod.*github.com/axllent/mailpit.*$MAILPIT_VERSION"; then
		log "installing mailpit $MAILPIT_VERSION into bin/ (go install)"
		if ! (cd /tmp && GOBIN="$BIN" nice go install "github.com/axllent/mailpit@$MAILPIT_VERSION") >"$OUT/logs/mailpit-install.log" 2>&1; then
			unavailable mailpit "go install github.com/axllent/mailpit@$MAILPIT_VERSION failed: $(tail -1 "$OUT/logs/mailpit-install.log")"
		fi
	fi
fi

log "building the harness tools"
for t in loadgen benchutil benchchart sandboxbench; do
	go build -o "$BIN/$t" "./tools/$t"
done
if want postamt || want postamt-sandbox; then
	log "building bin/postamt"
	if ! go build -o "$BIN/postamt" ./cmd/postamt >"$OUT/logs/postamt-build.log" 2>&1; then
		unavailable postamt "pending: \`go build -o bin/postamt ./cmd/postamt\` failed: $(head -c 300 "$OUT/logs/postamt-build.log" | tr '\n' ' ')"
	fi
fi

# idle connections need two descriptors per connection on this machine
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d /var/tmp/postamt-bench.XXXXXX)
chmod 755 "$WORK"

# run private copies: bin/ is shared with whoever else builds in this tree,
# and a binary replaced in the middle of the rounds would mix two versions
mkdir -p "$WORK/bin"
for b in loadgen benchutil benchchart sandboxbench postamt mailpit; do
	if [ -x "$BIN/$b" ]; then cp "$BIN/$b" "$WORK/bin/$b"; fi
done
POSTAMT_SHA=$(sha256sum "$WORK/bin/postamt" 2>/dev/null | cut -c1-12 || true)
BIN=$WORK/bin
MAILPIT=$BIN/mailpit

# ------------------------------------------------------------------ machine facts
{
	echo "Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  "
	echo "Machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)  "
	echo "Data directories: $WORK on $(findmnt -n -T "$WORK" -o FSTYPE,SOURCE 2>/dev/null | tr -s ' ') ($(findmnt -n -T "$WORK" -o OPTIONS 2>/dev/null | cut -d, -f1-3))  "
	echo "Software: $(go version | cut -d' ' -f3-4)"\
		"; Postfix $(postconf -d -h mail_version 2>/dev/null || echo n/a)"\
		"; Mailpit $(go version -m "$MAILPIT" 2>/dev/null | awk '$1=="mod" {print $3}' || echo n/a)"\
		"; Postamt $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -z "$(git status --porcelain -- cmd internal go.mod go.sum 2>/dev/null)" ] || echo ' + uncommitted changes') (binary sha256 ${POSTAMT_SHA:-n/a})  "
	echo "Load average when the bench started: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures).  "
	echo "Load generator and servers share the machine (client CPU is listed per run)."
} >"$OUT/machine.md"
cat "$OUT/machine.md" >&2

# ------------------------------------------------------------------ fsync ceiling
log "disk: $("$BIN/benchutil" quiet -max-busy 0.10 -window 1s -timeout "$QUIET_WAIT")"
log "disk: fsync rate of ${SIZE}-byte files ($FSYNC_DUR each)"
for w in 1 50; do
	"$BIN/benchutil" fsync -dir "$WORK" -writers $w -size "$SIZE" -duration "$FSYNC_DUR" -out "$OUT/fsync-w$w.json"
	"$BIN/benchutil" fsync -dir "$WORK" -writers $w -size "$SIZE" -duration "$FSYNC_DUR" -dirsync -out "$OUT/fsync-w$w-dirsync.json"
done

# ------------------------------------------------------------------ servers
# start_<server> DIR PORT sets SRV_PID (the process tree root to measure),
# SRV_MAILDIR (the new/ directory to wait on, or "") and SRV_LOG.
SRV_PID=""; SRV_MAILDIR=""; SRV_LOG=""; SRV_STOP=""

start_postamt() {
	local d=$1 port=$2
	mkdir -p "$d/data"
	cat >"$d/postamt.toml" <<-EOF
		hostname = "postamt.bench.test"
		data_dir = "$d/data"

		[log]
		format = "text"
		level  = "info"

		[smtp]
		listen = ["127.0.0.1:$port"]
		max_message_size = "25MiB"
		max_connections = $((IDLE + 1000))
		max_connections_per_ip = $((IDLE + 1000))

		[queue]
		delivery_workers = 64

		[local]
		domains = ["bench.test"]
		mailboxes = ["$RCPT"]
		transport = "maildir"
	EOF
	SRV_LOG=$d/postamt.log
	"$BIN/postamt" serve --config "$d/postamt.toml" >"$SRV_LOG" 2>&1 9>&- &
	SRV_PID=$!
	CHILD_PIDS+=("$SRV_PID")
	local i
	for ((i = 0; i < 300; i++)); do
		grep -q 'msg=ready' "$SRV_LOG" 2>/dev/null && break
		kill -0 "$SRV_PID" 2>/dev/null || { log "postamt exited: $(tail -3 "$SRV_LOG")"; return 1; }
		sleep 0.1
	done
	"$BIN/benchutil" waitport -addr "127.0.0.1:$port" -timeout 30s >/dev/null || return 1
	SRV_MAILDIR=$d/data/mail/bench.test/user/new
	SRV_STOP="stop_pid"
}

stop_pid() {
	kill -TERM "$SRV_PID" 2>/dev/null || true
	if ! wait_gone "$SRV_PID" 30; then
		log "pid $SRV_PID did not stop within 30s; SIGKILL"
		kill -KILL "$SRV_PID" 2>/dev/null || true
	fi
	wait "$SRV_PID" 2>/dev/null || true
	forget_pid "$SRV_PID"
}

PF_CONF=""
start_postfix() {
	local d=$1 port=$2
	mkdir -p "$d/conf" "$d/queue" "$d/data" "$d/mail" "$d/log"
	chown postfix "$d/data"
	chown nobody:nogroup "$d/mail"
	cp /usr/share/postfix/master.cf.dist "$d/conf/master.cf" 2>/dev/null || cp /etc/postfix/master.cf "$d/conf/master.cf"
	cat >"$d/conf/main.cf" <<-EOF
		# private benchmark instance, written by scripts/bench.sh
		compatibility_level = 3.6
		queue_directory = $d/queue
		data_directory = $d/data
		mail_owner = postfix
		setgid_group = postdrop
		myhostname = postfix.bench.test
		mydomain = bench.test
		myorigin = \$myhostname
		mydestination =
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mynetworks = 127.0.0.0/8
		relayhost =
		smtpd_banner = \$myhostname ESMTP
		biff = no
		append_dot_mydomain = no
		alias_maps =
		alias_database =
		smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
		message_size_limit = 26214400
		smtpd_tls_security_level = none
		smtp_tls_security_level = none
		maillog_file = $d/log/postfix.log
		# delivery: virtual(8) into Maildir (trailing slash in the map = Maildir)
		virtual_mailbox_domains = bench.test
		virtual_mailbox_base = $d/mail
		virtual_mailbox_maps = texthash:$d/conf/vmailbox
		virtual_uid_maps = static:$(id -u nobody)
		virtual_gid_maps = static:$(getent group nogroup | cut -d: -f3)
		# rate limits lifted
		default_process_limit = 200
		smtpd_client_connection_count_limit = 1000
		smtpd_client_connection_rate_limit = 0
		smtpd_client_message_rate_limit = 0
		smtpd_client_recipient_rate_limit = 0
		in_flow_delay = 0s
		virtual_destination_concurrency_limit = 64
	EOF
	echo "$RCPT bench.test/user/" >"$d/conf/vmailbox"
	postconf -c "$d/conf" -M# smtp/inet
	postconf -c "$d/conf" -Me "127.0.0.1:$port/inet = 127.0.0.1:$port inet n - n - - smtpd"
	postconf -c "$d/conf" -F '*/*/chroot = n'
	PF_CONF=$d/conf
	PF_CONFS+=("$PF_CONF")
	SRV_LOG=$d/log/postfix.log
	if ! postfix -c "$d/conf" start >"$d/start.log" 2>&1 9>&-; then
		log "postfix start failed: $(tail -3 "$d/start.log") $(tail -3 "$SRV_LOG" 2>/dev/null)"
		return 1
	fi
	local i
	for ((i = 0; i < 100; i++)); do
		[ -s "$d/queue/pid/master.pid" ] && break
		sleep 0.1
	done
	SRV_PID=$(tr -d ' \n' <"$d/queue/pid/master.pid")
	"$BIN/benchutil" waitport -addr "127.0.0.1:$port" -timeout 30s >/dev/null || return 1
	SRV_MAILDIR=$d/mail/bench.test/user/new
	SRV_STOP="stop_postfix"
}

stop_postfix() {
	postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
	if ! wait_gone "$SRV_PID" 30; then
		log "postfix did not stop within 30s; postfix abort"
		postfix -c "$PF_CONF" abort >/dev/null 2>&1 || true
		wait_gone "$SRV_PID" 10 || true
	fi
	local keep=() c
	for c in "${PF_CONFS[@]}"; do [ "$c" != "$PF_CONF" ] && keep+=("$c"); done
	PF_CONFS=("${keep[@]}")
}

# postamt sandbox: the same binary and pipeline, capturing instead of delivering
start_postamt-sandbox() {
	local d=$1 port=$2
	mkdir -p "$d/data"
	SANDBOX_HTTP=127.0.0.1:$("$BIN/benchutil" freeport -n 1 -from 59000 -to 60999)
	cat >"$d/postamt.toml" <<-EOF
		mode = "sandbox"
		hostname = "postamt.bench.test"
		data_dir = "$d/data"

		[smtp]
		listen = ["127.0.0.1:$port"]
		max_message_size = "25MiB"

		[sandbox]
		http_listen = "$SANDBOX_HTTP"
		max_messages = 0
	EOF
	SRV_LOG=$d/postamt.log
	"$BIN/postamt" serve --config "$d/postamt.toml" >"$SRV_LOG" 2>&1 9>&- &
	SRV_PID=$!
	CHILD_PIDS+=("$SRV_PID")
	local i
	for ((i = 0; i < 300; i++)); do
		grep -q 'msg=ready' "$SRV_LOG" 2>/dev/null && break
		kill -0 "$SRV_PID" 2>/dev/null || { log "postamt sandbox exited: $(tail -3 "$SRV_LOG")"; return 1; }
		sleep 0.1
	done
	"$BIN/benchutil" waitport -addr "127.0.0.1:$port" -timeout 30s >/dev/null || return 1
	SRV_MAILDIR=""
	SRV_STOP="stop_pid"
}

start_mailpit() {
	local d=$1 port=$2 uiport
	uiport=$("$BIN/benchutil" freeport -n 1 -from 59000 -to 60999)
	SANDBOX_HTTP=127.0.0.1:$uiport
	SRV_LOG=$d/mailpit.log
	"$MAILPIT" --smtp "127.0.0.1:$port" --listen "127.0.0.1:$uiport" --database "$d/mailpit.db" \
		--max 0 --disable-version-check --smtp-disable-rdns --log-file "$SRV_LOG" >"$d/mailpit.out" 2>&1 9>&- &
	SRV_PID=$!
	CHILD_PIDS+=("$SRV_PID")
	"$BIN/benchutil" waitport -addr "127.0.0.1:$port" -timeout 30s >/dev/null || return 1
	SRV_MAILDIR=""
	SRV_STOP="stop_pid"
}

start_smtp-sink() {
	local d=$1 port=$2
	SRV_LOG=$d/smtp-sink.log
	/usr/sbin/smtp-sink -u postfix -4 -m 1000 "127.0.0.1:$port" 1024 >"$SRV_LOG" 2>&1 9>&- &
	SRV_PID=$!
	CHILD_PIDS+=("$SRV_PID")
	"$BIN/benchutil" waitport -addr "127.0.0.1:$port" -timeout 30s >/dev/null || return 1
	SRV_MAILDIR=""
	SRV_STOP="stop_pid"
}

cpu_busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# run_one SERVER CONNS ROUND N DESTDIR: one measured run on a fresh server
run_one() {
	local srv=$1 c=$2 r=$3 n=$4 dest=$5
	local tag="$srv-c$c-r$r" d port
	d=$WORK/$tag
	mkdir -p "$d"
	port=$("$BIN/benchutil" freeport -n 1)
	# let the previous run's writeback and other sessions' bursts settle (bounded)
	log "$tag: $("$BIN/benchutil" quiet -max-busy 0.10 -window 1s -timeout "$QUIET_WAIT")"
	SRV_PID=""; SRV_MAILDIR=""; SRV_STOP=""
	if ! "start_$srv" "$d" "$port"; then
		log "$tag: $srv did not start"
		[ -n "$SRV_STOP" ] || SRV_STOP=stop_pid
		[ -n "$SRV_PID" ] && "$SRV_STOP"
		cp "$SRV_LOG" "$OUT/logs/$tag.log" 2>/dev/null || true
		return 1
	fi
	# the monitor takes its baseline, then the load starts
	rm -f "$d/procmon.ready"
	"$BIN/benchutil" procmon -pid "$SRV_PID" -interval 200ms -max 20m -out "$d/proc.json" -ready-file "$d/procmon.ready" &
	local pm=$!
	CHILD_PIDS+=("$pm")
	local i
	for ((i = 0; i < 100; i++)); do [ -f "$d/procmon.ready" ] && break; sleep 0.05; done
	local j0 j1
	j0=$(cpu_busy_jiffies)
	log "$tag: $n x $SIZE B over $c connections to 127.0.0.1:$port"
	timeout 900 "$BIN/loadgen" -addr "127.0.0.1:$port" -c "$c" -n "$n" -size "$SIZE" -to "$RCPT" \
		-deadline "$LOAD_DEADLINE" -timeout 60s -json >"$d/load.json" || log "$tag: loadgen exited non-zero"
	local delivery=null
	if [ -n "$SRV_MAILDIR" ]; then
		local start_ns accepted
		start_ns=$(sed -n 's/.*"start_unix_nano": \([0-9]*\).*/\1/p' "$d/load.json")
		accepted=$(sed -n 's/.*"accepted": \([0-9]*\).*/\1/p' "$d/load.json")
		"$BIN/benchutil" maildirwait -dir "$SRV_MAILDIR" -want "${accepted:-$n}" -start-nano "${start_ns:-0}" \
			-timeout "$DELIVERY_TIMEOUT" -out "$d/delivery.json"
		delivery=$(cat "$d/delivery.json")
	fi
	j1=$(cpu_busy_jiffies)
	kill -TERM "$pm" 2>/dev/null || true
	wait "$pm" 2>/dev/null || true
	forget_pid "$pm"
	"$SRV_STOP"
	cp "$SRV_LOG" "$OUT/logs/$tag.log" 2>/dev/null || true
	{
		printf '{"server": "%s", "conns": %d, "round": %d, "machine_busy_cpu_s": %s,\n' "$srv" "$c" "$r" \
			"$(awk -v a="$j0" -v b="$j1" 'BEGIN {printf "%.2f", (b-a)/100}')"
		printf '"load": %s,\n"proc": %s,\n"delivery": %s}\n' "$(cat "$d/load.json")" "$(cat "$d/proc.json" 2>/dev/null || echo null)" "$delivery"
	} >"$dest/$tag.json"
	grep -E '"(msgs_per_sec|latency_p99_ms|error_total)"' "$d/load.json" | tr -d ' \n' >&2
	[ "$delivery" != null ] && grep -E '"(delivered_per_sec|complete)"' "$d/delivery.json" | tr -d ' \n' >&2
	echo >&2
	rm -rf "$d"
}

ACTIVE=()
for s in $SERVERS; do
	is_unavailable "$s" || ACTIVE+=("$s")
done
log "servers: ${ACTIVE[*]:-none}; mode $MODE: $N messages per run, $ROUNDS round(s), connections: $CONNS"

if [ "$WARMUP" -gt 0 ]; then
	for s in "${ACTIVE[@]}"; do
		run_one "$s" 10 0 $((N / 10)) "$OUT/warmup" || true
	done
fi

for ((r = 1; r <= ROUNDS; r++)); do
	order=("${ACTIVE[@]}")
	if ((r % 2 == 0)); then # even rounds run the servers in reverse order
		order=()
		for ((k = ${#ACTIVE[@]} - 1; k >= 0; k--)); do order+=("${ACTIVE[$k]}"); done
	fi
	for c in $CONNS; do
		for s in "${order[@]}"; do
			run_one "$s" "$c" "$r" "$N" "$OUT/runs" || true
		done
	done
done

# ------------------------------------------------------------------ idle connections
if [[ " ${ACTIVE[*]} " == *" postamt "* ]] && [ "$IDLE" -gt 0 ]; then
	d=$WORK/idle-postamt
	mkdir -p "$d"
	port=$("$BIN/benchutil" freeport -n 1)
	log "idle: $("$BIN/benchutil" quiet -max-busy 0.10 -window 1s -timeout "$QUIET_WAIT")"
	if start_postamt "$d" "$port"; then
		sleep 1
		"$BIN/benchutil" rss -pid "$SRV_PID" >"$d/before.json"
		log "idle: $IDLE connections held for $HOLD against postamt"
		rm -f "$d/ready"
		timeout 300 "$BIN/loadgen" -addr "127.0.0.1:$port" -idle "$IDLE" -hold "$HOLD" -ready-file "$d/ready" \
			-timeout 30s -deadline 240s -json >"$d/idle.json" &
		lg=$!
		for ((i = 0; i < 1800; i++)); do [ -f "$d/ready" ] && break; kill -0 $lg 2>/dev/null || break; sleep 0.1; done
		sleep 1
		"$BIN/benchutil" rss -pid "$SRV_PID" >"$d/during.json"
		wait $lg || log "idle loadgen exited non-zero"
		stop_pid
		cp "$SRV_LOG" "$OUT/logs/idle-postamt.log" 2>/dev/null || true
		printf '{"server": "postamt", "conns": %d,\n"before": %s,\n"during": %s,\n"load": %s}\n' "$IDLE" \
			"$(cat "$d/before.json")" "$(cat "$d/during.json")" "$(cat "$d/idle.json")" >"$OUT/idle-postamt.json"
	else
		log "idle: postamt did not start"
		[ -n "$SRV_PID" ] && stop_pid
	fi
fi

# ------------------------------------------------------------------ sandbox store
# memory after N stored messages, search and list latency (--sandbox)
sandbox_store_bench() {
	local s d port steps=${BENCH_SANDBOX_STEPS:-10000,100000}
	[ "$MODE" = quick ] && steps=${BENCH_SANDBOX_STEPS:-2000,10000}
	for s in "${ACTIVE[@]}"; do
		d=$WORK/store-$s
		mkdir -p "$d"
		port=$("$BIN/benchutil" freeport -n 1)
		log "store $s: $("$BIN/benchutil" quiet -max-busy 0.10 -window 1s -timeout "$QUIET_WAIT")"
		SRV_PID=""; SRV_STOP=""
		if ! "start_$s" "$d" "$port"; then
			log "store $s: did not start"
			[ -n "$SRV_PID" ] && stop_pid
			continue
		fi
		log "store $s: filling to $steps messages of $SIZE B over 50 connections"
		timeout 3600 "$BIN/sandboxbench" -kind "${s%-sandbox}" -smtp "127.0.0.1:$port" -http "http://$SANDBOX_HTTP" \
			-pid "$SRV_PID" -steps "$steps" -c 50 -size "$SIZE" -out "$OUT/sandbox-$s.json" || log "store $s: sandboxbench failed"
		"$SRV_STOP"
		cp "$SRV_LOG" "$OUT/logs/store-$s.log" 2>/dev/null || true
		rm -rf "$d"
	done
	{
		echo "## Sandbox store: memory, search, list"
		echo
		echo "| Server | messages | fill msg/s (50 conns) | RSS MiB | search p50 ms | search p90 ms | median hits | from: p50 ms | list API p50 ms |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		for s in "${ACTIVE[@]}"; do
			[ -f "$OUT/sandbox-$s.json" ] || continue
			python3 - "$s" "$OUT/sandbox-$s.json" <<-'PY'
				import json, sys
				r = json.load(open(sys.argv[2]))
				for st in r["steps"]:
				    print("| %s | %d | %.0f | %.1f | %.1f | %.1f | %.0f | %.1f | %.1f |" % (sys.argv[1], st["messages"], st["fill_msgs_per_sec"],
				        st["rss_mib"], st["search_p50_ms"], st["search_p90_ms"], st["search_median_hits"], st["from_search_p50_ms"], st["list_p50_ms"]))
			PY
		done
		echo
		echo "Search terms are words present in a few percent of the messages (first page of 50 plus the total count); from: searches one of 10,000 senders. RSS is read once, 3 s after the last message was stored."
	} >"$OUT/sandbox.md"
	cat "$OUT/sandbox.md" >&2
}
if [ "$SANDBOX" = 1 ]; then
	sandbox_store_bench
fi

# ------------------------------------------------------------------ report
gzip -f "$OUT"/logs/*.log 2>/dev/null || true
"$BIN/benchutil" report -dir "$OUT" -mode "$MODE"
"$BIN/benchchart" -in "$OUT/chart.tsv" -out "$OUT/throughput.png" \
	-title "SMTP THROUGHPUT, $((SIZE / 1024)) KB MESSAGES ($MODE)"
log "done in $(($(date +%s) - T_START))s: $OUT/results.md, $OUT/throughput.png"
