#!/usr/bin/env bash
# Builds the herd container image FROM scratch out of a herd binary compiled on
# this machine: the binary, the shared libraries `ldd` reports for it (dynamic
# loader included, each at its own path), a minimal /etc with a non-root `herd`
# user (uid/gid 10001), /tmp, and /var/lib/herd owned by herd.
#
# Usage: deploy/image/build.sh [-t IMAGE] [BINARY]
#   BINARY  the herd binary (default: $HERD_BINARY, else target/release/herd
#           under the repository root); a relative path is taken from the
#           current directory.
#   IMAGE   name:tag to build (default: $HERD_IMAGE, else herd:dev).
#
# Safe to run again: each run assembles a fresh build context in a temporary
# directory and re-tags the image. Works from any directory.
set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "build.sh: $*" >&2
    exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

image=${HERD_IMAGE:-herd:dev}
binary=${HERD_BINARY:-}
while (($# > 0)); do
    case $1 in
        -t | --tag)
            (($# >= 2)) || die "$1 needs an image name"
            image=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z ${binary_arg:-} ]] || die "more than one binary given"
            binary_arg=$1
            shift
            ;;
    esac
done
binary=${binary_arg:-$binary}
binary=${binary:-$root/target/release/herd}

[[ -f $binary ]] || die "no herd binary at $binary (build it with: cargo build --release -p herd-cli)"
[[ -x $binary ]] || die "$binary is not executable"
command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed"

context=$(mktemp -d "${TMPDIR:-/tmp}/herd-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs

install -d -m 0755 "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/var/lib"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0750 "$context/state" "$context/tls"
install -m 0755 "$binary" "$rootfs/usr/local/bin/herd"

# Shared libraries. ldd prints `name => /path (addr)` for libraries, `/path
# (addr)` for the loader and `name (addr)` for the vDSO, which has no file.
if ! deps=$(ldd "$binary" 2>&1); then
    if [[ $deps == *"not a dynamic executable"* || $deps == *"statically linked"* ]]; then
        deps=""
    else
        die "ldd $binary failed: $deps"
    fi
fi
if grep -q "not found" <<<"$deps"; then
    die "$binary needs libraries this machine lacks:"$'\n'"$deps"
fi
libs=0
while read -r first _ third _; do
    lib=""
    if [[ $first == /* ]]; then
        lib=$first
    elif [[ $third == /* ]]; then
        lib=$third
    fi
    [[ -n $lib ]] || continue
    # -L: copy the file a symlink points to, under the name the binary uses.
    install -d -m 0755 "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    chmod 0755 "$rootfs$lib"
    libs=$((libs + 1))
done <<<"$deps"

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
herd:x:10001:10001:herd:/var/lib/herd:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
herd:x:10001:
EOF
# Resolve names from /etc/hosts, then DNS (Docker's embedded DNS resolves the
# other members' service names); glibc has both built in.
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"

cp "$here/Dockerfile" "$context/Dockerfile"

echo "build.sh: building $image from $binary ($libs shared libraries)" >&2
docker build --tag "$image" "$context"
echo "build.sh: built $image" >&2
