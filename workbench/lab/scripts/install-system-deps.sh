#!/usr/bin/env bash
# Installs the Debian packages the workbench needs to build and boot the lab kernel.
# Idempotent: packages already present are skipped. Needs root (or sudo) and apt-get.
set -euo pipefail

packages=(
  build-essential bc flex bison libelf-dev libssl-dev dwarves cpio xz-utils zstd rsync ccache patch
  qemu-system-x86 qemu-utils kexec-tools makedumpfile busybox-static
  openssh-server openssh-client criu
  mmdebstrap
  chromium fonts-dejavu-core
  redis-server redis-tools
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "workbench: these system packages are needed: ${missing[*]}; install them with your package manager." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "workbench: run as root, or install: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "workbench: installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# openssh-server is needed inside the lab VM only: never start services on this machine while installing.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
