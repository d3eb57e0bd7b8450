#!/usr/bin/env bash
# Run hbd's tests: fast unit and API tests, then end-to-end tests (marker `vm`)
# that boot real guests under QEMU. Needs ./install.sh --no-daemon first.
#   ./run-tests.sh            everything
#   ./run-tests.sh -m 'not vm'   only the fast tests
set -euo pipefail
cd "$(dirname "$0")"
ruff check hbd tests bench
mypy
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
