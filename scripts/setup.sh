# Sourced by scripts/demo, scripts/test and .ci/run: installs what the build
# and the tests need on a fresh Debian/Ubuntu machine, and nothing twice.
#   - the wasm32-wasip2 Rust target (connectors are WebAssembly components)
#   - openssh-server: one test proves our SSH client against Debian's sshd
set -euo pipefail

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo ">> installing the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

need_pkgs=()
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo ">> installing Debian packages: ${need_pkgs[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
