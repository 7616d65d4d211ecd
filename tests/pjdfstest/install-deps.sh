#!/usr/bin/env bash
# Install everything the POSIX conformance harness (pjdfstest) and the other
# mafs tests need, on Debian 12, as root. Idempotent: a second run does nothing
# but check.
#
#   tests/pjdfstest/install-deps.sh            # apt packages + pjdfstest + users
#   PJDFSTEST_VERSION=0.2.2 tests/pjdfstest/install-deps.sh
#
# Environment:
#   PJDFSTEST_VERSION   crate version to install (default 0.2.2)
#   PJDFSTEST_ROOT      cargo --root for the install (default: cargo's default,
#                       i.e. ~/.cargo, binary in ~/.cargo/bin)
#   SKIP_APT=1          do not touch apt (packages already there)
#   SKIP_PJDFSTEST=1    do not build pjdfstest
#   CARGO_BUILD_JOBS    parallel jobs of the pjdfstest build (default: nproc;
#                       the build takes ~4 min on one core)
set -euo pipefail

PJDFSTEST_VERSION="${PJDFSTEST_VERSION:-0.2.2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, useradd)"

# ---------------------------------------------------------------- apt packages
# libacl1-dev: pjdfstest links libacl (exacl crate); acl/attr: getfacl/setfattr
# for the other tests; fio: benchmarks; e2fsprogs: mkfs.ext4 for the baseline;
# util-linux: mount/losetup; libcap2-bin: setcap/getcap for the set-ID tests;
# pkg-config + build-essential: building pjdfstest.
APT_PKGS=(libacl1-dev acl attr fio e2fsprogs python3 util-linux
          pkg-config build-essential ca-certificates passwd libcap2-bin)

if [[ "${SKIP_APT:-0}" != 1 ]]; then
    missing=()
    for p in "${APT_PKGS[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]})); then
        log "installing apt packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "apt packages already installed"
    fi
fi

# ---------------------------------------------------------------- pjdfstest
# The Rust port of pjdfstest (crate "pjdfstest", binary "pjdfstest").
find_pjdfstest() {
    local c
    for c in ${PJDFSTEST_ROOT:+"$PJDFSTEST_ROOT/bin/pjdfstest"} \
             "$(command -v pjdfstest 2>/dev/null || true)" \
             "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest"; do
        [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
    done
    return 1
}

if [[ "${SKIP_PJDFSTEST:-0}" != 1 ]]; then
    have=""
    if bin="$(find_pjdfstest)"; then
        have="$("$bin" --version 2>/dev/null | awk '{print $2}')"
    fi
    if [[ -n "$have" && "$have" == "$PJDFSTEST_VERSION" ]]; then
        log "pjdfstest $have already installed: $bin"
    else
        [[ -n "$have" ]] && log "found pjdfstest $have at $bin, want $PJDFSTEST_VERSION: reinstalling"
        if ! command -v cargo >/dev/null && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
            export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        fi
        command -v cargo >/dev/null || die "cargo not found on PATH (need a Rust toolchain >= 1.85)"
        tmp_target="$(mktemp -d /tmp/pjdfstest-target.XXXXXX)"
        trap 'rm -rf "$tmp_target"' EXIT
        log "cargo install pjdfstest@$PJDFSTEST_VERSION (slow on 2 cores; target dir $tmp_target)"
        root_args=()
        [[ -n "${PJDFSTEST_ROOT:-}" ]] && root_args=(--root "$PJDFSTEST_ROOT")
        CARGO_TARGET_DIR="$tmp_target" cargo install --locked --force --jobs "${CARGO_BUILD_JOBS:-$(nproc)}" \
            "${root_args[@]}" pjdfstest --version "$PJDFSTEST_VERSION"
        bin="$(find_pjdfstest)" || die "pjdfstest built but not found"
        log "installed $bin"
    fi
fi

# ---------------------------------------------------------------- dummy users
# pjdfstest switches to two unprivileged users for its permission tests; the
# names are in tests/pjdfstest/pjdfstest.toml ([dummy_auth] entries), one group
# per user with the same name.
for name in mafs-pjd1 mafs-pjd2; do
    if ! getent group "$name" >/dev/null; then
        groupadd --system "$name"
        log "created group $name"
    fi
    if ! getent passwd "$name" >/dev/null; then
        useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin \
                --gid "$name" --comment "pjdfstest dummy user" "$name"
        log "created user $name"
    fi
    # pjdfstest insists that the user's primary group is the one named with it.
    [[ "$(id -g "$name")" == "$(getent group "$name" | cut -d: -f3)" ]] ||
        die "user $name exists but its primary group is not $name (usermod -g $name $name)"
done
log "users/groups mafs-pjd1, mafs-pjd2 present"
log "done"
