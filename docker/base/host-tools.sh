#!/usr/bin/env bash
# Install the host tools edgematrix's offline image builds and emulated targets need, from the
# distribution's own packages (Debian 12 "bookworm"):
#   docker.io            the Docker engine (dockerd) and containerd
#   debootstrap          builds the offline base images (edgematrix.executors.images.ensure_offline_base)
#   qemu-user-static     runs arm64 containers and binaries under emulation (binfmt_misc);
#                        from bookworm-backports: bookworm's own 7.2 crashes in onnxruntime for aarch64
#   g++-aarch64-linux-gnu  the cross toolchain for the DriveOS runner (docker/driveos/trt_runner) on this host;
#                        the driveos image's offline variant debootstraps its own into its base
#   chromium             the headless browser tests/report/test_dashboard.py renders the history dashboard in
#
# The backports source is derived from the machine's existing Debian apt source (same mirror), so
# no mirror host is written here. Idempotent; needs root.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "host-tools.sh: run as root (it installs Debian packages)" >&2
  exit 2
fi
. /etc/os-release
if [[ ${VERSION_CODENAME:-} != bookworm ]]; then
  echo "host-tools.sh: written for Debian 12 (bookworm); this host is ${PRETTY_NAME:-unknown}." >&2
  echo "Install docker.io, debootstrap, qemu-user-static (>= 8), g++-aarch64-linux-gnu and chromium with your package manager." >&2
  exit 2
fi

backports=/etc/apt/sources.list.d/edgematrix-backports.sources
if [[ ! -f $backports ]]; then
  uri=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: the first URIs line of the stanza that carries the bookworm suite
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="bookworm" && u){print u; exit}}' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1=="deb" && $3=="bookworm"{print $2; exit}' /etc/apt/sources.list)
  fi
  if [[ -z $uri ]]; then
    echo "host-tools.sh: no Debian bookworm apt source found to derive bookworm-backports from" >&2
    exit 2
  fi
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" >"$backports"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker.io debootstrap binfmt-support g++-aarch64-linux-gnu chromium >/dev/null
apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-user-static >/dev/null
# Register qemu-aarch64 with binfmt_misc, pointing at the backports interpreter. The F (fix binary)
# flag opens the interpreter now, so it also works inside containers. qemu-user-static >= 8 ships a
# systemd-binfmt file; without systemd (containers, CI sandboxes) it is written to the kernel here.
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -w $binfmt/register ]]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
fi
if [[ -e $binfmt/qemu-aarch64 ]]; then
  echo -1 >"$binfmt/qemu-aarch64"  # drop an older registration (e.g. bookworm's qemu 7.2)
fi
if [[ -f /usr/lib/binfmt.d/qemu-aarch64.conf && -w $binfmt/register ]]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register"
elif command -v update-binfmts >/dev/null; then
  update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if [[ ! -e $binfmt/qemu-aarch64 ]]; then
  echo "host-tools.sh: could not register qemu-aarch64 with binfmt_misc ($binfmt); arm64 emulation will not work" >&2
  exit 1
fi
echo "host tools: $(dockerd --version 2>/dev/null | head -1); debootstrap $(dpkg-query -W -f='${Version}' debootstrap);" \
  "qemu-aarch64-static $(qemu-aarch64-static --version | head -1 | awk '{print $3}'); $(aarch64-linux-gnu-g++ --version | head -1);" \
  "$(chromium --version 2>/dev/null | head -1)"
