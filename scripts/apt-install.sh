#!/usr/bin/env bash
# Installs those of the named Debian packages that are missing (quietly, without recommends), as
# root or through sudo; nothing when all are there. Used by rabbitmq.sh and redis.sh.
#   scripts/apt-install.sh PACKAGE…
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
((${#missing[@]})) || exit 0
echo "installing ${missing[*]} …" >&2
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
