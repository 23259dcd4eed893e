#!/usr/bin/env bash
# Install the Debian packages named as arguments that are missing; quiet, idempotent, never starts a service.
set -euo pipefail

missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "apt-install: missing ${missing[*]} and not root: install them (apt-get install -y ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# No package's maintainer script may start its service (pgbouncer's would listen on 6432): a policy-rc.d that
# refuses every action, only for this install and only if the machine has none of its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt_get() { apt-get -o DPkg::Lock::Timeout=600 -qq "$@"; }
echo "apt-install: ${missing[*]}"
if ! apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  apt_get update >/dev/null
  apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
