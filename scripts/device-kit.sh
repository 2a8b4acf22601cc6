#!/usr/bin/env bash
# Prepares .device-kit/ (git-ignored) for the GPU check on a lent device machine, which has
# PyTorch but no Celery and no Redis, and cannot download anything:
#   - pure-Python wheels of Celery and its parts, at this venv's versions;
#   - this machine's redis-server with the shared libraries it links (the device is x86-64 too).
# Then, with the device tool: run scripts/device-check.sh there, carrying .device-kit
# (docs/performance.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.device-kit
rm -rf "$KIT"
mkdir -p "$KIT/wheels" "$KIT/bin" "$KIT/lib"
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = ["celery", "kombu", "redis", "billiard", "vine", "amqp", "click", "click-didyoumean",
         "click-repl", "click-plugins", "prompt-toolkit", "wcwidth", "tzlocal"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    -d "$KIT/wheels" $pins
server=$(readlink -f "$(command -v redis-server)")
cp "$server" "$KIT/bin/redis-server.real"
# Every library it links but the C runtime itself, so it runs whatever the image has.
ldd "$server" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|ld-linux)[.-]' |
    xargs -I{} cp -L {} "$KIT/lib/"
cat >"$KIT/bin/redis-server" <<'SH'
#!/usr/bin/env bash
# argv[0] must say redis-server: the same binary is also redis-check-rdb.
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/../lib" exec -a redis-server "$here/redis-server.real" "$@"
SH
chmod +x "$KIT/bin/redis-server"
"$KIT/bin/redis-server" --version
du -sh "$KIT"
