#!/usr/bin/env bash
# Prints the URI of the Debian mirror this machine's apt sources already name (deb822 .sources files first, then
# one-line .list files; security mirrors skipped), or WORKBENCH_DEBIAN_MIRROR when it is set. Exits 1, printing
# nothing, when there is none. Used to fetch from the same mirror with another suite (sid, experimental).
# Usage: debian-mirror.sh
set -euo pipefail
if [ -n "${WORKBENCH_DEBIAN_MIRROR:-}" ]; then
  echo "$WORKBENCH_DEBIAN_MIRROR"; exit 0
fi
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  uri=$(awk 'tolower($1)=="uris:" {print $2; exit}' "$f")
  if [ -n "$uri" ] && ! grep -qi 'security' <<<"$uri" && awk 'tolower($1)=="suites:"' "$f" | grep -qvi security; then
    echo "$uri"; exit 0
  fi
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -e "$f" ] || continue
  uri=$(awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit} }' "$f")
  if [ -n "$uri" ]; then echo "$uri"; exit 0; fi
done
exit 1
