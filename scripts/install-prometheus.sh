#!/usr/bin/env bash
# Put `prometheus` and `promtool` under .cache/prometheus/bin/ for the tests.
#
# Takes the two binaries out of Debian's `prometheus` package without
# installing it: no system-wide files, no service started, no user created.
# Idempotent, and instant when both binaries are already there and run.
# PROMETHEUS_DIR=DIR puts them under DIR/bin instead.
# Needs Debian/Ubuntu apt (dpkg-deb, apt-get); run as root on a fresh machine
# so that `apt-get update` can fill an empty package list.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${PROMETHEUS_DIR:-$ROOT/.cache/prometheus}/bin"

if "$DEST/prometheus" --version >/dev/null 2>&1 && "$DEST/promtool" --version >/dev/null 2>&1; then
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "install-prometheus: $tool not found (Debian/Ubuntu only)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt-get download runs as the _apt user when it can; a root-owned mktemp dir
# is not writable by it, which apt only warns about, so let it write here.
chmod 0777 "$work"

# A fresh machine (CI) has an empty package list, and an old list may name a
# .deb the mirror no longer has: refresh the list in either case, not before.
if ! apt-cache show prometheus >/dev/null 2>&1 || ! apt-get download -qq prometheus; then
    apt-get update -qq
    apt-get download -qq prometheus
fi
deb=(prometheus_*.deb)
dpkg-deb -x "${deb[0]}" extracted

mkdir -p "$DEST"
for bin in prometheus promtool; do
    if [ ! -x "extracted/usr/bin/$bin" ]; then
        echo "install-prometheus: ${deb[0]} has no usr/bin/$bin" >&2
        exit 1
    fi
    # Copy beside, then rename: a concurrent run never sees a half-written binary.
    cp "extracted/usr/bin/$bin" "$DEST/.$bin.tmp"
    mv -f "$DEST/.$bin.tmp" "$DEST/$bin"
done
"$DEST/prometheus" --version | head -n 1
