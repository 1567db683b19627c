#!/usr/bin/env bash
# Builds dist/tillpoint_<version>_<arch>.deb: the wheel and every runtime dependency as
# wheels, at the versions of requirements.lock, for each Python the supported
# distributions ship (Debian 12: 3.11, Ubuntu 24.04: 3.12, Debian 13: 3.13); the systemd
# unit, the example config as a conffile, udev rules. Needs the package index (pip
# download) once; pip's cache serves the next builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHONS=${PYTHONS:-"3.11 3.12 3.13"}   # keep in step with Depends in debian/control.in
# xz (dpkg's default) makes the smallest package to ship (~51 MB; ~64 MB with gzip: the
# wheels inside are zip files already) but takes ~45-90 s of CPU; the tests build with
# DEB_COMPRESSION=gzip (3 s), the same files.
DEB_COMPRESSION=${DEB_COMPRESSION:-xz}
VERSION=$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
STAGE=build/deb/tillpoint_${VERSION}_${ARCH}
rm -rf "$STAGE"
install -d "$STAGE/DEBIAN" "$STAGE/opt/tillpoint/wheels" "$STAGE/etc/tillpoint" \
    "$STAGE/lib/systemd/system" "$STAGE/lib/udev/rules.d" "$STAGE/usr/bin"
"$PY" -m build --wheel --no-isolation --outdir build/wheel . >/dev/null
WHEEL=$(ls -t build/wheel/tillpoint-"$VERSION"-*.whl | head -1)
case "$ARCH" in
    amd64) MACHINE=x86_64 ;;
    arm64) MACHINE=aarch64 ;;
    armhf) MACHINE=armv7l ;;
    i386) MACHINE=i686 ;;
    *) echo "build-deb.sh: no wheel platform for architecture $ARCH" >&2; exit 1 ;;
esac
# glibc 2.36 (Debian 12) is the oldest supported: manylinux wheels up to 2_36 run on all.
PLATFORMS=(--platform "manylinux2014_$MACHINE" --platform "linux_$MACHINE")
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_$MACHINE"); done
for version in $PYTHONS; do
    "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version "$version" --implementation cp --abi "cp${version/./}" "${PLATFORMS[@]}" \
        --constraint requirements.lock --dest "$STAGE/opt/tillpoint/wheels" "$WHEEL"
done
# Every shipped wheel must be a pin of requirements.lock (the tested set); the runtime
# subset goes into the package and constrains the install on the till.
"$PY" packaging/runtime_lock.py requirements.lock "$STAGE/opt/tillpoint/wheels" \
    > "$STAGE/opt/tillpoint/requirements.lock"
install -m 0644 packaging/tillpoint.example.toml "$STAGE/etc/tillpoint/tillpoint.toml"
install -m 0644 packaging/tillpoint.service "$STAGE/lib/systemd/system/tillpoint.service"
install -m 0644 packaging/tillpoint-hub.service "$STAGE/lib/systemd/system/tillpoint-hub.service"
install -m 0644 packaging/60-tillpoint.rules "$STAGE/lib/udev/rules.d/60-tillpoint.rules"
install -m 0644 README.md CHANGELOG.md "$STAGE/opt/tillpoint/"
install -d "$STAGE/opt/tillpoint/docs"  # the README's links: docs/*.md beside it
install -m 0644 docs/*.md "$STAGE/opt/tillpoint/docs/"
install -d "$STAGE/opt/tillpoint/examples"  # the walkthrough's and INTEGRATION.md's files
install -m 0644 examples/*.json "$STAGE/opt/tillpoint/examples/"
ln -s /opt/tillpoint/venv/bin/tillpoint "$STAGE/usr/bin/tillpoint"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$STAGE/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    packaging/debian/control.in > "$STAGE/DEBIAN/control"
mkdir -p dist
dpkg-deb -Z"$DEB_COMPRESSION" --root-owner-group --build "$STAGE" "dist/tillpoint_${VERSION}_${ARCH}.deb" >/dev/null
echo "dist/tillpoint_${VERSION}_${ARCH}.deb"
