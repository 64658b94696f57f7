# scripts/live-api.sh: sourced by the scripts that run a tool against a live
# savestream-api (schemathesis.sh, python-client.sh). `start_live_api PREFIX`
# starts a private redis-server and the API from the target dir on free
# loopback ports, in a temp dir, with a random bearer token and `[redis]
# prefix = PREFIX`, and sets:
#   $base   the API's URL (http://127.0.0.1:<port>)
#   $token  its bearer token
#   $work   the temp dir (the config, the logs, the storage)
# Both processes are torn down and the temp dir removed when the sourcing
# script exits; on a failure the API's log is shown.
#
#   SAVESTREAM_BIN_DIR   where savestream-api is (default target/debug)

live_api_bin_dir=${SAVESTREAM_BIN_DIR:-target/debug}
live_api_pids=()
work=""

live_api_cleanup() {
    local status=$?
    for pid in "${live_api_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 && -n "$work" && -f "$work/api.log" ]]; then
        echo "----- savestream-api log (last 50 lines) -----" >&2
        tail -n 50 "$work/api.log" >&2
    fi
    [[ -n "$work" ]] && rm -rf "$work"
    exit "$status"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits (bounded) until `curl $1` succeeds.
wait_for() {
    local url=$1 what=$2
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: $what did not come up at $url" >&2
    return 1
}

start_live_api() {
    local prefix=$1
    if [[ ! -x "$live_api_bin_dir/savestream-api" ]]; then
        echo "error: $live_api_bin_dir/savestream-api is missing: run cargo build -p savestream-api first" >&2
        exit 2
    fi
    token="live-api-token-$RANDOM$RANDOM"
    work=$(mktemp -d -t "savestream-$prefix-XXXXXX")
    trap live_api_cleanup EXIT

    local redis_port
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    live_api_pids+=($!)
    for _ in $(seq 1 100); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done

    local api_port
    api_port=$(free_port)
    mkdir -p "$work/downloads"
    cat >"$work/config.toml" <<CONFIG
[api]
host = "127.0.0.1"
port = $api_port
token = "$token"

[redis]
url = "redis://127.0.0.1:$redis_port"
prefix = "$prefix"

[[storages]]
name = "local1"
type = "local"
base_path = "$work/downloads"

[[users]]
id = 123456789
storages = ["local1"]
CONFIG
    NO_COLOR=1 "$live_api_bin_dir/savestream-api" --config "$work/config.toml" >"$work/api.log" 2>&1 &
    live_api_pids+=($!)
    base="http://127.0.0.1:$api_port"
    wait_for "$base/health" "savestream-api"
}
