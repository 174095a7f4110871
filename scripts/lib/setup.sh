# Shared by scripts/*: installs what a fresh Debian machine (as root) lacks, idempotently.
# Sourced, not run.

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_apt PKG...: installs the Debian packages that are not installed yet.
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_rust: the toolchain's rustfmt and clippy, and the musl target for the static agent.
ensure_rust() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
    if command -v rustup >/dev/null; then
        local have
        have=$(rustup component list --installed 2>/dev/null || true)
        for c in rustfmt clippy; do
            grep -q "^$c" <<<"$have" || rustup component add "$c"
        done
        rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
            || rustup target add x86_64-unknown-linux-musl
    fi
}

# ensure_kernel DIR: the stock Debian kernel (image, config, modules) unpacked into DIR, fetched
# through apt. Prints the kernel release. Idempotent.
ensure_kernel() {
    local dir=$1 pkg deb
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
    fi
    [ -n "$pkg" ] || die "cannot find the Debian kernel package"
    local release=${pkg#linux-image-}
    if [ ! -f "$dir/boot/vmlinuz-$release" ]; then
        mkdir -p "$dir/deb"
        (cd "$dir/deb" && apt-get download -qq "$pkg" >&2)
        deb=$(ls "$dir/deb/${pkg}"_*.deb | head -n1)
        dpkg -x "$deb" "$dir"
        rm -rf "$dir/deb"
    fi
    echo "$release"
}

# The lab: QEMU and firmware, nfs-ganesha, dnsmasq, rescue-ISO tools, the Debian worker's builder,
# libvirt. One list for scripts/test and scripts/demo.
LAB_PACKAGES=(qemu-system-x86 nfs-ganesha nfs-ganesha-vfs kmod cpio iproute2 dnsmasq-base fdisk
    e2fsprogs bmap-tools ovmf xorriso grub-common grub-pc-bin grub-efi-amd64-bin mtools mmdebstrap
    dosfstools libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients python3-libvirt)

# ensure_sushy: the Redfish BMC emulator (sushy-tools, from PyPI), and openssl, with which the
# Redfish TLS test makes its CA and the emulator's certificate.
ensure_sushy() {
    command -v openssl >/dev/null || ensure_apt openssl
    if ! command -v sushy-emulator >/dev/null; then
        python3 -m pip install -q sushy-tools 2>/dev/null \
            || { ensure_apt python3-pip && python3 -m pip install -q --break-system-packages sushy-tools; }
    fi
    command -v sushy-emulator >/dev/null || die "sushy-emulator did not install"
}
