#!/usr/bin/env bash
# Downloads Debian's linux-source-<version> package from the unstable suite into DEST, using a private apt state
# directory. The mirror is the one this machine's apt sources already name; only the suite changes.
# Usage: fetch-linux-source.sh VERSION DEST_DIR STATE_DIR
set -euo pipefail
version=$1 dest=$2 state=$3
suite=${WORKBENCH_KERNEL_SUITE:-sid}

mirror_uri() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    uri=$(awk 'tolower($1)=="uris:" {print $2; exit}' "$f")
    if [ -n "$uri" ] && ! grep -qi 'security' <<<"$uri" && awk 'tolower($1)=="suites:"' "$f" | grep -qvi security; then
      echo "$uri"; return
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit} }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
}

uri=$(mirror_uri)
if [ -z "$uri" ]; then
  echo "workbench: no Debian mirror found in /etc/apt/sources.list{,.d}; add one, or put linux-source-$version*.deb in $dest" >&2
  exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/sources.list.d" "$dest"
echo "deb [signed-by=$keyring] $uri $suite main" > "$state/sources.list"
opts=(
  -o "Dir::State::Lists=$state/lists"
  -o "Dir::Etc::SourceList=$state/sources.list"
  -o "Dir::Etc::SourceParts=$state/sources.list.d"
  -o "Dir::Cache::Archives=$state/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root"
)
apt-get "${opts[@]}" -qq update
cd "$dest"
apt-get "${opts[@]}" -qq download "linux-source-$version"
ls "$dest"/linux-source-"$version"_*.deb
