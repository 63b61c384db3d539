# SwiftVR deploy. `make demo` and `make test` set up the environment themselves.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: setup test
setup: $(STAMP)

# torch goes first and alone so that pip takes the pinned CPU wheel, never the CUDA build.
$(STAMP): requirements.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10
