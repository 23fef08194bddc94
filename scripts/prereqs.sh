#!/bin/sh
# What the build needs besides Rust: a C compiler, make and perl (librdkafka and
# SQLite are compiled from source), pkg-config with the OpenSSL and zlib headers
# (linked from the system), and Python 3.9+ with its venv module.
#
# Missing Debian packages are installed with apt-get when this runs as root or
# sudo works (as `make browser` does for Chromium); otherwise it says exactly
# what to install and fails. Usage: scripts/prereqs.sh [PYTHON]
set -u
PY="${1:-python3}"
failed=
packages=

command -v cargo >/dev/null 2>&1 || {
    echo "missing: a Rust toolchain (cargo): install it from https://rustup.rs, then open a new shell"
    failed=1
}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null || {
    echo "missing: Python 3.9 or newer as '$PY' (give another one: make PY=python3.X ...)"
    failed=1
}
command -v cc >/dev/null 2>&1 || packages="$packages gcc"
command -v make >/dev/null 2>&1 || packages="$packages make"
command -v perl >/dev/null 2>&1 || packages="$packages perl"
command -v pkg-config >/dev/null 2>&1 || packages="$packages pkg-config"
pkg-config --exists openssl 2>/dev/null || packages="$packages libssl-dev"
pkg-config --exists zlib 2>/dev/null || packages="$packages zlib1g-dev"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || packages="$packages python3-venv"

if [ -n "$packages" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "installing the build's prerequisites with apt-get:$packages"
        $sudo apt-get update -q &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages || failed=1
    else
        echo "missing:$packages"
        echo "install them (Debian/Ubuntu): sudo apt-get install$packages"
        echo "(elsewhere: a C compiler, make, perl, pkg-config, OpenSSL and zlib headers, Python's venv)"
        failed=1
    fi
fi
[ -z "$failed" ]
