#!/usr/bin/env bash
# Berth's quick start: `make demo` runs the whole system on this machine and
# `make demo-down` (or Ctrl-C) stops it. See README.md.
#
#   scripts/demo.sh up     install what is missing, build, start everything,
#                          apply examples/demo.yaml, wait until nginx serves it,
#                          then stay in the foreground until Ctrl-C
#   scripts/demo.sh down   stop everything, remove the demo's containers and data
#
# Everything listens on 127.0.0.1 only. Settings (environment):
#   BERTH_DEMO_DIR   state and logs (default /tmp/berth-demo)
#   DETACH=1         return after printing the instructions instead of waiting
#   HOSTS=N          also run N extra Docker engines on this machine as hosts
#                    (h1..hN, each with its own bridge and loopback address)
#                    and register them: the demo's replicas spread over them
#   ACME=1           also run Pebble (Let's Encrypt's test CA) and an app with
#                    tls.acme on https://secure.localhost:8443, its certificate
#                    ordered by the scheduler and served by nginx
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${BERTH_DEMO_DIR:-/tmp/berth-demo}
BIN=$ROOT/bin
PREFIX=berth
HTTP=127.0.0.1:8080
API=http://127.0.0.1:7070
NATS=nats://127.0.0.1:4222
# Every port is below Linux's ephemeral range (32768-60999 by default):
# there an outgoing connection may hold the port and Postgres, restarted by
# hand, fails with "address already in use".
PG_PORT=15432
PORTS=(8080 8443 8091 7070 4222 9102 9103 $PG_PORT)
HOST=demo.localhost
[ "${ACME:-0}" = 1 ] && PORTS+=(14000 15000 18053 18055)
true
export BERTH_SERVER=$API

start_time=$(date +%s)
n=0
STEPS=9
[ "${ACME:-0}" = 1 ] && STEPS=$((STEPS + 2))
[ "${HOSTS:-0}" -gt 0 ] && STEPS=$((STEPS + 1))
step() { n=$((n + 1)); printf '\n\033[1m==> [%d/%d %3ss] %s\033[0m\n' "$n" "$STEPS" "$(($(date +%s) - start_time))" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n\033[31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every 0.2 s until it
# succeeds, printing what it waits for; fails after SECONDS.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$(($(date +%s) + secs)) dots=0
  printf '    waiting for %s ' "$what"
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf '\n'
      die "gave up waiting for $what after ${secs}s (logs: $DIR/logs/)"
    fi
    dots=$((dots + 1)); [ $((dots % 5)) -eq 0 ] && printf '.'
    sleep 0.2
  done
  printf ' ok\n'
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME COMMAND...: runs a daemon in its own session (Ctrl-C reaches this
# script, which then stops the daemons in order), its output in logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/run/$name.pid"
  info "$name started (pid $!, log $DIR/logs/$name.log)"
}

stop_pid() {
  local name=$1 sig=${2:-TERM} f="$DIR/run/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; info "$name killed (did not stop within 30s)"; else info "$name stopped"; fi
  fi
  rm -f "$f"
}

down() {
  trap - INT TERM
  [ -d "$DIR" ] || { echo "demo: nothing to stop ($DIR does not exist)"; return 0; }
  echo
  echo "==> stopping the Berth demo"
  if [ -f "$DIR/run/scheduler.pid" ] && kill -0 "$(cat "$DIR/run/scheduler.pid")" 2>/dev/null; then
    # Deleting the apps lets the scheduler drain and stop their containers.
    for app in $("$BIN/scheduler" status -o json 2>/dev/null | sed -n 's/.*"name": *"\([^"]*\)".*/\1/p' | sort -u); do
      "$BIN/scheduler" rm "$app" >/dev/null 2>&1 && info "app $app deleted: the scheduler drains and stops its instances"
    done
    deadline=$(($(date +%s) + 30))
    while [ -n "$(docker ps -q --filter label=berth.prefix=$PREFIX 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
  fi
  stop_pid lbagent   # nginx quits gracefully with it
  # nginx outlives an lbagent that crashed (or one started by hand): quit it too.
  ngx=$(cat "$DIR/nginx/run/nginx.pid" 2>/dev/null || true)
  if [ -n "$ngx" ] && kill -0 "$ngx" 2>/dev/null && grep -q nginx "/proc/$ngx/cmdline" 2>/dev/null; then
    kill -QUIT "$ngx" 2>/dev/null && info "nginx (pid $ngx) quit"
    for _ in $(seq 50); do kill -0 "$ngx" 2>/dev/null || break; sleep 0.1; done
  fi
  stop_pid healthd
  stop_pid scheduler
  stop_pid pebble
  stop_pid pebble-challtestsrv
  for f in "$DIR"/run/dockerd-h*.pid; do
    [ -f "$f" ] || continue
    h=$(basename "$f" .pid); h=${h#dockerd-}
    stop_pid "dockerd-$h"
    pkill -KILL -f "$DIR/engines/$h/" 2>/dev/null || true
    grep " $DIR/engines/$h/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l 2>/dev/null || true
    ip link del "berth-demo-$h" 2>/dev/null && info "host $h's engine stopped, its bridge removed"
  done
  left=$(docker ps -aq --filter label=berth.prefix=$PREFIX 2>/dev/null || true)
  if [ -n "$left" ]; then
    docker rm -f $left >/dev/null && info "removed $(echo $left | wc -w) leftover container(s)"
  fi
  if [ -f "$DIR/pg/data/postmaster.pid" ]; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$DIR/pg/data" -m fast -w stop >/dev/null 2>&1 && info "postgres stopped"
  fi
  rm -rf "$DIR"
  echo "==> stopped; nothing is left running"
}

up() {
  if [ -d "$DIR/run" ]; then
    echo "demo: a previous demo is in $DIR: stopping it first"
    down
  fi

  step "checking packages (nginx and its Lua module, postgresql) and Docker"
  missing=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  # nginx's Lua module: lbagent's dynamic upstreams (endpoint changes without reloads).
  [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing+=(libnginx-mod-http-lua)
  [ -f /usr/share/lua/5.1/ngx/balancer.lua ] || missing+=(lua-resty-core)
  dpkg -s lua-cjson >/dev/null 2>&1 || missing+=(lua-cjson)
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    info "installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  info "$("$NGINX" -v 2>&1), postgres $(basename "$(dirname "$(pg_bin)")")"
  docker version --format '    docker engine {{.Server.Version}}' || die "the Docker engine is not reachable: start dockerd"
  for p in "${PORTS[@]}"; do
    listening "$p" && die "127.0.0.1:$p is already in use (the demo needs ${PORTS[*]}): stop what listens there"
  done

  step "building the binaries and the demo image"
  make --no-print-directory build
  go run ./internal/testrig/demoimage v1 v2 | sed 's/^/    /'

  mkdir -p "$DIR"/{logs,run,nginx,lbagent,nats}
  trap 'down; exit 130' INT TERM

  step "starting a throwaway PostgreSQL on 127.0.0.1:$PG_PORT and migrating it"
  mkdir -p "$DIR/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DIR/pg"
  as_postgres "$(pg_bin)/initdb" -D "$DIR/pg/data" -U berth --auth=trust -E UTF8 >"$DIR/logs/initdb.log" 2>&1 || die "initdb failed: $DIR/logs/initdb.log"
  as_postgres "$(pg_bin)/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR/pg -c fsync=off" start >/dev/null || die "postgres did not start: $DIR/pg/postgres.log"
  as_postgres "$(pg_bin)/createdb" -h 127.0.0.1 -p $PG_PORT -U berth berth
  DB="postgres://berth@127.0.0.1:$PG_PORT/berth?sslmode=disable"
  "$BIN/scheduler" migrate --database-url "$DB" | sed 's/^/    /'

  ACME_FLAGS=()
  if [ "${ACME:-0}" = 1 ]; then
    step "starting Pebble, Let's Encrypt's test CA, on https://127.0.0.1:14000/dir"
    # Its HTTP-01 validation goes to nginx (8080), every name resolving to
    # 127.0.0.1 through pebble-challtestsrv's DNS.
    go build -o "$BIN/" github.com/letsencrypt/pebble/v2/cmd/pebble github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv
    PEBBLE_CERTS="$(go list -m -f '{{.Dir}}' github.com/letsencrypt/pebble/v2)/test/certs"
    cat >"$DIR/run/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$PEBBLE_CERTS/localhost/cert.pem", "privateKey": "$PEBBLE_CERTS/localhost/key.pem",
  "httpPort": 8080, "tlsPort": 15001, "ocspResponderURL": "", "externalAccountBindingRequired": false,
  "retryAfter": {"authz": 1, "order": 1}}}
JSON
    start pebble-challtestsrv "$BIN/pebble-challtestsrv" -defaultIPv4 127.0.0.1 -defaultIPv6 "" -http01 "" -https01 "" \
      -tlsalpn01 "" -doh "" -dnsserver 127.0.0.1:18053 -management 127.0.0.1:18055
    start pebble env PEBBLE_VA_NOSLEEP=1 "$BIN/pebble" -config "$DIR/run/pebble.json" -dnsserver 127.0.0.1:18053
    wait_for "Pebble's directory" 30 curl -fsS --cacert "$PEBBLE_CERTS/pebble.minica.pem" https://127.0.0.1:14000/dir
    openssl rand -base64 32 >"$DIR/run/cert.key" && chmod 600 "$DIR/run/cert.key"
    ACME_FLAGS=(--acme-directory https://127.0.0.1:14000/dir --acme-ca-file "$PEBBLE_CERTS/pebble.minica.pem"
      --acme-email ops@demo.localhost --cert-key-file "$DIR/run/cert.key")
    info "the scheduler orders certificates there, its keys encrypted with $DIR/run/cert.key"
  fi

  # The extra engines' hosts are reached on loopback addresses of this
  # machine (127.0.10.N), which a scheduler refuses unless told this is a
  # test on one machine.
  HOST_FLAGS=()
  [ "${HOSTS:-0}" -gt 0 ] && HOST_FLAGS=(--allow-loopback-hosts)

  # The edge node's own NATS key, made before the embedded NATS starts so
  # that it accepts it from the first moment (a running scheduler takes a
  # new one within 2 s).
  "$BIN/scheduler" nats-key add-node demo-lb --data-dir "$DIR/nats" >/dev/null 2>&1 || die "cannot create the node key of demo-lb"

  # The key env secrets ({secret: …}) are encrypted with in Postgres.
  head -c 32 /dev/urandom | base64 >"$DIR/run/secret.key" && chmod 600 "$DIR/run/secret.key"

  step "starting the scheduler (API $API, embedded NATS $NATS)"
  start scheduler "$BIN/scheduler" run --database-url "$DB" --api-listen 127.0.0.1:7070 --nats-listen 127.0.0.1:4222 \
    --data-dir "$DIR/nats" --prefix $PREFIX --id demo-scheduler --secret-key-file "$DIR/run/secret.key" \
    "${ACME_FLAGS[@]}" "${HOST_FLAGS[@]}"
  wait_for "the scheduler to lead" 30 sh -c "curl -fsS $API/readyz | grep -q '\"role\":\"leader\"'"

  # The embedded NATS requires a role credential of every client: the
  # scheduler made them on its first start; each daemon gets its own, and
  # lbagent its node's own key (not the role's shared one).
  CREDS="$DIR/nats/nats-credentials"
  for role in healthd reader; do
    "$BIN/scheduler" nats-credential --data-dir "$DIR/nats" $role >"$DIR/run/$role.nk" 2>/dev/null
    chmod 600 "$DIR/run/$role.nk"
  done
  "$BIN/scheduler" nats-credential --data-dir "$DIR/nats" lbagent --node demo-lb >"$DIR/run/lbagent.nk" 2>/dev/null
  chmod 600 "$DIR/run/lbagent.nk"
  info "NATS credentials: $CREDS (scheduler nats-credential <role> prints one, nats-credential lbagent --node <node> a node's own; scheduler nats-key ls lists them)"

  step "starting healthd"
  start healthd "$BIN/healthd" --nats-url $NATS --nats-nkey "$DIR/run/healthd.nk" --prefix $PREFIX --id demo-healthd --metrics-listen 127.0.0.1:9103
  wait_for "healthd to be ready" 30 curl -fsS http://127.0.0.1:9103/readyz

  step "starting lbagent with nginx on http://$HTTP"
  # nginx sends the access log to lbagent over a unix datagram socket, whose
  # queue is net.unix.max_dgram_qlen lines (the kernel's default is 10): under
  # wrk, nginx would drop lines and /metrics would count fewer requests.
  qlen=$(cat /proc/sys/net/unix/max_dgram_qlen 2>/dev/null || echo 512)
  if [ "$qlen" -lt 4096 ]; then
    if [ "$(id -u)" -eq 0 ] && sysctl -q -w net.unix.max_dgram_qlen=4096 2>/dev/null; then
      info "raised net.unix.max_dgram_qlen from $qlen to 4096 (the access log socket's queue; docs/lbagent.md)"
    else
      info "net.unix.max_dgram_qlen is $qlen: under heavy load nginx drops access log lines (sudo sysctl -w net.unix.max_dgram_qlen=4096; docs/lbagent.md)"
    fi
  fi
  start lbagent "$BIN/lbagent" --nats-url $NATS --nats-nkey "$DIR/run/lbagent.nk" --prefix $PREFIX --node demo-lb --manage-nginx \
    --nginx-bin "$NGINX" --nginx-conf "$DIR/nginx/nginx.conf" --nginx-prefix "$DIR/nginx" --state-dir "$DIR/lbagent" \
    --templates "$ROOT/templates" --listen-http $HTTP --listen-https 127.0.0.1:8443 --status-listen 127.0.0.1:8091 \
    --metrics-listen 127.0.0.1:9102 --access-log-socket "$DIR/run/access.sock"
  wait_for "nginx to answer on $HTTP" 30 curl -sS -o /dev/null "http://$HTTP/"

  if [ "${HOSTS:-0}" -gt 0 ]; then
    step "starting $HOSTS extra Docker engines as hosts h1..h$HOSTS, and registering them"
    for i in $(seq 1 "$HOSTS"); do
      h=h$i; e="$DIR/engines/$h"; mkdir -p "$e"; echo '{}' >"$e/daemon.json"
      # A bridge of its own (never --bridge none: dockerd would delete docker0).
      ip link add "berth-demo-$h" type bridge && ip addr add "198.18.20$i.1/24" dev "berth-demo-$h" && ip link set "berth-demo-$h" up \
        || die "cannot create bridge berth-demo-$h (needs root)"
      start "dockerd-$h" dockerd --data-root "$e/data" --exec-root "$e/exec" --pidfile "$e/docker.pid" --host "unix://$e/docker.sock" \
        --config-file "$e/daemon.json" --bridge "berth-demo-$h" --iptables=false --ip-masq=false --ip "127.0.10.$i"
      wait_for "engine $h" 30 docker -H "unix://$e/docker.sock" version
      docker save berth-demo:v1 berth-demo:v2 | docker -H "unix://$e/docker.sock" load >/dev/null
      "$BIN/scheduler" hosts add "$h" --docker-url "unix://$e/docker.sock" --address "127.0.10.$i" --label "zone=z$(( (i + 1) / 2 ))" | sed 's/^/    /'
    done
    wait_for "every host up" 30 sh -c "[ \$(\"$BIN/scheduler\" hosts ls | grep -c ' up ') -eq $HOSTS ]"
  fi

  step "applying examples/demo.yaml (3 replicas of berth-demo:v1)"
  "$BIN/scheduler" apply -f examples/demo.yaml | sed 's/^/    /'

  step "waiting until nginx serves the demo from 3 healthy instances"
  serving() {
    local seen
    seen=$(for _ in $(seq 1 30); do curl -fsS -H "Host: $HOST" "http://$HTTP/" || exit 1; echo; done | sed -n 's/.*"instance":"\([^"]*\)".*/\1/p' | sort -u | wc -l)
    [ "$seen" -eq 3 ]
  }
  wait_for "containers to start, pass their health check and enter nginx's upstream" 90 serving
  "$BIN/scheduler" status demo | sed 's/^/    /'

  HOSTS_HELP=""
  if [ "${HOSTS:-0}" -gt 0 ]; then
    HOSTS_HELP="
    bin/scheduler hosts ls                          # the hosts, their state and what they run
    kill -9 \$(cat $DIR/engines/h1/docker.pid)       # lose host h1: its instances move within --host-timeout
    bin/scheduler hosts drain h2                    # move h2's instances off, no request dropped"
  fi
  ACME_HELP=""
  if [ "${ACME:-0}" = 1 ]; then
    step "applying an app with tls.acme: secure.localhost, its certificate from Pebble"
    sed -e 's/^name: demo/name: secure/' -e 's/replicas: 3/replicas: 2/' \
      -e 's/hosts: \[demo.localhost\]/hosts: [secure.localhost]\n  tls: {acme: true, redirect_http: true}/' examples/demo.yaml \
      | "$BIN/scheduler" apply -f - | sed 's/^/    /'
    curl -fsS --cacert "$PEBBLE_CERTS/pebble.minica.pem" https://127.0.0.1:15000/roots/0 >"$DIR/run/pebble-root.pem"
    wait_for "the certificate to be issued and served" 120 curl -fsS --cacert "$DIR/run/pebble-root.pem" \
      --resolve secure.localhost:8443:127.0.0.1 https://secure.localhost:8443/
    "$BIN/scheduler" events --app secure | grep certificate_ | sed 's/^/    /'
    ACME_HELP="
    curl --cacert $DIR/run/pebble-root.pem --resolve secure.localhost:8443:127.0.0.1 https://secure.localhost:8443/
                                                    # HTTPS with the certificate Pebble issued
    curl -i -H 'Host: secure.localhost' http://$HTTP/   # plain HTTP redirects"
  fi

  # The web console signs in with an API token: a read one is enough to look.
  (umask 077 && "$BIN/scheduler" tokens create --name demo-console --scope read >"$DIR/run/console.token" 2>/dev/null) ||
    echo "    (no console token: scheduler tokens create failed)"

  step "Berth is running ($(($(date +%s) - start_time))s)"
  cat <<EOF

  Try it (from the repository root; the CLI talks to $API):

    curl -H 'Host: $HOST' http://$HTTP/      # one of 3 instances answers
    bin/scheduler status demo                       # instances, health, addresses
    bin/scheduler scale demo 5                      # scale out (and back with 3)
    sed 's/demo:v1/demo:v2/' examples/demo.yaml | bin/scheduler apply -f -
                                                    # rolling update to v2, no request dropped
    bin/scheduler events --follow --nats-nkey $DIR/run/reader.nk
                                                    # lifecycle events as they happen
    go run ./examples/berth-watch --nats-nkey $DIR/run/reader.nk
                                                    # events and health transitions over NATS
    nats --nkey $DIR/run/reader.nk sub '$PREFIX.v1.>'   # the nats CLI, as the reader role
    docker kill \$(docker ps -q --filter label=berth.app=demo | head -n1)
                                                    # a crash: replaced within a second$ACME_HELP$HOSTS_HELP

  Console: http://127.0.0.1:7070/ui/
    sign in with this read-only token (it is also in $DIR/run/console.token):
      $(cat "$DIR/run/console.token" 2>/dev/null || echo "(none: see above)")
    to scale, roll back, restart or drain from the page: bin/scheduler tokens create --name me --scope admin
  Logs: $DIR/logs/   Metrics: http://127.0.0.1:7070/metrics, :9102/metrics, :9103/metrics
  Stop: Ctrl-C here, or 'make demo-down' from another terminal.
EOF
  if [ "${DETACH:-0}" = 1 ]; then
    trap - INT TERM
    return 0
  fi
  # Stay in the foreground until Ctrl-C, or until demo-down stops the daemons.
  while [ -f "$DIR/run/scheduler.pid" ] && kill -0 "$(cat "$DIR/run/scheduler.pid" 2>/dev/null)" 2>/dev/null; do
    sleep 1 &
    wait $! || true
  done
  trap - INT TERM
  echo "demo: the daemons were stopped"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
