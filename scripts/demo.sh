#!/usr/bin/env bash
# Builds Warren and runs its demo on the embedded broker: no server to install, only the C client
# libraries the warren binary links (rabbitmq-c and hiredis), installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "Swift 6.2 or newer is needed: https://www.swift.org/install/linux/" >&2; exit 1; }
scripts/apt-install.sh librabbitmq-dev libhiredis-dev
swift build --product warren -c release
exec .build/release/warren demo "$@"
