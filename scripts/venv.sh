# Sourced by scripts/test and scripts/demo: create (or reuse) the project virtualenv and
# install the project into it with its test extras. VENV overrides the location.
VENV=${VENV:-"$PWD/.venv"}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 \
  | grep -v "^WARNING: Location" || true
export PATH="$VENV/bin:$PATH"
