#!/usr/bin/env bash
# Downloads Debian's linux-source-<version> package into DEST, using a private apt state directory. The suites are
# tried in order, unstable (sid) first, then experimental (where release candidates are); WORKBENCH_KERNEL_SUITE
# names the one suite to use instead. The mirror is the one this machine's apt sources already name (or
# WORKBENCH_DEBIAN_MIRROR); only the suite changes.
# Usage: fetch-linux-source.sh VERSION DEST_DIR STATE_DIR
set -euo pipefail
version=$1 dest=$2 state=$3
if [ -n "${WORKBENCH_KERNEL_SUITE:-}" ]; then
  suites=("$WORKBENCH_KERNEL_SUITE")
else
  suites=(sid experimental)
fi

uri=$(bash "$(dirname "$0")/debian-mirror.sh") || uri=""
if [ -z "$uri" ]; then
  echo "workbench: no Debian mirror found in /etc/apt/sources.list{,.d}; add one, or put linux-source-$version*.deb in $dest" >&2
  exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/sources.list.d" "$dest"
opts=(
  -o "Dir::State::Lists=$state/lists"
  -o "Dir::Etc::SourceList=$state/sources.list"
  -o "Dir::Etc::SourceParts=$state/sources.list.d"
  -o "Dir::Cache::Archives=$state/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root"
)
cd "$dest"
for suite in "${suites[@]}"; do
  echo "deb [signed-by=$keyring] $uri $suite main" > "$state/sources.list"
  apt-get "${opts[@]}" -qq update
  if apt-get "${opts[@]}" -qq download "linux-source-$version"; then
    echo "workbench: linux-source-$version from $suite" >&2
    ls "$dest"/linux-source-"$version"_*.deb
    exit 0
  fi
  echo "workbench: linux-source-$version is not in $suite" >&2
done
echo "workbench: linux-source-$version is in none of: ${suites[*]} (mirror $uri)" >&2
exit 1
