#!/usr/bin/env bash
# Builds Warren and runs its demo on the embedded broker: nothing else to install.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "Swift 6.2 or newer is needed: https://www.swift.org/install/linux/" >&2; exit 1; }
swift build --product warren -c release
exec .build/release/warren demo "$@"
