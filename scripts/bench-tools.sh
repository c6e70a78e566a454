#!/bin/sh
# Installs the load generators and contenders `make bench` compares with,
# when they are missing and this is a Debian-like machine run as root:
# ab (apache2-utils), wrk and nginx-light. Node.js is used when present and
# never installed. BENCH_INSTALL=0 only lists what is missing; the
# benchmark then falls back to its built-in load generator and skips nginx.
set -eu

need=""
command -v ab >/dev/null 2>&1 || need="$need apache2-utils"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
[ -n "$need" ] || exit 0

if [ "${BENCH_INSTALL:-1}" = 0 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "bench: not installing$need (needs root and apt-get, and BENCH_INSTALL not 0)" >&2
	exit 0
fi
echo "bench: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# A policy-rc.d keeps the package from starting a system nginx on port 80.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends $need >/dev/null
