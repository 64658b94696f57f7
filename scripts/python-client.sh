#!/usr/bin/env bash
# scripts/python-client.sh: generates the Python client from
# openapi/openapi.json with openapi-python-client and installs it, with the
# commands README.md's "Clients from the spec" gives (`generate` writes the
# project ./savestream-client/, `pip install ./savestream-client` installs
# it, here into a virtual environment in the temp dir), and runs README's
# Python example, as written there, against a live savestream-api
# (scripts/live-api.sh): the example must create a task and read it back as
# `queued` (no worker runs).
#
# It guards what typed clients need of the document: a generator that
# cannot build a request type (a `oneOf` beside the properties once made
# openapi-python-client drop `user_id`) fails here, not in users' hands.
#
# Usage: scripts/python-client.sh
#   SAVESTREAM_BIN_DIR   where savestream-api is (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openapi-python-client >/dev/null 2>&1; then
    echo "error: openapi-python-client is missing: python3 -m pip install openapi-python-client" >&2
    exit 2
fi

# shellcheck source=scripts/live-api.sh
source scripts/live-api.sh
start_live_api python-client

repo=$PWD
(cd "$work" && openapi-python-client generate --path "$repo/openapi/openapi.json") \
    >"$work/generate.log" 2>&1 || {
    cat "$work/generate.log" >&2
    echo "error: openapi-python-client cannot generate a client from openapi/openapi.json" >&2
    exit 1
}
if [[ ! -d "$work/savestream-client" ]]; then
    cat "$work/generate.log" >&2
    echo "error: openapi-python-client did not write ./savestream-client/, which README.md tells users to pip install" >&2
    exit 1
fi
# The virtual environment sees the system's packages, so pip installs the
# client's dependencies (httpx, attrs) only where the system lacks them.
python3 -m venv --system-site-packages "$work/venv"
(cd "$work" && "$work/venv/bin/python" -m pip install -q ./savestream-client) >"$work/install.log" 2>&1 || {
    cat "$work/install.log" >&2
    echo "error: pip cannot install the generated ./savestream-client/" >&2
    exit 1
}

# README's example: the lines from `from savestream_client import` to the
# first blank line after them, with the README's address and token swapped
# for the live API's.
"$work/venv/bin/python" - "$base" "$token" <<'PYTHON'
import sys, textwrap

base, token = sys.argv[1], sys.argv[2]
readme = open("README.md", encoding="utf-8").read().splitlines()
start = next(i for i, line in enumerate(readme) if "from savestream_client import" in line)
end = next(i for i in range(start, len(readme)) if not readme[i].strip())
example = textwrap.dedent("\n".join(readme[start:end]))
example = example.replace("http://localhost:8080", base).replace("your-secret-token-here", token)
print("README's Python example, against", base)
printed = []
exec(compile(example, "README.md's Python example", "exec"), {"print": lambda *values: printed.append(values)})
statuses = [str(value) for values in printed for value in values]
if statuses != ["queued"]:
    sys.exit(f"README's example printed {statuses!r}, expected the new task's status: ['queued']")
print("README's Python example printed", *statuses)
PYTHON
