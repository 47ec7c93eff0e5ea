#!/usr/bin/env bash
# Put `prometheus` and `promtool` under .cache/prometheus/bin/, with the web UI.
#
# Takes the two binaries out of Debian's `prometheus` package without
# installing it: no system-wide files, no service started, no user created.
# Debian's prometheus reads its web UI (templates, scripts, styles) from disk,
# partly from other packages (jQuery, Bootstrap, ...): those are unpacked too,
# into .cache/prometheus/web/, and bin/prometheus is a wrapper that points
# --web.local-assets there (unless given), so http://HOST:PORT/ is the UI.
# Idempotent, and instant when everything is already there.
# PROMETHEUS_DIR=DIR puts them under DIR instead.
# Needs Debian/Ubuntu apt (dpkg-deb, apt-get); run as root on a fresh machine
# so that `apt-get update` can fill an empty package list.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${PROMETHEUS_DIR:-$ROOT/.cache/prometheus}"
DEST="$PREFIX/bin"
WEB="$PREFIX/web"
# The packages whose files the UI's pages load (prometheus' Depends, and d3
# for rickshaw): usr/share/prometheus/web/static links into theirs.
UI_PACKAGES=(fonts-glyphicons-halflings libjs-bootstrap4 libjs-d3
             libjs-eonasdan-bootstrap-datetimepicker libjs-jquery libjs-jquery-hotkeys
             libjs-moment libjs-moment-timezone libjs-mustache libjs-popper.js libjs-rickshaw)

if "$DEST/prometheus" --version >/dev/null 2>&1 && "$DEST/promtool" --version >/dev/null 2>&1 \
        && [ -f "$WEB/templates/_base.html" ] && [ -f "$WEB/static/jquery/jquery.min.js" ]; then
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
if ! apt-cache show prometheus >/dev/null 2>&1 || ! apt-get download -qq prometheus "${UI_PACKAGES[@]}"; then
    apt-get update -qq
    apt-get download -qq prometheus "${UI_PACKAGES[@]}"
fi
deb=(prometheus_*.deb)
for package in ./*.deb; do
    dpkg-deb -x "$package" extracted
done

mkdir -p "$DEST"
# Copy beside, then rename: a concurrent run never sees a half-written file.
for bin in prometheus promtool; do
    if [ ! -x "extracted/usr/bin/$bin" ]; then
        echo "install-prometheus: ${deb[0]} has no usr/bin/$bin" >&2
        exit 1
    fi
    target="$bin"
    [ "$bin" = prometheus ] && target=prometheus-server
    cp "extracted/usr/bin/$bin" "$DEST/.$target.tmp"
    mv -f "$DEST/.$target.tmp" "$DEST/$target"
done

# The UI with its links resolved into plain files (-h), less moment-timezone's
# raw data (200 MB the pages never load: they use the built *-with-data.min.js).
if [ ! -f extracted/usr/share/prometheus/web/templates/_base.html ]; then
    echo "install-prometheus: ${deb[0]} has no usr/share/prometheus/web" >&2
    exit 1
fi
mkdir -p ui
tar -chf - --exclude=web/static/moment-timezone/data -C extracted/usr/share/prometheus web \
    | tar -xf - -C ui
rm -rf "$WEB.old"
[ -e "$WEB" ] && mv "$WEB" "$WEB.old"
mv ui/web "$WEB"
rm -rf "$WEB.old"

cat > "$DEST/.prometheus.tmp" <<'WRAPPER'
#!/bin/sh
# Debian's prometheus, with the web UI installed beside it (install-prometheus.sh).
server="$(cd "$(dirname "$0")" && pwd)/prometheus-server"
for arg in "$@"; do
    case "$arg" in --web.local-assets*) exec "$server" "$@" ;; esac
done
exec "$server" --web.local-assets="$(cd "$(dirname "$0")/../web" && pwd)/" "$@"
WRAPPER
chmod 0755 "$DEST/.prometheus.tmp"
mv -f "$DEST/.prometheus.tmp" "$DEST/prometheus"
"$DEST/prometheus" --version | head -n 1
