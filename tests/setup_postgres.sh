#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for tests/test_postgres*.py (CI calls this before
# pytest). Idempotent and quick when already installed; the tests run their own throwaway server
# (initdb in a temp dir, 127.0.0.1, a free port), so no system cluster is started or needed.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
    echo "postgresql: already installed ($(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | tr '\n' ' '))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# postgresql-common would create and start a system cluster; the tests need only the binaries.
$SUDO mkdir -p /etc/postgresql-common/createcluster.conf.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf.d/no-main.conf >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
echo "postgresql: installed $(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | tr '\n' ' ')"
