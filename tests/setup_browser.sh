#!/usr/bin/env bash
# Installs what tests/test_study_ui.py needs to open `study ui` in a real headless browser:
# Debian's chromium and chromium-driver, and selenium into the project's venv.
# Called from .ci/run; safe to run again (apt and pip skip what is already there).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
"$python" -m pip install -q "selenium>=4.20"
