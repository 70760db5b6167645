#!/usr/bin/env bash
# Installs what the tests need beyond npm packages: curl and openssl (the tests use them as
# clients nobody here wrote), mkfifo (coreutils), unzip (to list the .vsix), script (bsdutils: a terminal for serve --requests ask),
# and ip and nft (iproute2, nftables: the internet test builds two homes behind NAT routers in network namespaces). The editor tests
# install their own VS Code server, Node 24 and Chromium (test/vscode/server.mjs). Debian/Ubuntu; a no-op when present.
set -euo pipefail
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mkfifo >/dev/null 2>&1 || missing+=(coreutils)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "Installing ${missing[*]} for the tests..."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
