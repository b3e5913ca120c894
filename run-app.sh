#!/usr/bin/env bash
# Sets up the Python environment on a fresh machine and starts the app on the embedded digits dataset.
#   ./run-app.sh                 http://localhost:8501
#   ./run-app.sh --server.port 8600
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
exec .venv/bin/streamlit run app.py --server.headless true "$@"
