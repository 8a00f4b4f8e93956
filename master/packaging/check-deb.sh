#!/usr/bin/env bash
# Checks a built shelfboot-master .deb:
#   1. `dpkg-deb --contents` lists the binaries, man pages and completions;
#   2. unpacked (`dpkg-deb -x`), `master --version` runs and names the package's version;
#      the bash completion parses (`bash -n`) and completes `master imp` to `import`;
#      zsh and fish scripts parse when those shells are installed (said when not; ./dev
#      setup installs them) and fish completes `master imp` to `import`;
#      every man page formats without groff warnings;
#   3. installed with dpkg into a throwaway root (`dpkg --root`), `master --version` runs
#      from it, and `dpkg -r` removes every file again.
#
#   master/packaging/check-deb.sh DEB
set -euo pipefail
deb=${1:?usage: check-deb.sh DEB}
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
pkg=$(dpkg-deb -f "$deb" Package)

contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/master ./usr/bin/mkinitramfs ./usr/bin/simcard \
  ./usr/share/man/man1/master.1.gz ./usr/share/man/man1/master-serve.1.gz \
  ./usr/share/man/man1/master-trust-add.1.gz \
  ./usr/share/bash-completion/completions/master \
  ./usr/share/zsh/vendor-completions/_master \
  ./usr/share/fish/vendor_completions.d/master.fish \
  "./usr/share/doc/$pkg/copyright" "./usr/share/doc/$pkg/examples/master.toml" \
  ./usr/lib/systemd/system/shelfboot-master.service; do
  grep -q " $f\$" <<<"$contents" || fail "$deb does not contain $f"
done
echo "check-deb: contents: $(grep -c -v '/$' <<<"$contents") files, $(grep -c 'man1/' <<<"$contents") man pages"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/x"
got=$("$work/x/usr/bin/master" --version) || fail "unpacked master --version failed"
[ "$got" = "master $version" ] || fail "master --version said '$got', expected 'master $version'"
"$work/x/usr/bin/mkinitramfs" --version >/dev/null || fail "unpacked mkinitramfs --version failed"

bashc="$work/x/usr/share/bash-completion/completions/master"
bash -n "$bashc" || fail "bash completion does not parse"
reply=$(bash -c 'source "$1"; COMP_WORDS=(master imp); COMP_CWORD=1; _master master imp master; echo "${COMPREPLY[*]}"' _ "$bashc")
[ "$reply" = import ] || fail "bash completion of 'master imp' gave '$reply', expected 'import'"
for sh in zsh fish; do
  case $sh in
    zsh) script="$work/x/usr/share/zsh/vendor-completions/_master" ;;
    fish) script="$work/x/usr/share/fish/vendor_completions.d/master.fish" ;;
  esac
  if command -v "$sh" >/dev/null 2>&1; then
    "$sh" -n "$script" || fail "$sh completion does not parse"
    if [ "$sh" = fish ]; then
      reply=$(fish -c 'source $argv[1]; complete -C "master imp"' "$script" | cut -f1)
      [ "$reply" = import ] || fail "fish completion of 'master imp' gave '$reply', expected 'import'"
    fi
  else
    echo "check-deb: $sh not installed: its completion script is not parsed"
  fi
done
for page in "$work"/x/usr/share/man/man1/*.1.gz; do
  warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1)
  [ -z "$warnings" ] || fail "$(basename "$page"): groff warns: $warnings"
done
echo "check-deb: unpacked: master --version = '$got'; completions and man pages check out"

# Install into an empty dpkg root. Dependencies are the host's (--force-depends); the
# maintainer scripts run outside a chroot with DPKG_ROOT set, where they do nothing.
r="$work/root"
mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/lib/dpkg/triggers"
: >"$r/var/lib/dpkg/status"
force=(--force-depends --force-script-chrootless)
[ "$(id -u)" -eq 0 ] || force+=(--force-not-root)
# dpkg warns about the dependencies it was told to ignore: shown only on failure.
dpkg_in_root() {
  local log
  log=$(dpkg --root="$r" --log=/dev/null "${force[@]}" "$@" 2>&1) || fail "dpkg --root $*: $log"
}
dpkg_in_root -i "$deb"
dpkg --root="$r" -s "$pkg" | grep -q '^Status: install ok installed' || fail "dpkg --root does not show $pkg installed"
got=$("$r/usr/bin/master" --version) || fail "installed master --version failed"
[ "$got" = "master $version" ] || fail "installed master --version said '$got'"
"$r/usr/bin/master" --state "$work/state" nodes >/dev/null || fail "installed master cannot list nodes of a fresh state"
dpkg_in_root -r "$pkg"
left=$(find "$r" -path "$r/var" -prune -o -type f -print | head -n 5)
[ -z "$left" ] || fail "dpkg -r left files behind: $left"
echo "check-deb: installed with dpkg --root, ran, removed: ok"
