#!/bin/sh
# Install the real tools the test suite and benchmarks talk to (Debian 12).
# Idempotent; needs root (or sudo). Nothing here starts a system service.
set -eu
need=""
command -v dnsmasq >/dev/null 2>&1 || need="$need dnsmasq-base"
command -v swaks >/dev/null 2>&1 || need="$need swaks libnet-ssleay-perl libio-socket-ssl-perl"
command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ] || need="$need postfix"
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need="$need haproxy"  # PROXY protocol tests
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"  # verifies deploy/systemd/fastmta.service
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v ab >/dev/null 2>&1 || need="$need apache2-utils"  # bench/http_api.py's C HTTP client
# [cluster] tests and bench/cluster.py start their own Redis on a loopback port.
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
# OpenDKIM verifies fastmta's signatures in the tests and signs for Postfix in bench/dkim.py.
command -v opendkim >/dev/null 2>&1 || [ -x /usr/sbin/opendkim ] || need="$need opendkim opendkim-tools"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# DANE tests: Unbound validates a locally signed zone (ldns-signzone signs it) and sets AD.
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need="$need unbound"
command -v ldns-signzone >/dev/null 2>&1 || need="$need ldnsutils"
command -v make >/dev/null 2>&1 || need="$need make"
# bench/core.py --callgrind counts instructions per message (exact on a busy machine).
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
# What building fastmta itself needs (python3-venv, python3-dev, gcc).
build=$(sh "$(dirname "$0")/build-deps.sh")
[ -z "$build" ] || need="$need $build"
[ -n "$need" ] || exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string fastmta.test" | $SUDO debconf-set-selections
# Keep package scripts from starting services (postfix, prometheus) on install.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created=1
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
[ "$created" = 1 ] && $SUDO rm -f "$policy"
# Debian's prometheus package may still have started a service under some init systems.
$SUDO pkill -x prometheus 2>/dev/null || true
$SUDO pkill -f 'postfix/sbin/master' 2>/dev/null || true
$SUDO pkill -x opendkim 2>/dev/null || true
exit 0
