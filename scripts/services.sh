#!/usr/bin/env bash
# Make sure the servers the store tests need are running on loopback: Redis 6379, PostgreSQL 5432
# (trust auth for user root, database test) and NATS with JetStream 4222. Each one that does not
# answer is started; one that is not installed is installed from Debian's packages first.
set -uo pipefail

log() { printf '[services] %s\n' "$*"; }

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  log "port $1 still closed after 30 s"; return 1
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""
apt_install() {
  if ! command -v apt-get >/dev/null; then log "cannot install $* (no apt-get)"; return 1; fi
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq >/dev/null && APT_UPDATED=1; fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  port_open 6379 && { log "redis: up"; return 0; }
  command -v redis-server >/dev/null || apt_install redis-server redis-tools || return 1
  log "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379
}

ensure_postgres() {
  if ! port_open 5432; then
    ls /etc/postgresql/*/main >/dev/null 2>&1 || apt_install postgresql || return 1
    log "postgres: starting"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_port 5432 || return 1
  else
    log "postgres: up"
  fi
  # The tests connect as root to database test over TCP without a password.
  if ! psql -h 127.0.0.1 -U root -d test -Atc 'select 1' >/dev/null 2>&1; then
    log "postgres: creating role root and database test, trust on loopback"
    local version hba
    version="$(ls /etc/postgresql | head -n1)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
    fi
    $SUDO -u postgres psql -qc "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END\$\$;" >/dev/null 2>&1 \
      || su postgres -c "psql -qc \"CREATE ROLE root SUPERUSER LOGIN\"" >/dev/null 2>&1 || true
    $SUDO -u postgres createdb -O root test >/dev/null 2>&1 || su postgres -c "createdb -O root test" >/dev/null 2>&1 || true
  fi
}

ensure_nats() {
  port_open 4222 && { log "nats: up"; return 0; }
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server || return 1
  local bin
  bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
  mkdir -p /var/lib/nats-server 2>/dev/null || true
  log "nats: starting"
  start-stop-daemon --start --oknodo --background --exec "$bin" -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
    || (nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server >/dev/null 2>&1 &)
  wait_port 4222
}

status=0
ensure_redis || status=1
ensure_postgres || status=1
ensure_nats || status=1
exit $status
