#!/usr/bin/env bash
# Runs every test. Idempotent: safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "Swift 6.1 or newer is needed: https://www.swift.org/install/linux/" >&2; exit 1; }
swift build --build-tests
swift test --skip-build "$@"
