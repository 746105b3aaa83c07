#!/usr/bin/env bash
# The Debian packages lookalike uses, installed when this machine lets us (`make system`;
# `make run` and `make test` call it first):
#   dataset-fashion-mnist  05's public benchmark (/usr/share/datasets/fashion-mnist)
#   postgresql             the export's round-trip tests start a throwaway server
#   chromium, chromium-driver  reports and the explorer are checked in a real browser
#   python3-venv           `python3 -m venv` on Debian's own Python
#   gnome-backgrounds      wallpapers for the background swaps that calibrate 03's near-duplicate
#                          rule (without them it uses generated backgrounds)
# Where nothing can be installed (not root, no apt-get, offline) it says so in one line and
# exits 0: `make run` skips the benchmark that needs a missing part, `make test` skips the
# tests that do (CI=true turns those skips into failures).
set -u
have() { local p; p=$(command -v "$1") && [ -f "$p" ] && [ -x "$p" ]; }  # a real program, not a stand-in
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
[ -d /usr/share/backgrounds ] || need+=(gnome-backgrounds)
[ "${#need[@]}" -eq 0 ] && exit 0

# a failed attempt is remembered, so an offline machine does not wait for apt on every command
tried="${LOOKALIKE_CACHE:-$HOME/.cache/lookalike}/system-packages.failed"
skip_note() {
  echo "note: not installed ($1): ${need[*]}; what needs them is skipped. Install them with: sudo make system" >&2
  exit 0
}
[ "$(id -u)" -eq 0 ] || skip_note "needs root"
have apt-get || skip_note "no apt-get on this machine"
if [ -f "$tried" ] && [ "$(cat "$tried")" = "${need[*]}" ] && [ "${1:-}" != "--retry" ]; then
  skip_note "apt-get failed before"
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
opts=(-o Acquire::Retries=1 -o Acquire::http::Timeout=30 -qq)
if apt-get "${opts[@]}" update >/dev/null && apt-get "${opts[@]}" install -y "${need[@]}" >/dev/null; then
  rm -f "$tried"
  exit 0
fi
mkdir -p "$(dirname "$tried")" && echo "${need[*]}" > "$tried"
skip_note "apt-get failed"
