# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stepdistill

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) eval/sample.py --model assets/fashion-teacher --steps 50 --guidance 2.0 --out outputs/demo/teacher-50-steps.png
	$(PY) eval/sample.py --model assets/fashion-teacher --steps 4 --guidance 2.0 --out outputs/demo/teacher-4-steps.png

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
