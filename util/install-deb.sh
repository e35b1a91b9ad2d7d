#!/usr/bin/env bash
# Install the Debian packages dicomlake's tools and tests use, when missing (idempotent).
set -euo pipefail
PACKAGES=(
  dcmtk                 # dcmdump, dcm2json, dsr2xml, storescu, findscu, movescu: client and oracle
  dicom3tools           # dciodvfy: validates every object we write
  libgdcm-tools         # gdcmdump: second reader oracle (vendor encodings dcmtk refuses)
  orthanc orthanc-dicomweb   # the PACS peer
  tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd   # OCR of burned-in text
  chromium              # headless browser for the web UI and report tests
  default-jre-headless  # Spark's JVM
  postgresql            # the server back end
  fonts-dejavu-core     # fonts for generated test images
  util-linux iproute2   # unshare/nsenter/ip: peers in their own network namespace
)
need=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# a JVM from elsewhere is fine too
if [[ " ${need[*]} " == *" default-jre-headless "* ]] && command -v java >/dev/null 2>&1; then
  need=("${need[@]/default-jre-headless}")
fi
need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
