#!/usr/bin/env bash
# Run hbd's tests: fast unit and API tests, then end-to-end tests (marker `vm`)
# that boot real guests under QEMU. Needs ./install.sh --no-daemon first.
#   ./run-tests.sh            everything
#   ./run-tests.sh -m 'not vm'   only the fast tests
set -euo pipefail
cd "$(dirname "$0")"
# install.sh's virtualenv, when it made one (Debian's own python3 is externally
# managed): its python3, ruff, mypy and docker-compose are the ones to test with.
if [ -d .venv ]; then
    export PATH="$PWD/.venv/bin:$PATH"
fi
# The guest init's fuzzers (tests/unit/test_init_fuzz.py): 30 s each here.
export HBD_FUZZ_SECONDS=${HBD_FUZZ_SECONDS:-30}
ruff check hbd tests bench
mypy
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
