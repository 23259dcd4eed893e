#!/usr/bin/env bash
# Build Citus from the vendored source archive and install it into the machine's PostgreSQL, unless that Citus
# version is installed already (a second run only checks). Called by .ci/run and by the test fixture
# (tests/fixtures/citus.py) when citus.so is missing.
#
# The archive: $HV_CITUS_TARBALL, else shared/vendor/citus-<version>.tar.gz in a parent directory of this
# repository, else in a parent directory of the `origin` remote when that is a local path (a clone made with
# `git clone /path/to/checkout` finds the checkout's vendor directory).
# The PostgreSQL: $PG_CONFIG, else pg_config beside $HV_PG_BIN's binaries, else the newest /usr/lib/postgresql/*.
set -euo pipefail

CITUS_VERSION="${HV_CITUS_VERSION:-13.0.5}"
repo="$(cd "$(dirname "$0")/.." && pwd)"

if [ -z "${PG_CONFIG:-}" ]; then
  if [ -n "${HV_PG_BIN:-}" ] && [ -x "$HV_PG_BIN/pg_config" ]; then
    PG_CONFIG="$HV_PG_BIN/pg_config"
  else
    PG_CONFIG="$(ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -n 1)"
  fi
fi
[ -x "$PG_CONFIG" ] || { echo "install-citus: no pg_config found (set PG_CONFIG)" >&2; exit 1; }
pg_major="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
pkglibdir="$("$PG_CONFIG" --pkglibdir)"

installed() {  # citus.so of the wanted version is in PostgreSQL's library directory, with its control file
  [ -f "$pkglibdir/citus.so" ] && grep -qaF "Citus $CITUS_VERSION" "$pkglibdir/citus.so" \
    && [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]
}
installed && exit 0

find_tarball() {
  local name="citus-$CITUS_VERSION.tar.gz" dir origin
  if [ -n "${HV_CITUS_TARBALL:-}" ]; then
    echo "$HV_CITUS_TARBALL"
    return
  fi
  for start in "$repo" "$(git -C "$repo" config --get remote.origin.url 2>/dev/null || true)"; do
    [ -n "$start" ] && [ -d "$start" ] || continue
    dir="$(cd "$start" && pwd)"
    while :; do
      [ -f "$dir/shared/vendor/$name" ] && { echo "$dir/shared/vendor/$name"; return; }
      [ "$dir" = / ] && break
      dir="$(dirname "$dir")"
    done
  done
  echo "install-citus: $name not found in shared/vendor above $repo or its origin remote: set HV_CITUS_TARBALL" >&2
  return 1
}
tarball="$(find_tarball)"
[ -f "$tarball" ] || { echo "install-citus: HV_CITUS_TARBALL=$tarball is not a file" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "install-citus: Citus $CITUS_VERSION is missing and building it needs root" >&2; exit 1; }

# One build at a time (CI and a test fixture may both ask); the winner's install satisfies the others.
exec 9>"${TMPDIR:-/tmp}/hv-citus-build.lock"
flock 9
installed && exit 0

start=$(date +%s)
"$repo/.ci/apt-install.sh" "postgresql-server-dev-$pg_major" build-essential liblz4-dev libzstd-dev libkrb5-dev \
  libselinux1-dev libxslt1-dev libpam0g-dev libssl-dev
build="$(mktemp -d "${TMPDIR:-/tmp}/hv-citus-build.XXXXXX")"
trap 'rm -rf "$build"' EXIT
log="$build/build.log"
echo "install-citus: building Citus $CITUS_VERSION for PostgreSQL $pg_major from $tarball"
if ! {
  tar -xzf "$tarball" -C "$build" \
    && cd "$build/citus-$CITUS_VERSION" \
    && ./configure --without-libcurl PG_CONFIG="$PG_CONFIG" \
    && make -j2 \
    && make install
} >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "install-citus: the build failed (last lines above)" >&2
  exit 1
fi
installed || { echo "install-citus: built, but $pkglibdir/citus.so is not Citus $CITUS_VERSION" >&2; exit 1; }
echo "install-citus: Citus $CITUS_VERSION installed into $pkglibdir in $(($(date +%s) - start)) s"
