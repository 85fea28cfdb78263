#!/usr/bin/env bash
# setup-nix.sh - install Debian's nix-bin and configure a single-user Nix
# store for root that needs no daemon and no network.
#
# Afterwards, as root, these work offline:
#   nix-store --add DIR            (prints /nix/store/<hash>-<name>)
#   nix-store --dump PATH > F.nar
#   nix-store --restore DIR < F.nar
#   nix hash path PATH
#   nix-store --delete PATH        (removes an added path again)
#
# /etc/nix/nix.conf is overwritten (a differing previous file is kept once
# as /etc/nix/nix.conf.orig). Safe to re-run: apt is skipped when nix-bin is
# already installed, and the config is only rewritten when it differs.
#
# Exit status: 0 nix works, 1 other failure, 2 package registry unreachable.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

readonly NIX_CONF_DIR_=/etc/nix
readonly NIX_CONF_FILE=/etc/nix/nix.conf
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export LC_ALL=C

log()  { printf 'setup-nix: %s\n' "$*" >&2; }
die()  { local code=$1; shift; printf 'setup-nix: %s\n' "$*" >&2; exit "$code"; }

TMP=""
# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        chmod -R u+w "$TMP" 2>/dev/null || true
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
TMP=$(mktemp -d "${TMPDIR:-/tmp}/setup-nix.XXXXXX")

[ "$(id -u)" -eq 0 ] || die 1 "must run as root (single-user store in /nix is owned by root)"

# Registry-unreachable symptoms in apt output.
readonly NET_ERR_RE='Failed to fetch|Could not resolve|Could not connect|Temporary failure resolving|Connection failed|Unable to connect|Network is unreachable|No route to host|Connection timed out|Unable to fetch some archives'

nix_bin_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' nix-bin 2>/dev/null || true)" = installed ] &&
        command -v nix-store >/dev/null 2>&1 && command -v nix >/dev/null 2>&1
}

first_net_error() {  # print one line describing the network failure in log $1
    { grep -E '^[EW]: Failed to fetch' "$1" || grep -E "$NET_ERR_RE" "$1"; } |
        grep -vE 'Some index files failed' | head -n 1 |
        sed -e 's/^[EW]: //' -e 's/[[:space:]]\+/ /g' -e 's/^ //'
}

install_nix_bin() {
    command -v apt-get >/dev/null 2>&1 || die 1 "apt-get not found (this script targets Debian)"
    local apt_opts=(-q -o DPkg::Lock::Timeout=300)
    local update_log="$TMP/apt-update.log" install_log="$TMP/apt-install.log"

    log "running apt-get update"
    local update_rc=0
    apt-get "${apt_opts[@]}" update >"$update_log" 2>&1 || update_rc=$?
    local update_neterr=""
    update_neterr=$(first_net_error "$update_log" || true)

    # With a fetch error, carry on only if some (possibly cached) package list
    # still offers nix-bin; the download below then decides.
    local candidate
    candidate=$(apt-cache policy nix-bin 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        if [ -n "$update_neterr" ]; then
            die 2 "cannot reach the Debian package registry: $update_neterr"
        fi
        if [ "$update_rc" -ne 0 ]; then
            tail -n 20 "$update_log" >&2
            die 1 "apt-get update failed (exit $update_rc)"
        fi
        die 1 "no installable nix-bin package in the configured apt sources"
    fi
    [ -z "$update_neterr" ] || log "warning: apt-get update reported: $update_neterr"

    # --no-install-recommends: the recommended nix-setup-systemd would add a
    # daemon/systemd setup and own /etc/nix/nix.conf as a dpkg conffile.
    log "installing nix-bin $candidate"
    local install_rc=0
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
        --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        nix-bin >"$install_log" 2>&1 || install_rc=$?
    if [ "$install_rc" -ne 0 ]; then
        local neterr
        neterr=$(first_net_error "$install_log" || true)
        [ -z "$neterr" ] || die 2 "cannot reach the Debian package registry: $neterr"
        tail -n 20 "$install_log" >&2
        die 1 "apt-get install nix-bin failed (exit $install_rc)"
    fi
    nix_bin_installed || die 1 "nix-bin installed but nix/nix-store not found on PATH"
}

write_config() {
    local want="$TMP/nix.conf"
    cat >"$want" <<'CONF'
# Single-user, daemon-less Nix for root; no network use.
# Talk to the local store in /nix directly, never to a nix-daemon
# (overrides NIX_REMOTE=daemon from the environment).
store = local
# No build sandbox and no nixbld build users.
sandbox = false
build-users-group =
# Never try binary caches.
substituters =
# Enable `nix hash path` etc. without --extra-experimental-features.
experimental-features = nix-command
CONF
    mkdir -p "$NIX_CONF_DIR_"
    if [ -f "$NIX_CONF_FILE" ] && cmp -s "$want" "$NIX_CONF_FILE"; then
        log "$NIX_CONF_FILE already up to date"
        return
    fi
    if [ -e "$NIX_CONF_FILE" ] && [ ! -e "$NIX_CONF_FILE.orig" ]; then
        cp -p "$NIX_CONF_FILE" "$NIX_CONF_FILE.orig"
        log "saved previous config as $NIX_CONF_FILE.orig"
    fi
    install -m 0644 "$want" "$NIX_CONF_FILE.tmp.$$"
    mv -f "$NIX_CONF_FILE.tmp.$$" "$NIX_CONF_FILE"
    log "wrote $NIX_CONF_FILE"
}

verify() {
    local v
    for v in NIX_CONFIG NIX_CONF_DIR NIX_USER_CONF_FILES NIX_STORE_DIR NIX_STATE_DIR; do
        [ -z "${!v:-}" ] || log "warning: $v is set in the environment and may override $NIX_CONF_FILE"
    done

    local src="$TMP/nix-selftest"
    mkdir -p "$src/sub"
    printf 'setup-nix self-test %s %s %s\n' "$(date +%s%N)" "$$" "$RANDOM" >"$src/token"
    printf '#!/bin/sh\nexit 0\n' >"$src/sub/run.sh"
    chmod 0755 "$src/sub/run.sh"
    : >"$src/sub/empty"
    ln -s ../token "$src/sub/link"

    local out
    out=$(nix-store --add "$src" 2>"$TMP/nix.err") || { cat "$TMP/nix.err" >&2; die 1 "nix-store --add failed"; }
    [[ "$out" =~ ^/nix/store/[0-9a-z]{32}-nix-selftest$ ]] || die 1 "unexpected nix-store --add output: $out"

    local rc=0
    nix-store --dump "$out" >"$TMP/selftest.nar" 2>"$TMP/nix.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$TMP/nix.err" >&2; nix-store --delete "$out" >/dev/null 2>&1 || true
        die 1 "nix-store --dump failed"
    fi
    [ "$(head -c 21 "$TMP/selftest.nar" | tail -c 13)" = nix-archive-1 ] || die 1 "nix-store --dump did not produce a NAR"

    nix-store --restore "$TMP/restored" <"$TMP/selftest.nar" 2>"$TMP/nix.err" ||
        { cat "$TMP/nix.err" >&2; die 1 "nix-store --restore failed"; }
    nix-store --dump "$TMP/restored" | cmp -s - "$TMP/selftest.nar" ||
        die 1 "restored tree differs from the added one"

    local h_cli h_db
    h_cli=$(nix --extra-experimental-features nix-command hash path --base32 "$out" 2>"$TMP/nix.err") ||
        { cat "$TMP/nix.err" >&2; die 1 "nix hash path failed"; }
    h_db=$(nix-store --query --hash "$out")
    [ "sha256:$h_cli" = "$h_db" ] || die 1 "nix hash path ($h_cli) disagrees with the store database ($h_db)"

    nix-store --delete "$out" >/dev/null 2>"$TMP/nix.err" ||
        { cat "$TMP/nix.err" >&2; die 1 "nix-store --delete $out failed"; }
    [ ! -e "$out" ] || die 1 "$out still exists after nix-store --delete"
}

if nix_bin_installed; then
    log "nix-bin $(dpkg-query -W -f='${Version}' nix-bin) already installed; skipping apt-get"
else
    install_nix_bin
fi
write_config
verify
log "OK: $(nix --version) works as root with a local store (add/dump/restore/hash/delete verified)"
exit 0
