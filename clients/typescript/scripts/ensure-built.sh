#!/usr/bin/env bash
# Installs the locked npm packages of @switchboard/client when node_modules is missing or older
# than package-lock.json (npm ci), then builds dist/ (the library and dist/demo, the demo page
# that the edge serves). Never downloads a browser: the tests drive Debian's /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "ensure-built: npm not found (scripts/bootstrap installs nodejs and npm)" >&2
  exit 1
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
