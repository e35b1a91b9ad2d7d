#!/usr/bin/env bash
# Install the Debian packages dicomlake's tools and tests use, when missing (idempotent).
# Each line: a check that passes when the package is there, then the package names.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have dcmdump        || need+=(dcmtk)
have dciodvfy       || need+=(dicom3tools)
have Orthanc        || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
have tesseract      || need+=(tesseract-ocr tesseract-ocr-eng)
have chromium       || need+=(chromium)
have java           || need+=(default-jre-headless)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
have unshare        || need+=(util-linux)
have ip             || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
