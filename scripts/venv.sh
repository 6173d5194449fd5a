# Sourced by scripts/test and scripts/demo: create (or reuse) the project virtualenv, build the
# sdist and the wheel from this tree (python -m build: the wheel is built from the sdist, so
# both are proven), and install the WHEEL, never the tree, with the test and dev extras. What
# the tests and the demo run is what `pip install .` gives a user. VENV overrides the location.
# Sets WHEEL and SDIST to the artefacts just built (in dist/).
VENV=${VENV:-"$PWD/.venv"}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
_pip() {
  # This machine's pip configuration names index folders that may be absent: noise.
  "$VENV/bin/python" -m pip --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
_pip install "build>=1.2"
rm -f dist/rs_telemetry-*.whl dist/rs_telemetry-*.tar.gz
"$VENV/bin/python" -m build --outdir dist . >"${TMPDIR:-/tmp}/rs-telemetry-build.log" 2>&1 || {
  cat "${TMPDIR:-/tmp}/rs-telemetry-build.log" >&2
  echo "error: python -m build failed (log above)" >&2
  exit 1
}
WHEEL=$(ls dist/rs_telemetry-*-py3-none-any.whl)
SDIST=$(ls dist/rs_telemetry-*.tar.gz)
WHEEL="$PWD/$WHEEL" SDIST="$PWD/$SDIST"
export WHEEL SDIST
# Same version, new build: uninstall first so the fresh wheel really replaces the old one.
_pip uninstall -y rs-telemetry >/dev/null 2>&1 || true
_pip install "$WHEEL[test,dev,bench]"
export PATH="$VENV/bin:$PATH"
