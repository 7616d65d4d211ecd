#!/usr/bin/env bash
# Run the POSIX conformance suite pjdfstest (Rust port) against a directory on
# an already-mounted file system, time-boxed, and write a machine-readable
# result.
#
# Usage:
#   tests/pjdfstest/run.sh MOUNTPOINT [options] [-- TEST_PATTERN...]
#
# Options:
#   --fs NAME             label for the run (default: the fs type of MOUNTPOINT)
#   --out FILE            result file (default: target/pjdfstest/results-NAME.tsv);
#                         the raw pjdfstest output goes to FILE.log
#   --config FILE         pjdfstest config (default: tests/pjdfstest/pjdfstest.toml)
#   --secondary DIR       a directory on another file system for the EXDEV tests
#                         (default: a private 16 MiB tmpfs, mounted and removed here)
#   --check-known FILE    exit non-zero only if a test fails, or is skipped, that
#                         FILE does not list (lines: "test::name  # reason"; blank
#                         lines and lines starting with # are ignored). Skips
#                         count because all 398 tests pass on ext4 with this
#                         config: a skip is a gap too (e.g. a noexec mount skips
#                         the ETXTBSY tests).
#   --no-remount          skip the 13 EROFS tests (by default they remount
#                         MOUNTPOINT read-only and back with `mount -o remount,ro`;
#                         this needs MOUNTPOINT to be the mount point itself, and
#                         is turned off with a warning when it is not)
#   --group-timeout SECS  time box of each test group (default 300)
#   --timeout SECS        time box of the whole run (default 900)
#   -v, --verbose         pass -v to pjdfstest
#
# Result file: one line per test, tab-separated: NAME  STATUS  DETAIL, where
# STATUS is pass, fail or skip (lines starting with # are comments). A group
# that hits its time box adds a "GROUP::<timeout>" fail line.
# The last line printed is "N passed, N failed, N skipped".
#
# Exit status: 0 if no test failed (with --check-known: if no test failed or
# was skipped that is not listed), 1 if one did, 2 on a usage or set-up error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

log() { printf '[pjdfstest] %s\n' "$*" >&2; }
die() { printf '[pjdfstest] ERROR: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# Test groups, each run in its own pjdfstest process with its own time box so a
# hang in one syscall cannot hide the results of the others. These are the
# top-level test modules of pjdfstest 0.2.2 on Linux (the errors/* cases are
# named after the syscall, e.g. link::exdev_target); they cover all 398 tests
# (checked against one run with the pattern "::"). Update the list when
# PJDFSTEST_VERSION in install-deps.sh changes.
GROUPS_ALL=(chmod chown ftruncate link mkdir mkfifo mknod open posix_fallocate
    rename rmdir symlink truncate unlink utimensat)

mp="" fs_name="" out="" config="$here/pjdfstest.toml" secondary="" known=""
allow_remount=1 group_timeout=300 total_timeout=900 verbose=() patterns=()
while (($#)); do
    case "$1" in
        --fs) fs_name="${2:?--fs needs a value}"; shift 2 ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        --config) config="${2:?--config needs a value}"; shift 2 ;;
        --secondary) secondary="${2:?--secondary needs a value}"; shift 2 ;;
        --check-known) known="${2:?--check-known needs a value}"; shift 2 ;;
        --no-remount) allow_remount=0; shift ;;
        --allow-remount) allow_remount=1; shift ;;
        --group-timeout) group_timeout="${2:?}"; shift 2 ;;
        --timeout) total_timeout="${2:?}"; shift 2 ;;
        -v|--verbose) verbose=(-v); shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; patterns=("$@"); break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [[ -z "$mp" ]] || die "more than one MOUNTPOINT given ($mp, $1)"; mp="$1"; shift ;;
    esac
done
[[ -n "$mp" ]] || { usage >&2; die "MOUNTPOINT is required"; }
# Every probe of MOUNTPOINT is time-boxed: a hung file system must not hang us.
t30() { timeout -k 5 30 "$@"; }
t30 test -d "$mp" || die "$mp is not a directory (or does not answer within 30s)"
mp="$(cd "$mp" && pwd -P)"
[[ -f "$config" ]] || die "config $config not found"
config="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
[[ "$group_timeout" =~ ^[0-9]+$ && "$total_timeout" =~ ^[0-9]+$ ]] || die "timeouts are whole seconds"
if [[ -n "$known" ]]; then
    [[ -f "$known" ]] || die "known-failures file $known not found"
fi

# ------------------------------------------------------------------ checks
find_pjdfstest() {
    local c
    for c in "${PJDFSTEST:-}" "$(command -v pjdfstest 2>/dev/null || true)" \
             "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" /root/.cargo/bin/pjdfstest; do
        [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
    done
    return 1
}
pjd="$(find_pjdfstest)" || die "pjdfstest not found: run tests/pjdfstest/install-deps.sh (or set PJDFSTEST=/path/to/pjdfstest)"

if [[ $(id -u) -ne 0 ]]; then
    log "WARNING: not root: every test that needs root (chown, user switching) will be skipped"
fi
fstype="$(t30 stat -f -c %T "$mp")" || die "statfs on $mp failed or hung"
[[ -n "$fs_name" ]] || fs_name="$fstype"
[[ "$fs_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "--fs NAME may only hold letters, digits, . _ -"
[[ -n "$out" ]] || out="$repo/target/pjdfstest/results-$fs_name.tsv"
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd -P)/$(basename "$out")"
rawlog="$out.log"

# The dummy users named in the config must exist, and must be able to reach
# MOUNTPOINT (every directory above it needs o+x).
mapfile -t dummy_users < <(sed -n '/^\[dummy_auth\]/,/^\[/p' "$config" |
    grep -o '\[ *"[^"]*" *, *"[^"]*" *\]' | sed 's/\[ *"\([^"]*\)".*/\1/')
for u in "${dummy_users[@]}"; do
    getent passwd "$u" >/dev/null || die "user $u (from $config) does not exist: run tests/pjdfstest/install-deps.sh"
    if [[ $(id -u) -eq 0 ]] && ! t30 runuser -u "$u" -- test -x "$mp" 2>/dev/null; then
        die "user $u cannot reach $mp: give every directory above it o+x (chmod 755)"
    fi
done
probe="$mp/.pjdfstest-probe.$$"
{ t30 touch "$probe" && t30 rm -f "$probe"; } 2>/dev/null || die "cannot create files in $mp (or it hangs)"

# ------------------------------------------------------------------ set-up
tmp="$(mktemp -d /tmp/mafs-pjdfstest.XXXXXX)"
sec_mounted=""
cleanup() {
    local rc=$?
    if [[ -n "$sec_mounted" ]]; then
        umount "$sec_mounted" 2>/dev/null || umount -l "$sec_mounted" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "$secondary" ]]; then
    secondary="$tmp/secondary"
    mkdir -p "$secondary"
    if mount -t tmpfs -o size=16m,mode=0755 mafs-pjd-secondary "$secondary" 2>/dev/null; then
        sec_mounted="$secondary"
    else
        die "cannot mount a tmpfs for the EXDEV tests (not root?): pass --secondary DIR on another file system"
    fi
fi
[[ -d "$secondary" ]] || die "secondary $secondary is not a directory"
if [[ "$(t30 stat -c %d "$secondary")" == "$(t30 stat -c %d "$mp")" ]]; then
    die "secondary $secondary is on the same file system as $mp"
fi
chmod 0755 "$tmp"

# The EROFS tests run `mount -o remount,ro` on the mount point that holds the
# test directory, and back to rw. Never let that hit / or a file system we were
# not pointed at: only when MOUNTPOINT is itself a mount point.
if ((allow_remount)); then
    if [[ "$mp" == / ]] || ! t30 mountpoint -q "$mp"; then
        log "WARNING: $mp is not a mount point (or is /): EROFS tests skipped (they would remount $(findmnt -n -o TARGET -T "$mp") read-only)"
        allow_remount=0
    fi
fi
cfg="$tmp/pjdfstest.toml"
sed "s/^allow_remount *=.*/allow_remount = $( ((allow_remount)) && echo true || echo false)/" "$config" > "$cfg"
# pjdfstest runs plain `mount` from PATH. For a FUSE mount, mount(8) would
# hand "remount" to /sbin/mount.fuse* helpers, which fail (they try to start
# the file system again); -i (--internal-only) makes it the plain mount(2)
# remount that the kernel supports for FUSE too.
real_mount="$(command -v mount)"
mkdir -p "$tmp/bin"
cat > "$tmp/bin/mount" <<WRAP
#!/bin/sh
exec $real_mount -i "\$@"
WRAP
chmod 0755 "$tmp/bin/mount"
export PATH="$tmp/bin:$PATH"

# ------------------------------------------------------------------ run
groups=("${GROUPS_ALL[@]}")
if ((${#patterns[@]})); then groups=("${patterns[@]}"); fi

log "pjdfstest $("$pjd" --version 2>/dev/null | awk '{print $2}') on $mp ($fstype) as '$fs_name'"
log "config $config, secondary fs $secondary, allow_remount=$allow_remount"
log "time box: ${group_timeout}s per group, ${total_timeout}s in all; raw log $rawlog"

: > "$rawlog"
results="$tmp/results.tsv"
: > "$results"
start=$SECONDS

# Parse pjdfstest's output: a result line "NAME   ok|FAILED|skipped|...", then
# tab-indented detail lines (failure message, skip reasons, backtrace).
parse() {
    sed 's/\x1b\[[0-9;]*m//g' | awk -v prefix="$1" '
        function flush() {
            if (name != "") { gsub(/\t/, " ", detail); print name "\t" status "\t" detail }
            name = ""; detail = ""
        }
        match($0, /^[^ \t]+ +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/) {
            flush()
            n = $1; st = $0; sub(/^[^ \t]+ +/, "", st)
            if (prefix != "" && index(n, prefix) != 1) { next }
            name = n
            status = (st == "ok") ? "pass" : (st == "skipped") ? "skip" : \
                     (st == "failed as expected") ? "fail" : \
                     (st == "PASSED UNEXPECTEDLY") ? "pass" : "fail"
            next
        }
        /^\t/ && name != "" && detail == "" { d = $0; sub(/^\t+/, "", d); detail = d; next }
        /^Summary:/ { flush() }
        END { flush() }'
}

for g in "${groups[@]}"; do
    left=$((total_timeout - (SECONDS - start)))
    if ((left <= 0)); then
        printf '%s::<not run>\tfail\toverall time box of %ss used up before this group\n' "$g" "$total_timeout" >> "$results"
        log "group $g: NOT RUN (overall time box used up)"
        continue
    fi
    tb=$((group_timeout < left ? group_timeout : left))
    # A name filter "G::" (substring match); results are then kept only when
    # the name starts with it, so a group never counts another's tests.
    if ((${#patterns[@]})); then pat="$g"; prefix=""; else pat="$g::"; prefix="$g::"; fi
    glog="$tmp/group.log"
    printf '===== group %s (pattern %s, time box %ss)\n' "$g" "$pat" "$tb" >> "$rawlog"
    set +e
    (cd "$mp" && NO_COLOR=1 RUST_BACKTRACE=0 timeout -k 15 "$tb" \
        "$pjd" -c "$cfg" -p "$mp" -s "$secondary" "${verbose[@]}" -- "$pat") > "$glog" 2>&1
    rc=$?
    set -e
    cat "$glog" >> "$rawlog"
    parse "$prefix" < "$glog" >> "$results"
    if ((rc == 124 || rc == 137)); then
        printf '%s::<timeout>\tfail\tgroup killed after %ss time box (tests after the last reported one did not run)\n' "$g" "$tb" >> "$results"
        log "group $g: TIMED OUT after ${tb}s"
    fi
    # A test killed between its remount,ro and remount,rw leaves MOUNTPOINT
    # read-only; put it back so the next groups test the file system.
    if ((allow_remount)) && [[ ",$(findmnt -n -o OPTIONS --mountpoint "$mp" 2>/dev/null)," == *,ro,* ]]; then
        log "group $g left $mp read-only: remounting rw"
        t30 "$real_mount" -i -o remount,rw "$mp" || log "WARNING: remount,rw of $mp failed"
    fi
    if ((rc == 124 || rc == 137)); then
        :
    elif ((rc != 0 && rc != 1)); then
        # 1 = some test failed (anyhow error from main); anything else is a crash.
        if ! grep -q '^Summary' <(sed 's/\x1b\[[0-9;]*m//g' "$glog"); then
            printf '%s::<crash>\tfail\tpjdfstest exited with status %s without a summary: %s\n' \
                "$g" "$rc" "$(tail -n 1 "$glog" | tr '\t' ' ')" >> "$results"
            log "group $g: pjdfstest exited $rc without a summary (see $rawlog)"
        fi
    elif ! grep -q '^Summary' <(sed 's/\x1b\[[0-9;]*m//g' "$glog"); then
        printf '%s::<crash>\tfail\tpjdfstest printed no summary: %s\n' \
            "$g" "$(tail -n 1 "$glog" | tr '\t' ' ')" >> "$results"
        log "group $g: no summary (see $rawlog)"
    fi
    counts="$(awk -F'\t' -v g="$g" '{c[$2]++} END {printf "%d passed, %d failed, %d skipped", c["pass"], c["fail"], c["skip"]}' \
        < <(parse "$prefix" < "$glog"))"
    log "group $g: $counts ($((SECONDS - start))s so far)"
done

# A test is listed once even if two groups' patterns matched it.
sorted="$tmp/sorted.tsv"
awk -F'\t' '!seen[$1]++' "$results" > "$sorted"
{
    printf '# pjdfstest results: fs=%s fstype=%s path=%s\n' "$fs_name" "$fstype" "$mp"
    printf '# pjdfstest %s, config %s, allow_remount=%s, %s, %ss\n' \
        "$("$pjd" --version 2>/dev/null | awk '{print $2}')" "${config#"$repo"/}" "$allow_remount" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - start))"
    printf '# name\tstatus\tdetail\n'
    cat "$sorted"
} > "$out"

npass=$(awk -F'\t' '$2=="pass"' "$sorted" | wc -l)
nfail=$(awk -F'\t' '$2=="fail"' "$sorted" | wc -l)
nskip=$(awk -F'\t' '$2=="skip"' "$sorted" | wc -l)

rc=0
if ((nfail)); then
    log "failed tests:"
    awk -F'\t' '$2=="fail" {printf "  %s: %s\n", $1, $3}' "$sorted" >&2
    rc=1
fi

if [[ -n "$known" ]]; then
    known_names="$tmp/known"
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$known" | grep -v '^$' | sort -u > "$known_names" || true
    unexpected="$(awk -F'\t' 'NR==FNR {k[$0]=1; next} $2!="pass" && !($1 in k) {print $1 " (" $2 ": " $3 ")"}' "$known_names" "$sorted")"
    fixed="$(awk -F'\t' 'NR==FNR {k[$0]=1; next} $2=="pass" && ($1 in k) {print $1}' "$known_names" "$sorted")"
    # A listed name that this run did not produce (a stale entry, a group
    # pseudo-name such as rename::<timeout>) is only reported, never fatal.
    absent="$(awk -F'\t' 'NR==FNR {r[$1]=1; next} !($0 in r) {print}' "$sorted" "$known_names")"
    if [[ -n "$absent" ]]; then
        log "listed in $known but not in this run's results:"
        sed 's/^/  /' <<< "$absent" >&2
    fi
    if [[ -n "$fixed" ]]; then
        log "listed in $known but now passing (remove them from the list):"
        sed 's/^/  /' <<< "$fixed" >&2
    fi
    if [[ -n "$unexpected" ]]; then
        log "REGRESSION: failing or skipped tests not listed in $known:"
        sed 's/^/  /' <<< "$unexpected" >&2
        rc=1
    else
        log "every failure and skip is listed in $known"
        rc=0
    fi
fi

log "results in $out (raw output $rawlog)"
echo "$npass passed, $nfail failed, $nskip skipped"
exit "$rc"
