#!/bin/sh
# Installs the Debian packages loyd needs to build, test and run.  Idempotent: it installs only
# what is missing, and says clearly when it needs root.
set -eu

PKGS="build-essential pkg-config libuv1-dev libcurl4-openssl-dev libjansson-dev liblua5.4-dev
libsqlite3-dev libhttp-parser-dev check tzdata sqlite3"
# Benchmarks also use wrk (installed by `make bench` on demand, not needed for tests).
[ "${1:-}" = "--bench" ] && PKGS="$PKGS wrk"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "loyd: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "loyd: these packages are missing and installing them needs root:" >&2
        echo "    apt-get install$missing" >&2
        echo "Run that as root (or re-run this command as root), then try again." >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; refresh them when a package is not found.
if ! $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
echo "loyd: packages installed" >&2
