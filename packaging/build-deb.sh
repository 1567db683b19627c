#!/usr/bin/env bash
# Builds dist/tillpoint_<version>_<arch>.deb: the wheel and every pinned runtime
# dependency as wheels, the systemd unit, the example config as a conffile, udev rules.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
STAGE=build/deb/tillpoint_${VERSION}_${ARCH}
rm -rf "$STAGE"
install -d "$STAGE/DEBIAN" "$STAGE/opt/tillpoint/wheels" "$STAGE/etc/tillpoint" \
    "$STAGE/lib/systemd/system" "$STAGE/lib/udev/rules.d" "$STAGE/usr/bin"
"$PY" -m build --wheel --no-isolation --outdir build/wheel . >/dev/null
WHEEL=$(ls -t build/wheel/tillpoint-"$VERSION"-*.whl | head -1)
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$STAGE/opt/tillpoint/wheels" "$WHEEL"
install -m 0644 packaging/tillpoint.example.toml "$STAGE/etc/tillpoint/tillpoint.toml"
install -m 0644 packaging/tillpoint.service "$STAGE/lib/systemd/system/tillpoint.service"
install -m 0644 packaging/tillpoint-hub.service "$STAGE/lib/systemd/system/tillpoint-hub.service"
install -m 0644 packaging/60-tillpoint.rules "$STAGE/lib/udev/rules.d/60-tillpoint.rules"
install -m 0644 README.md "$STAGE/opt/tillpoint/README.md"
ln -s /opt/tillpoint/venv/bin/tillpoint "$STAGE/usr/bin/tillpoint"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$STAGE/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    packaging/debian/control.in > "$STAGE/DEBIAN/control"
mkdir -p dist
dpkg-deb --root-owner-group --build "$STAGE" "dist/tillpoint_${VERSION}_${ARCH}.deb" >/dev/null
echo "dist/tillpoint_${VERSION}_${ARCH}.deb"
