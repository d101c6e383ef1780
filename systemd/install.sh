#!/usr/bin/env bash
# Install edge-gateway as a systemd service from a wheelhouse, with no network.
#
#   sudo ./install.sh [--wheelhouse DIR] [--python PYTHON] [--serial] [--now]
#   sudo ./install.sh --uninstall [--purge]
#
# Both take --root DIR to work on a tree under DIR instead of this machine
# (to inspect what would be installed, or to prepare an image). Under --root the
# venv is built in place inside DIR, so its scripts name DIR's paths; nothing is
# started and systemctl only creates the enable link.
#
# What it does:
#   user      edge-gateway (group edge-gateway, member of dialout), via sysusers
#   venv      /opt/edge-gateway/venv, from the wheelhouse only (pip --no-index)
#   config    /etc/edge-gateway: the example files, never overwriting existing ones
#   data      /var/lib/edge-gateway (the store)
#   command   /usr/local/bin/edge-gateway, a link to the venv's command
#   unit      /etc/systemd/system/edge-gateway.service, enabled (not started
#             unless --now: edit the configuration first)
# --uninstall removes the unit, the venv and the command link, and keeps the
# configuration, the data and the user; --purge removes those as well.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NAME=edge-gateway
ROOT=/
WHEELHOUSE=""
PYTHON=python3
SERIAL=0
NOW=0
UNINSTALL=0
PURGE=0

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --serial) SERIAL=1; shift ;;
        --now) NOW=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

ROOT="$(realpath -m "$ROOT")"
[ "$ROOT" = / ] && R="" || R="$ROOT"
PREFIX="$R/opt/$NAME"
VENV="$PREFIX/venv"
CONFIG="$R/etc/$NAME"
STATE="$R/var/lib/$NAME"
UNIT_DIR="$R/etc/systemd/system"
SYSUSERS="$R/etc/sysusers.d/$NAME.conf"
COMMAND="$R/usr/local/bin/$NAME"
LIVE=0
[ -z "$R" ] && [ -d /run/systemd/system ] && LIVE=1

if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or with --root DIR for a scratch tree"
fi
if [ -n "$R" ] && [ ! -d "$ROOT" ]; then
    die "--root $ROOT: no such folder"
fi

say() { echo "install.sh: $*"; }

# The numeric id of a user or group as the target tree's own files define it.
id_in_tree() {
    local file="$1" name="$2"
    awk -F: -v n="$name" '$1 == n { print $3 }' "$R/etc/$file"
}

uninstall() {
    if [ "$LIVE" = 1 ]; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
    elif [ -n "$R" ]; then
        systemctl --root="$ROOT" disable "$NAME.service" 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/$NAME.service"
    rm -rf "$UNIT_DIR/$NAME.service.d" "$PREFIX"
    # Only our own link: a command of that name put there by hand stays.
    if [ "$(readlink "$COMMAND" 2>/dev/null)" = "/opt/$NAME/venv/bin/$NAME" ]; then
        rm -f "$COMMAND"
    fi
    [ "$LIVE" = 1 ] && systemctl daemon-reload
    if [ "$PURGE" = 1 ]; then
        rm -rf "$CONFIG" "$STATE"
        rm -f "$SYSUSERS"
        if [ -n "$(id_in_tree passwd "$NAME")" ]; then
            userdel --prefix "$ROOT" "$NAME" 2>/dev/null \
                || userdel "$NAME" 2>/dev/null || true
            groupdel --prefix "$ROOT" "$NAME" 2>/dev/null || true
        fi
        say "removed; configuration, data and the $NAME user are gone too"
    else
        say "removed; kept $CONFIG and $STATE (--purge removes them)"
    fi
}

create_user() {
    mkdir -p "$(dirname "$SYSUSERS")"
    install -m 0644 "$HERE/$NAME.sysusers" "$SYSUSERS"
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers --root="$ROOT" "$SYSUSERS"
    elif [ -z "$R" ]; then
        getent group "$NAME" >/dev/null || groupadd --system "$NAME"
        getent passwd "$NAME" >/dev/null || useradd --system --gid "$NAME" \
            --home-dir "/var/lib/$NAME" --shell /usr/sbin/nologin "$NAME"
        usermod --append --groups dialout "$NAME"
    else
        die "systemd-sysusers is needed to create the user under --root"
    fi
}

check_wheelhouse() {
    [ -n "$WHEELHOUSE" ] || WHEELHOUSE="$HERE/../wheelhouse"
    [ -d "$WHEELHOUSE" ] || die "no wheelhouse at $WHEELHOUSE (see README: Install as a service)"
    compgen -G "$WHEELHOUSE/edge_gateway-*.whl" >/dev/null \
        || die "$WHEELHOUSE holds no edge_gateway-*.whl"
    compgen -G "$WHEELHOUSE/pip-*.whl" >/dev/null \
        || die "$WHEELHOUSE holds no pip-*.whl"
}

install_venv() {
    local pip_wheel
    pip_wheel="$(compgen -G "$WHEELHOUSE/pip-*.whl" | sort -V | tail -n 1)"
    mkdir -p "$PREFIX"
    # Without pip in the venv: Debian's python3 can make one without the
    # python3-venv package, and nothing in the venv can install at run time.
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --without-pip "$VENV"
    # pip runs from its wheel, on the wheelhouse only: no network is used.
    "$VENV/bin/python" "$pip_wheel/pip" install --quiet --no-index \
        --disable-pip-version-check --find-links "$WHEELHOUSE" --upgrade "$NAME"
    "$VENV/bin/$NAME" --version >/dev/null \
        || die "the venv at $VENV does not run; is the wheelhouse complete?"
    install -m 0644 "$HERE/../README.md" "$PREFIX/README.md" 2>/dev/null || true
    mkdir -p "$PREFIX/config-example/tools"
    install -m 0644 "$HERE/../config/example/gateway.toml" "$PREFIX/config-example/"
    install -m 0644 "$HERE"/../config/example/tools/*.toml "$PREFIX/config-example/tools/"
}

install_config() {
    local gid="$1" file
    install -d -m 0750 -o 0 -g "$gid" "$CONFIG" "$CONFIG/tools"
    for file in $(cd "$PREFIX/config-example" && echo gateway.toml tools/*.toml); do
        if [ -e "$CONFIG/$file" ]; then
            say "kept existing $CONFIG/$file"
        else
            install -m 0640 -o 0 -g "$gid" "$PREFIX/config-example/$file" "$CONFIG/$file"
        fi
    done
}

install_unit() {
    install -d -m 0755 "$UNIT_DIR"
    install -m 0644 "$HERE/$NAME.service" "$UNIT_DIR/$NAME.service"
    if [ "$SERIAL" = 1 ]; then
        install -d -m 0755 "$UNIT_DIR/$NAME.service.d"
        install -m 0644 "$HERE/serial.conf" "$UNIT_DIR/$NAME.service.d/serial.conf"
    fi
    if [ "$LIVE" = 1 ]; then
        systemctl daemon-reload
        systemctl enable "$NAME.service"
        [ "$NOW" = 1 ] && systemctl restart "$NAME.service"
    else
        systemctl --root="$ROOT" enable "$NAME.service"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

check_wheelhouse
create_user
uid="$(id_in_tree passwd "$NAME")"
gid="$(id_in_tree group "$NAME")"
[ -n "$uid" ] && [ -n "$gid" ] || die "user $NAME was not created"
install_venv
install -d -m 0755 "$(dirname "$COMMAND")"
if [ -e "$COMMAND" ] && [ ! -L "$COMMAND" ]; then
    say "kept existing $COMMAND (not a link); use $VENV/bin/$NAME"
else
    ln -sfn "/opt/$NAME/venv/bin/$NAME" "$COMMAND"
fi
install_config "$gid"
install -d -m 0750 -o "$uid" -g "$gid" "$STATE"
install_unit
say "installed. Next: edit $CONFIG/gateway.toml and $CONFIG/tools/, then"
say "  $VENV/bin/$NAME check-config $CONFIG && systemctl restart $NAME"
