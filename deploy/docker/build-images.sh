#!/usr/bin/env bash
# Builds the two images the compose file and the Kubernetes manifests use, without any registry:
#
#   muster-node:latest       the `muster` release binary + the shared libraries it links + busybox
#   muster-mosquitto:latest  Debian's mosquitto binary + its shared libraries + busybox
#
# (each also tagged with the short git commit). Both start `FROM scratch`: the root filesystem is
# staged under target/docker/ from files on this machine, so nothing is pulled. Needs: Docker,
# cargo, ldd, and on a Debian/Ubuntu host apt-get (busybox-static is downloaded as a .deb, not
# installed; mosquitto is installed with apt-get if it is not already, as .ci/run does).
#
#   deploy/docker/build-images.sh               # cargo build --release -p muster-cli, then both
#   deploy/docker/build-images.sh --skip-cargo  # reuse target/release/muster as it is
#
# Environment: MUSTER_IMAGE (default muster-node), MOSQUITTO_IMAGE (default muster-mosquitto),
# CARGO_TARGET_DIR (honoured as cargo does), REVISION (the tag; default: git's short commit).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT="$PWD"
MUSTER_IMAGE="${MUSTER_IMAGE:-muster-node}"
MOSQUITTO_IMAGE="${MOSQUITTO_IMAGE:-muster-mosquitto}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
STAGE="$TARGET/docker"
SKIP_CARGO=0
for arg in "$@"; do
    case "$arg" in
        --skip-cargo) SKIP_CARGO=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-images: $1 is required" >&2; exit 1; }; }
need docker
need ldd
need dpkg-deb

# The legacy builder handles `FROM scratch` with no registry and no buildx plugin.
export DOCKER_BUILDKIT=0

if [ -z "${REVISION:-}" ]; then
    REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    # Built from a work tree with uncommitted changes: say so in the tag.
    if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        REVISION="$REVISION-dirty"
    fi
fi
# All staged files get the commit's time, so two builds of one commit stage identical trees.
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

# --- the binary -----------------------------------------------------------------------------
if [ "$SKIP_CARGO" = 0 ]; then
    need cargo
    echo "== cargo build --release -p muster-cli"
    cargo build --release --locked -p muster-cli
fi
BIN="$TARGET/release/muster"
[ -x "$BIN" ] || { echo "build-images: $BIN is missing (run without --skip-cargo)" >&2; exit 1; }

# --- helpers --------------------------------------------------------------------------------

# copy_with_libs FILE DEST_IN_ROOTFS ROOTFS: the file and every shared library ldd lists for it
# (the dynamic loader too), each at the path ldd names, symlinks resolved.
copy_with_libs() {
    local file="$1" dest="$2" rootfs="$3"
    install -D -m 0755 "$file" "$rootfs$dest"
    local libs
    if ! libs="$(ldd "$file" 2>/dev/null)"; then
        echo "   $file is static: no libraries to copy"
        return 0
    fi
    echo "$libs" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | sort -u |
        while read -r lib; do
            install -D -m 0644 "$(readlink -f "$lib")" "$rootfs$lib"
        done
    # The loader must stay executable.
    echo "$libs" | awk '/^[[:space:]]*\// {print $1}' | while read -r ld; do
        chmod 0755 "$rootfs$ld"
    done
}

# busybox-static from Debian, downloaded once into target/docker/cache (not installed).
busybox_bin() {
    local cache="$STAGE/cache"
    mkdir -p "$cache"
    if ! ls "$cache"/busybox-static_*.deb >/dev/null 2>&1; then
        need apt-get
        echo "== apt-get download busybox-static" >&2
        (cd "$cache" && apt-get download busybox-static >&2 2>/dev/null) || {
            apt-get update -qq >&2 && (cd "$cache" && apt-get download busybox-static >&2)
        }
    fi
    local deb
    deb="$(ls "$cache"/busybox-static_*.deb | head -n 1)"
    rm -rf "$cache/busybox"
    dpkg-deb -x "$deb" "$cache/busybox"
    echo "$cache/busybox/bin/busybox"
}

# base_rootfs ROOTFS USER UID: /etc files, /tmp, busybox with a few applet links.
base_rootfs() {
    local rootfs="$1" user="$2" uid="$3"
    mkdir -p "$rootfs/etc" "$rootfs/bin" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:%s:%s:%s:/data:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        "$user" "$uid" "$uid" "$user" >"$rootfs/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\nnogroup:x:65534:\n' "$user" "$uid" >"$rootfs/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
    install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
    for applet in sh ls cat wget nc ps df du env id sleep ip; do
        ln -sf busybox "$rootfs/bin/$applet"
    done
}

normalise_times() {
    find "$1" -exec touch -h -d "@$EPOCH" {} +
}

BUSYBOX="$(busybox_bin)"
BUSYBOX_VERSION="$(dpkg-deb -f "$(ls "$STAGE"/cache/busybox-static_*.deb | head -n 1)" Version)"

# --- muster-node ----------------------------------------------------------------------------
echo "== staging $MUSTER_IMAGE"
CTX="$STAGE/muster"
rm -rf "$CTX"
mkdir -p "$CTX/rootfs" "$CTX/data"
base_rootfs "$CTX/rootfs" muster 10001
copy_with_libs "$BIN" /usr/local/bin/muster "$CTX/rootfs"
normalise_times "$CTX"
MUSTER_VERSION="$("$BIN" --version 2>/dev/null | awk '{print $NF}' || echo unknown)"
echo "== docker build $MUSTER_IMAGE ($MUSTER_VERSION, commit $REVISION)"
docker build -q -f "$ROOT/deploy/docker/Dockerfile" \
    --label "org.opencontainers.image.title=muster" \
    --label "org.opencontainers.image.version=$MUSTER_VERSION" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "busybox.version=$BUSYBOX_VERSION" \
    -t "$MUSTER_IMAGE:latest" -t "$MUSTER_IMAGE:$REVISION" "$CTX"

# --- muster-mosquitto -----------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    need apt-get
    echo "== apt-get install mosquitto (its binary and libraries go into the image)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO_BIN="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
MOSQUITTO_VERSION="$(dpkg-query -W -f '${Version}' mosquitto 2>/dev/null || echo unknown)"
echo "== staging $MOSQUITTO_IMAGE (mosquitto $MOSQUITTO_VERSION)"
CTX="$STAGE/mosquitto"
rm -rf "$CTX"
mkdir -p "$CTX/rootfs"
base_rootfs "$CTX/rootfs" mosquitto 1883
copy_with_libs "$MOSQUITTO_BIN" /usr/sbin/mosquitto "$CTX/rootfs"
install -D -m 0644 "$ROOT/deploy/docker/mosquitto.conf" "$CTX/rootfs/etc/mosquitto/mosquitto.conf"
normalise_times "$CTX"
echo "== docker build $MOSQUITTO_IMAGE"
docker build -q -f "$ROOT/deploy/docker/Dockerfile.mosquitto" \
    --label "org.opencontainers.image.title=mosquitto" \
    --label "org.opencontainers.image.version=$MOSQUITTO_VERSION" \
    --label "busybox.version=$BUSYBOX_VERSION" \
    -t "$MOSQUITTO_IMAGE:latest" -t "$MOSQUITTO_IMAGE:$REVISION" "$CTX"

# --- smoke test -----------------------------------------------------------------------------
echo "== smoke test"
docker run --rm "$MUSTER_IMAGE:latest" --version
docker run --rm --entrypoint /usr/sbin/mosquitto "$MOSQUITTO_IMAGE:latest" -h | head -n 1 || true
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^($MUSTER_IMAGE|$MOSQUITTO_IMAGE):"
