#!/usr/bin/env bash
# Install the Debian packages a target needs, when they are missing (as root, or via sudo).
# Fails at once, with the command to run, where it cannot install them.
#
#   bash scripts/system-packages.sh test   # what `make test` needs (the default)
#   bash scripts/system-packages.sh book   # what `make book` needs: the grading sandbox
#
# SYSTEM_ROOT (default: empty, i.e. /) is prefixed to the files looked for; the tests of this
# script point it at a fake root.
set -euo pipefail

target="${1:-test}"
root="${SYSTEM_ROOT:-}"
missing=()
# Package name and a file it provides.
need() { compgen -G "$root$2" >/dev/null || missing+=("$1"); }
case "$target" in
  book | test)
    need bubblewrap /usr/bin/bwrap                      # the sandbox every submission runs in
    need util-linux /usr/bin/prlimit                    # prlimit and setpriv, in the sandbox
    need libseccomp2 "/usr/lib/*/libseccomp.so.2"       # the sandbox's seccomp filter
    ;;&
  test)
    need chromium /usr/bin/chromium                     # browser tests of the built book
    need postgresql "/usr/lib/postgresql/*/bin/initdb"  # the PostgreSQL-gradebook test
    ;;
  book) ;;
  *)
    echo "error: unknown target '$target' (expected book or test)" >&2
    exit 2
    ;;
esac
[ ${#missing[@]} -eq 0 ] && exit 0

command="apt-get install -y ${missing[*]}"
command -v apt-get >/dev/null || {
  echo "error: make $target needs ${missing[*]} (Debian package names); install them and rerun" >&2
  exit 1
}
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! sudo -n true 2>/dev/null; then
    echo "error: make $target needs ${missing[*]}; run: sudo $command" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing ${missing[*]} with apt-get" >&2
if ! { $sudo apt-get update -qq &&
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "error: apt-get could not install ${missing[*]}; run: ${sudo:+sudo }$command" >&2
  exit 1
fi
