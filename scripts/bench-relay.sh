#!/usr/bin/env bash
# End-to-end relay benchmark (issue 4, proof scenario (b)): `make bench` runs it after
# scripts/bench.sh; `make bench-relay` alone.
#
#   scripts/bench-relay.sh [--quick]
#
# N messages of 10 KB from C client connections (default 10,000 from 50) go into the server,
# which relays every one of them to Postfix's smtp-sink on 127.0.0.1; the clock runs from the
# first connection until the sink has counted all accepted messages. Servers, in the same run,
# interleaved (A B A B), medians reported:
#   - Postamt: user@bench.test is an alias of user@sink.test, which the transport map sends to
#     [127.0.0.1]:SINK (the queue, the remote transport, connection reuse, pipelining)
#   - Postfix: a private instance with relayhost = [127.0.0.1]:SINK, mynetworks = 127.0.0.0/8
# Writes bench/out/relay.md (also printed). Environment: BENCH_RELAY_N, BENCH_RELAY_CONNS,
# BENCH_RELAY_ROUNDS, BENCH_SIZE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then
	N=${BENCH_RELAY_N:-2000}; ROUNDS=${BENCH_RELAY_ROUNDS:-1}
else
	N=${BENCH_RELAY_N:-10000}; ROUNDS=${BENCH_RELAY_ROUNDS:-3}
fi
C=${BENCH_RELAY_CONNS:-50}
SIZE=${BENCH_SIZE:-10240}
OUT=$ROOT/bench/out
mkdir -p "$OUT"
log() { printf '[bench-relay %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

exec 9>/var/tmp/postamt-bench.lock
flock -w 1200 9 || { log "another benchmark holds the lock"; exit 1; }

[ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/postfix ] || bash scripts/install-test-deps.sh
WORK=$(mktemp -d /var/tmp/postamt-relay.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PF_CONF=""
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	[ -n "$PF_CONF" ] && postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

log "building"
mkdir -p "$WORK/bin"
for t in loadgen benchutil; do go build -o "$WORK/bin/$t" "./tools/$t"; done
go build -o "$WORK/bin/postamt" ./cmd/postamt
BIN=$WORK/bin

# sink_count FILE: the sink's latest message counter (smtp-sink -c writes "sess=.. quit=.. mesg=N\r")
sink_count() { tr '\r' '\n' <"$1" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }

start_sink() { # DIR PORT
	/usr/sbin/smtp-sink -u postfix -c -4 "127.0.0.1:$2" 1024 >"$1/sink.out" 2>&1 9>&- &
	SINK_PID=$!
	PIDS+=("$SINK_PID")
	"$BIN/benchutil" waitport -addr "127.0.0.1:$2" -timeout 30s >/dev/null
}

start_postamt() { # DIR PORT SINKPORT
	mkdir -p "$1/data"
	cat >"$1/postamt.toml" <<-EOF
		hostname = "postamt.bench.test"
		data_dir = "$1/data"
		[log]
		level = "warn"
		[smtp]
		listen = ["127.0.0.1:$2"]
		max_connections_per_ip = 1000
		[local]
		domains = ["bench.test"]
		mailboxes = ["postmaster@bench.test"]
		[local.aliases]
		"user@bench.test" = ["user@sink.test"]
		[outbound.transports]
		"sink.test" = "[127.0.0.1]:$3"
	EOF
	"$BIN/postamt" serve --config "$1/postamt.toml" >"$1/server.log" 2>&1 9>&- &
	SRV_PID=$!
	PIDS+=("$SRV_PID")
	"$BIN/benchutil" waitport -addr "127.0.0.1:$2" -timeout 30s >/dev/null
}

start_postfix() { # DIR PORT SINKPORT
	local d=$1
	mkdir -p "$d/conf" "$d/queue" "$d/data" "$d/log"
	chown postfix "$d/data"
	cp /usr/share/postfix/master.cf.dist "$d/conf/master.cf" 2>/dev/null || cp /etc/postfix/master.cf "$d/conf/master.cf"
	cat >"$d/conf/main.cf" <<-EOF
		compatibility_level = 3.6
		queue_directory = $d/queue
		data_directory = $d/data
		mail_owner = postfix
		setgid_group = postdrop
		myhostname = postfix.bench.test
		mydestination =
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mynetworks = 127.0.0.0/8
		relayhost = [127.0.0.1]:$3
		smtpd_relay_restrictions = permit_mynetworks, reject
		alias_maps =
		alias_database =
		maillog_file = $d/log/postfix.log
		smtpd_tls_security_level = none
		smtp_tls_security_level = none
		default_process_limit = 200
		smtpd_client_connection_count_limit = 1000
		smtpd_client_connection_rate_limit = 0
		in_flow_delay = 0s
		smtp_destination_concurrency_limit = 20
	EOF
	postconf -c "$d/conf" -M# smtp/inet
	postconf -c "$d/conf" -Me "127.0.0.1:$2/inet = 127.0.0.1:$2 inet n - n - - smtpd"
	postconf -c "$d/conf" -F '*/*/chroot = n'
	PF_CONF=$d/conf
	postfix -c "$d/conf" start >"$d/start.log" 2>&1 9>&-
	"$BIN/benchutil" waitport -addr "127.0.0.1:$2" -timeout 30s >/dev/null
	SRV_PID=$(tr -d ' \n' <"$d/queue/pid/master.pid")
}

stop_server() { # SERVER
	if [ "$1" = postfix ]; then
		postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
		PF_CONF=""
	else
		kill -TERM "$SRV_PID" 2>/dev/null || true
		wait "$SRV_PID" 2>/dev/null || true
	fi
	kill -TERM "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
run() { # SERVER ROUND
	local srv=$1 r=$2 d port sinkport
	d=$WORK/$srv-r$r
	mkdir -p "$d"
	local ports
	mapfile -t ports < <("$BIN/benchutil" freeport -n 2)
	port=${ports[0]} sinkport=${ports[1]}
	log "$srv round $r: $("$BIN/benchutil" quiet -max-busy 0.10 -window 1s -timeout 30s)"
	start_sink "$d" "$sinkport"
	"start_$srv" "$d" "$port" "$sinkport"
	local rcpt=user@bench.test
	[ "$srv" = postfix ] && rcpt=user@sink.test
	local t0 t1 accepted got
	t0=$(date +%s.%N)
	timeout 900 "$BIN/loadgen" -addr "127.0.0.1:$port" -c "$C" -n "$N" -size "$SIZE" -to "$rcpt" \
		-deadline 600s -timeout 60s -json >"$d/load.json" || log "$srv: loadgen exited non-zero"
	accepted=$(sed -n 's/.*"accepted": \([0-9]*\).*/\1/p' "$d/load.json")
	local deadline=$((SECONDS + 300))
	got=0
	while [ "$SECONDS" -lt "$deadline" ]; do
		got=$(sink_count "$d/sink.out")
		[ "${got:-0}" -ge "${accepted:-$N}" ] && break
		sleep 0.05
	done
	t1=$(date +%s.%N)
	stop_server "$srv"
	local rate
	rate=$(awk -v n="${got:-0}" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n/(b-a)}')
	log "$srv round $r: accepted ${accepted:-?}, sink got ${got:-0} in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b-a}')s: $rate msgs/s end to end"
	printf '%s\t%s\t%s\t%s\t%s\n' "$srv" "$r" "${accepted:-0}" "${got:-0}" "$rate" >>"$RESULTS"
	[ "${got:-0}" -ge "${accepted:-1}" ] || log "$srv round $r: INCOMPLETE (sink has ${got:-0} of ${accepted:-?})"
	[ "$srv" = postamt ] && cp "$d/server.log" "$OUT/relay-postamt-r$r.log" 2>/dev/null || true
	rm -rf "$d"
}

for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then order="postamt postfix"; else order="postfix postamt"; fi
	for s in $order; do run "$s" "$r"; done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f", (a[NR/2]+a[NR/2+1])/2}'; }
PA=$(awk -F'\t' '$1=="postamt" {print $5}' "$RESULTS" | median)
PF=$(awk -F'\t' '$1=="postfix" {print $5}' "$RESULTS" | median)
{
	echo "### End-to-end relay to smtp-sink ($MODE: $N x $((SIZE / 1024)) KB, $C connections, $ROUNDS round(s), median)"
	echo
	echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), Postamt $(git rev-parse --short HEAD), $(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	echo "| server | msgs/s end to end (sink received / time from first connection) | runs |"
	echo "| --- | ---: | --- |"
	echo "| Postamt | $PA | $(awk -F'\t' '$1=="postamt" {printf "%s ", $5}' "$RESULTS") |"
	echo "| Postfix | $PF | $(awk -F'\t' '$1=="postfix" {printf "%s ", $5}' "$RESULTS") |"
	echo
	echo "Ratio Postamt/Postfix: $(awk -v a="$PA" -v b="$PF" 'BEGIN {if (b>0) printf "%.2f", a/b; else print "n/a"}')"
} | tee "$OUT/relay.md"
