#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing (as root, or via sudo).
# Fails at once, with the command to run, where it cannot install them.
set -euo pipefail

missing=()
# Package name and a file it provides.
need() { compgen -G "$2" >/dev/null || missing+=("$1"); }
need bubblewrap /usr/bin/bwrap                          # the sandbox every submission runs in
need chromium /usr/bin/chromium                         # browser tests of the built book
need postgresql "/usr/lib/postgresql/*/bin/initdb"      # the PostgreSQL-gradebook test
need util-linux /usr/bin/prlimit                        # prlimit and setpriv, in the sandbox
[ ${#missing[@]} -eq 0 ] && exit 0

command -v apt-get >/dev/null || {
  echo "error: the tests need ${missing[*]} (Debian package names); install them and rerun" >&2
  exit 1
}
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! sudo -n true 2>/dev/null; then
    echo "error: the tests need ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing ${missing[*]} with apt-get" >&2
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
