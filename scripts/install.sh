#!/usr/bin/env bash
# Install what Natural Dreamer needs on a fresh Debian/Ubuntu machine:
#   - GL libraries for headless MuJoCo rendering (EGL, with OSMesa as the fallback),
#   - Chromium, which the tests use to check that the HTML plots render offline,
#   - a C++ compiler, which torch.compile (config key `compile: true`) builds its kernels with,
#   - the pinned Python packages (torch 2.13.0 is the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(libegl1 libgl1-mesa-dri libopengl0 libosmesa6 chromium g++)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python -m pip install --quiet --disable-pip-version-check -r requirements.txt
# The package itself, editable: notebooks and scripts import natural_dreamer from anywhere.
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
