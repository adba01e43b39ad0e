#!/bin/bash
# loyd's benchmarks (`make bench`): ingest beside a bare libuv ceiling, processing of a backlog,
# write-back efficiency under Bitrix24's limits, memory and start-up per tenant, and rule cost.
# Every number is measured in this run; the results replace the generated part of
# docs/BENCHMARKS.md.  BENCH_QUICK=1 runs shorter phases (a smoke run, not for the docs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build}
LOYD=$ROOT/$BUILD/loyd
CEILING=$ROOT/$BUILD/bench/ceiling
RULES=$ROOT/$BUILD/bench/rules_bench
QUICK=${BENCH_QUICK:-0}
DUR=${BENCH_SECONDS:-10}          # seconds per ingest measurement
EVENTS=${BENCH_EVENTS:-100000}    # processing backlog
WB_EVENTS=${BENCH_WB_EVENTS:-1500} # write-back backlog (events; two write-backs each)
MAX_TENANTS=${BENCH_TENANTS:-1000}
if [ "$QUICK" = 1 ]; then DUR=3; EVENTS=5000; WB_EVENTS=300; MAX_TENANTS=100; fi
ONLY=${BENCH_ONLY:-1234}          # phases to run, e.g. BENCH_ONLY=4 (the doc is then not written)
want() { case "$ONLY" in *"$1"*) return 0 ;; *) return 1 ;; esac; }

TOKEN=51856fefc120afa4b628cc82d3935cce
MEMBER=a223c6b3710f85df22e9377d6c4f7553
CODE=w3bh00kc0de12345
WORK=$(mktemp -d /tmp/loyd-bench-XXXXXX)
RESULTS=$WORK/results.md
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }

# ---- helpers ------------------------------------------------------------------------------

# wait_port LOG PATTERN: the port a process printed in LOG, by a sed pattern with one group.
wait_port() {
    local log=$1 pat=$2 port=""
    for _ in $(seq 1 400); do
        port=$(sed -n "$pat" "$log" 2>/dev/null | head -1)
        [ -n "$port" ] && { echo "$port"; return 0; }
        sleep 0.05
    done
    echo "bench: no port in $log:" >&2
    tail -5 "$log" >&2
    return 1
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k { print $2; exit }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
emu_call() {
    local body=${3:-}
    [ -n "$body" ] || body='{}'
    curl -s -X POST -H 'Content-Type: application/json' -d "$body" \
        "http://127.0.0.1:$1/rest/1/$CODE/$2.json"
}
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" | head -1; }
now_ms() { date +%s%3N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
verdict() { # verdict MEASURED OP TARGET  (OP: ge or le)
    awk -v m="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == "ge") ? (m >= t) : (m <= t)
        if (ok) print "met"; else printf "missed (%.2fx %s)\n", (op == "ge" ? t / m : m / t), \
            (op == "ge" ? "short" : "over") }'
}
row() { printf '| %s | %s | %s | %s | %s |\n' "$@" >> "$RESULTS"; }

start_emulator() { # start_emulator DIR RATE_JSON -> EPORT
    local d=$1
    mkdir -p "$d"
    cat > "$d/emu.json" <<EOF
{"webhook_code": "$CODE", "application_token": "$TOKEN", "member_id": "$MEMBER",
 "rate": $2, "operating_limit_ms": 1000000000000, "max_events": 10}
EOF
    (cd "$d" && exec "$LOYD" emulate bitrix24 --listen 127.0.0.1:0 --options emu.json) \
        2> "$d/emu.log" &
    PIDS+=($!)
    EPID=$!
    EPORT=$(wait_port "$d/emu.log" 's/.*emulator bitrix24 listening on 127.0.0.1:\([0-9]*\).*/\1/p')
}

# write_daemon DIR N_TENANTS REST(0|1) [CRM_EXTRA]
write_daemon() {
    local d=$1 n=$2 rest=$3 extra=${4:-}
    mkdir -p "$d/tenants.d"
    cat > "$d/loyd.conf" <<EOF
listen = "127.0.0.1:0"
store = "loyd.db"
tenants = "tenants.d"
packs = "$ROOT/rules"
log_level = "notice"
worker = { sync_on_start = false, sweep_interval_ms = 0 }
EOF
    rm -f "$d"/tenants.d/*.conf
    local crm="application_token = \"$TOKEN\", member_id = \"$MEMBER\""
    [ "$rest" = 1 ] && crm="$crm, webhook_url = \"http://127.0.0.1:$EPORT/rest/1/$CODE/\"$extra"
    for i in $(seq 1 "$n"); do
        local name=shop; [ "$n" -gt 1 ] && name=t$i
        printf 'connector = "bitrix24"\npack = "retail"\ntimezone = "Europe/Moscow"\ncrm = { %s }\n' \
            "$crm" > "$d/tenants.d/$name.conf"
    done
}
start_daemon() { # start_daemon DIR -> DPORT DPID STARTUP_MS
    local d=$1 t0
    : > "$d/loyd.log"
    t0=$(now_ms)
    (cd "$d" && exec "$LOYD" serve -c loyd.conf) 2>> "$d/loyd.log" &
    DPID=$!
    PIDS+=($DPID)
    DPORT=$(wait_port "$d/loyd.log" 's/.*listening on 127.0.0.1:\([0-9]*\) .*/\1/p')
    STARTUP_MS=$(( $(now_ms) - t0 ))
}
stop_daemon() { kill -TERM "$DPID"; wait "$DPID" 2>/dev/null || true; }

wrk_run() { # wrk_run PORT CONNS SECONDS PATH [MAX_ID] -> RESULT line
    local threads=2
    [ "$2" -lt 2 ] && threads=1
    wrk -t"$threads" -c"$2" -d"$3"s --latency -s "$ROOT/bench/hook.lua" \
        "http://127.0.0.1:$1" -- "$4" "$threads" "${5:-0}" 2>&1 | grep '^RESULT'
}
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }

# ---- the machine --------------------------------------------------------------------------

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
CORES=$(nproc)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
KERNEL=$(uname -r)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
WRKV=$( (wrk --version 2>&1 || true) | head -1 | awk '{ print $1, $2 }')
say "loyd benchmarks on $CPU, $CORES cores, $MEM, Linux $KERNEL ($COMMIT)"
: > "$RESULTS"

# ---- 1. ingest ----------------------------------------------------------------------------
if want 1; then

say "1/5 ingest: wrk on loopback, ${DUR}s per point; the bare libuv server first, then loyd"
"$CEILING" 0 > "$WORK/ceiling.out" &
PIDS+=($!)
CPID=$!
CPORT=$(wait_port "$WORK/ceiling.out" 's/^port \([0-9]*\)/\1/p')
declare -A C_RPS L_RPS L_P50 L_P99 L_BAD
for c in 1 16 256; do
    r=$(wrk_run "$CPORT" "$c" "$DUR" /)
    C_RPS[$c]=$(( $(echo "$r" | field requests) * 1000000 / $(echo "$r" | field duration_us) ))
    note "ceiling  c=$c: ${C_RPS[$c]} requests/s"
done
kill "$CPID"

write_daemon "$WORK/ingest" 1 0
start_daemon "$WORK/ingest"
for c in 1 16 256; do
    r=$(wrk_run "$DPORT" "$c" "$DUR" /hooks/shop)
    L_RPS[$c]=$(( $(echo "$r" | field requests) * 1000000 / $(echo "$r" | field duration_us) ))
    L_P50[$c]=$(echo "$r" | field p50_us)
    L_P99[$c]=$(echo "$r" | field p99_us)
    L_BAD[$c]=$(( $(echo "$r" | field bad_status) + $(echo "$r" | field socket_errors) ))
    note "loyd     c=$c: ${L_RPS[$c]} webhooks/s, p50 ${L_P50[$c]} us, p99 ${L_P99[$c]} us," \
         "${L_BAD[$c]} not 200"
done
DEPTH=$(metric "$DPORT" loyd_inbox_depth)
note "inbox rows committed: $DEPTH"
stop_daemon

{
    echo "### Ingest (durable: the inbox row is committed, fsync'd, before the 200)"
    echo
    echo "wrk ($WRKV), ${DUR} s per point, $( [ "$CORES" -ge 2 ] && echo 2 || echo 1) threads, on the same $CORES cores as the server."
    echo "Each request is a realistic ONCRMDEALUPDATE form body (~330 bytes) with its own deal ID."
    echo
    echo "| connections | loyd webhooks/s | p50 | p99 | not 200 | bare libuv server req/s | loyd / ceiling |"
    echo "|---|---|---|---|---|---|---|"
    for c in 1 16 256; do
        echo "| $c | ${L_RPS[$c]} | $(ratio "${L_P50[$c]}" 1000) ms | $(ratio "${L_P99[$c]}" 1000) ms | ${L_BAD[$c]} | ${C_RPS[$c]} | $(awk -v a="${L_RPS[$c]}" -v b="${C_RPS[$c]}" 'BEGIN { printf "%.0f%%", 100 * a / b }') |"
    done
    echo
    echo "Inbox rows committed during the run: $DEPTH."
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| >= 50,000 webhooks/s at 256 connections | ${L_RPS[256]} | $(verdict "${L_RPS[256]}" ge 50000) |"
    echo "| p99 < 10 ms at 256 connections | $(ratio "${L_P99[256]}" 1000) ms | $(verdict "${L_P99[256]}" le 10000) |"
    echo "| >= 40% of the ceiling at 256 connections | $(awk -v a="${L_RPS[256]}" -v b="${C_RPS[256]}" 'BEGIN { printf "%.0f%%", 100 * a / b }') | $(verdict "$(awk -v a="${L_RPS[256]}" -v b="${C_RPS[256]}" 'BEGIN { print a / b }')" ge 0.40) |"
    echo
} >> "$RESULTS"
fi

# ---- 2. processing ------------------------------------------------------------------------
if want 2; then

say "2/5 processing: $EVENTS stored webhooks, each a won deal read from the emulator"
start_emulator "$WORK/proc" '{"drain": 1000000, "burst": 1000000}'
CONTACTS=$(( EVENTS / 10 ))
t0=$(now_ms)
emu_call "$EPORT" loyd.emu.seed "{\"contacts\": $CONTACTS, \"deals\": 10, \"amount\": \"1000.00\"}" > /dev/null
note "emulator seeded: $CONTACTS contacts with 10 won deals each in $(( $(now_ms) - t0 )) ms"
write_daemon "$WORK/proc" 1 0
start_daemon "$WORK/proc"
while :; do
    DEPTH=$(metric "$DPORT" loyd_inbox_depth)
    [ "${DEPTH:-0}" -ge "$EVENTS" ] && break
    wrk_run "$DPORT" 64 5 /hooks/shop "$EVENTS" > /dev/null
    note "backlog: $(metric "$DPORT" loyd_inbox_depth) of $EVENTS webhooks stored"
done
stop_daemon
write_daemon "$WORK/proc" 1 1 ", rate_per_sec = 1000, rate_burst = 10000"
start_daemon "$WORK/proc"
t0=$(now_ms)
CAP_S=${BENCH_PROC_CAP:-300}
while :; do
    sleep 2
    DEPTH=$(metric "$DPORT" loyd_inbox_depth)
    APPLIED=$(metric "$DPORT" loyd_events_applied_total)
    el=$(( $(now_ms) - t0 ))
    note "$(( el / 1000 )) s: $APPLIED events applied, $DEPTH webhooks waiting, outbox $(metric "$DPORT" loyd_outbox_depth)"
    [ "${DEPTH:-1}" -eq 0 ] && break
    [ "$el" -ge $(( CAP_S * 1000 )) ] && break
done
PROC_MS=$(( $(now_ms) - t0 ))
DEALS=$(metric "$DPORT" 'loyd_events_applied_total')
PROC_RSS=$(rss_kib "$DPID")
PROC_RATE=$(( DEALS * 1000 / PROC_MS ))
PROC_LEFT=$DEPTH
stop_daemon
kill "$EPID"
note "processing: $DEALS events in $PROC_MS ms = $PROC_RATE events/s ($PROC_LEFT webhooks left)"

RULE_LINES=$("$RULES" "$ROOT/rules/retail" $([ "$QUICK" = 1 ] && echo 2000 || echo 20000))
RULE_HIST=$(echo "$RULE_LINES" | sed -n '1s/.*: \([0-9]*\) ns.*/\1/p')
RULE_NEW=$(echo "$RULE_LINES" | sed -n '2s/.*: \([0-9]*\) ns.*/\1/p')
note "$RULE_LINES"
{
    echo "### Processing (enrichment from the emulator, retail pack, ledger and outbox committed)"
    echo
    echo "$EVENTS ONCRMDEALUPDATE webhooks stored first, then a daemon with REST access started on"
    echo "the backlog; the emulator ($CONTACTS contacts, 10 won deals each) does not limit it."
    echo "Events counted are loyd_events_applied_total (each deal's deal.won, and each contact's"
    echo "contact.created on its first deal)."
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "| events applied | $DEALS in $(ratio "$PROC_MS" 1000) s ($PROC_LEFT webhooks still waiting at the end) |"
    echo "| events/s end to end | $PROC_RATE |"
    echo "| daemon RSS after | $(( PROC_RSS / 1024 )) MiB |"
    echo "| rule evaluation, deal.won, member with 13 ledger rows | $(ratio "$RULE_HIST" 1000) us |"
    echo "| rule evaluation, deal.won, new member | $(ratio "$RULE_NEW" 1000) us |"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| >= 10,000 events/s end to end | $PROC_RATE | $(verdict "$PROC_RATE" ge 10000) |"
    echo "| retail pack < 10 us per event | $(ratio "$RULE_HIST" 1000) us (13 rows), $(ratio "$RULE_NEW" 1000) us (new) | $(verdict "$RULE_NEW" le 10000) |"
    echo
} >> "$RESULTS"
fi

# ---- 3. write-back efficiency --------------------------------------------------------------
if want 3; then

say "3/5 write-back: $WB_EVENTS won deals against the emulator's own limits (2 requests/s, burst 50)"
start_emulator "$WORK/wb" '{"drain": 2, "burst": 50}'
emu_call "$EPORT" loyd.emu.seed "{\"contacts\": $WB_EVENTS, \"deals\": 1, \"amount\": \"1000.00\"}" > /dev/null
write_daemon "$WORK/wb" 1 0
start_daemon "$WORK/wb"
while [ "$(metric "$DPORT" loyd_inbox_depth)" -lt "$WB_EVENTS" ]; do
    wrk_run "$DPORT" 16 2 /hooks/shop "$WB_EVENTS" > /dev/null
done
stop_daemon
write_daemon "$WORK/wb" 1 1
emu_call "$EPORT" loyd.emu.reset_limits > /dev/null
C0=$(emu_call "$EPORT" loyd.emu.calls)
REQ0=$(echo "$C0" | json_num requests)
REF0=$(echo "$C0" | json_num refused)
start_daemon "$WORK/wb"
t0=$(now_ms)
while :; do
    sleep 1
    IN=$(metric "$DPORT" loyd_inbox_depth)
    OUT=$(metric "$DPORT" loyd_outbox_depth)
    [ $(( ($(now_ms) - t0) / 1000 % 10 )) -eq 0 ] &&
        note "$(( ($(now_ms) - t0) / 1000 )) s: $IN webhooks and $OUT write-backs waiting"
    [ "$IN" -eq 0 ] && [ "$OUT" -eq 0 ] && break
    [ $(( $(now_ms) - t0 )) -ge 900000 ] && break
done
WB_MS=$(( $(now_ms) - t0 ))
C1=$(emu_call "$EPORT" loyd.emu.calls)
REQS=$(( $(echo "$C1" | json_num requests) - REQ0 ))
REFUSED=$(( $(echo "$C1" | json_num refused) - REF0 ))
WCALLS=$(metric "$DPORT" loyd_write_calls_total)
WDONE=$(metric "$DPORT" 'loyd_writebacks_total{outcome="done"}')
ALLOWED=$(awk -v ms="$WB_MS" 'BEGIN { printf "%d", 50 + 2 * ms / 1000 }')
stop_daemon
kill "$EPID"
note "$REQS requests in $WB_MS ms (allowed $ALLOWED), $WDONE write-backs in $WCALLS calls, $REFUSED refused"
{
    echo "### Write-back efficiency (Bitrix24's limits: 2 requests/s, burst 50)"
    echo
    echo "$WB_EVENTS stored webhooks of won deals (one per contact), drained by a daemon with the"
    echo "default pacing; enrichment and write-backs share the portal's bucket. Measured on the"
    echo "emulator (requests, 503 answers) and loyd's /metrics (write calls, write-backs done)."
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "| drained in | $(ratio "$WB_MS" 1000) s |"
    echo "| REST requests (all) | $REQS, allowed $ALLOWED (50 + 2/s) |"
    echo "| write-backs delivered | $WDONE in $WCALLS write calls |"
    echo "| 503 QUERY_LIMIT_EXCEEDED | $REFUSED |"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| >= 40 updates per call | $(ratio "$WDONE" "$WCALLS") | $(verdict "$(ratio "$WDONE" "$WCALLS")" ge 40) |"
    echo "| >= 95% of the allowed rate used | $(awk -v a="$REQS" -v b="$ALLOWED" 'BEGIN { printf "%.0f%%", 100 * a / b }') | $(verdict "$(ratio "$REQS" "$ALLOWED")" ge 0.95) |"
    echo "| zero 503s | $REFUSED | $( [ "$REFUSED" -eq 0 ] && echo met || echo missed) |"
    echo
} >> "$RESULTS"
fi

# ---- 4. memory and start-up ---------------------------------------------------------------
if want 4; then

say "4/5 memory: RSS with 1, 100 and $MAX_TENANTS tenants on the retail pack"
start_emulator "$WORK/mem" '{"drain": 1000000, "burst": 1000000}'
emu_call "$EPORT" loyd.emu.seed '{"contacts": 10, "deals": 1}' > /dev/null
declare -A M_IDLE M_BUSY M_START
for n in 1 100 "$MAX_TENANTS"; do
    rm -rf "$WORK/mem/d"
    write_daemon "$WORK/mem/d" "$n" 1 ", rate_per_sec = 1000, rate_burst = 10000"
    start_daemon "$WORK/mem/d"
    M_START[$n]=$STARTUP_MS
    sleep 2
    M_IDLE[$n]=$(rss_kib "$DPID")
    # Five won deals through every tenant.
    for i in $(seq 1 "$n"); do
        name=shop; [ "$n" -gt 1 ] && name=t$i
        for d in 1 2 3 4 5; do
            printf 'event=ONCRMDEALUPDATE&data%%5BFIELDS%%5D%%5BID%%5D=%d&auth%%5Bmember_id%%5D=%s&auth%%5Bapplication_token%%5D=%s\n' \
                "$d" "$MEMBER" "$TOKEN"
        done > "$WORK/mem/body.$name"
    done
    posters=()
    for i in $(seq 1 "$n"); do
        name=shop; [ "$n" -gt 1 ] && name=t$i
        while read -r b; do
            curl -s -o /dev/null -X POST --data "$b" "http://127.0.0.1:$DPORT/hooks/$name"
        done < "$WORK/mem/body.$name" &
        posters+=($!)
        if [ ${#posters[@]} -ge 50 ]; then wait "${posters[@]}"; posters=(); fi
    done
    if [ ${#posters[@]} -gt 0 ]; then wait "${posters[@]}"; fi
    for _ in $(seq 1 120); do
        [ "$(metric "$DPORT" loyd_inbox_depth)" -eq 0 ] && [ "$(metric "$DPORT" loyd_outbox_depth)" -eq 0 ] && break
        sleep 1
    done
    M_BUSY[$n]=$(rss_kib "$DPID")
    note "$n tenants: start-up ${M_START[$n]} ms, RSS idle $(( M_IDLE[$n] / 1024 )) MiB," \
         "after $(metric "$DPORT" loyd_events_applied_total) events $(( M_BUSY[$n] / 1024 )) MiB"
    stop_daemon
done
kill "$EPID"
PER=$(awk -v a="${M_IDLE[$MAX_TENANTS]}" -v b="${M_IDLE[1]}" -v n="$MAX_TENANTS" \
    'BEGIN { printf "%.0f", (a - b) / (n - 1) }')
{
    echo "### Memory and start-up (retail pack on every tenant)"
    echo
    echo "| tenants | start-up (until listening) | RSS idle | RSS after 5 events per tenant |"
    echo "|---|---|---|---|"
    for n in 1 100 "$MAX_TENANTS"; do
        echo "| $n | ${M_START[$n]} ms | $(( M_IDLE[$n] / 1024 )) MiB | $(( M_BUSY[$n] / 1024 )) MiB |"
    done
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| <= 1 MiB RSS per idle tenant at $MAX_TENANTS tenants | $PER KiB | $(verdict "$PER" le 1024) |"
    echo "| start-up with $MAX_TENANTS tenants < 2 s | ${M_START[$MAX_TENANTS]} ms | $(verdict "${M_START[$MAX_TENANTS]}" le 2000) |"
    echo
} >> "$RESULTS"
fi

# ---- 5. the document ----------------------------------------------------------------------

if [ "$ONLY" != 1234 ]; then
    cat "$RESULTS" >&2
    say "done (BENCH_ONLY=$ONLY: docs/BENCHMARKS.md left as it was)"
    exit 0
fi
say "5/5 writing docs/BENCHMARKS.md"
DOC=docs/BENCHMARKS.md
BEGIN='<!-- BEGIN GENERATED RESULTS (bench/run.sh) -->'
END='<!-- END GENERATED RESULTS -->'
{
    echo "$BEGIN"
    echo
    echo "Measured $DATE on $CPU, $CORES cores, $MEM RAM, Linux $KERNEL, commit $COMMIT,"
    echo "with \`make bench\`$( [ "$QUICK" = 1 ] && echo ' (BENCH_QUICK=1: shortened phases)')."
    echo
    cat "$RESULTS"
    echo "$END"
} > "$WORK/generated.md"
if [ -f "$DOC" ] && grep -qF "$BEGIN" "$DOC"; then
    awk -v b="$BEGIN" -v e="$END" -v f="$WORK/generated.md" '
        $0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
        $0 == e { skip = 0; next }
        !skip { print }' "$DOC" > "$WORK/doc.md"
    cp "$WORK/doc.md" "$DOC"
else
    { echo "# Benchmarks"; echo; cat "$WORK/generated.md"; } > "$DOC"
fi
cat "$RESULTS" >&2
say "done: $DOC"
