#!/bin/sh
# Installs what building and testing tcpshadow needs on Debian, if missing.
# Idempotent; run as root. Services installed here (nginx, redis) are not
# started: the tests start their own copies inside the lab namespaces.
set -eu

pkgs="libpcap-dev iproute2 nftables iptables ethtool tcpdump nginx-light redis-server curl procps libcap2-bin util-linux wrk nghttp2-client postgresql mariadb-server sysbench chromium"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing:$missing (run as root to install)" >&2
		exit 1
	fi
	echo "deps: installing$missing"
	# Keep apt from starting the packaged services.
	made_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		made_policy=1
	fi
	trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "deps: go is at /usr/local/go/bin; add it to PATH" >&2
	else
		echo "deps: Go 1.26 or newer is required (https://go.dev/dl)" >&2
		exit 1
	fi
fi
