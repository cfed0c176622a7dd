# The two entry points of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN    ?= demo

comma := ,
# Every install takes the versions the tests passed with (constraints.txt, `make lock`);
# `make setup CONSTRAINTS=` resolves afresh (to move to newer releases: then `make test`, `make lock`).
CONSTRAINTS ?= -c constraints.txt
.PHONY: setup system-packages demo test uncertainty-report benchmarks clean vendor-check lock

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve downloads GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0 $(CONSTRAINTS)
	# simulation: Ray and imagecodecs (the demo and the tests run simulations); dev: the test tools.
	$(BIN)/python -m pip install -q -e '.[simulation,dev]' $(CONSTRAINTS)
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/ugafl demo --config configs/demo.toml --name $(RUN)

# The review app's tests drive Debian's Chromium through its ChromeDriver (no browser download);
# the coordinator serves hospitals through Debian's nginx (server/fleet_proxy.py).
system-packages:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/sbin/nginx ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  echo "installing Debian's chromium, chromium-driver and nginx for the tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver nginx >/dev/null; \
	fi

test: setup system-packages
	$(BIN)/python -m pytest

# The uncertainty figures of the README: on the demo's data and central model, plus a 3-member
# ensemble and an EDUE model trained the same way (about 25 min on 2 cores).
UNC := runs/$(RUN)
$(UNC)/ens-m0.pt: $(UNC)/central.pt
	$(BIN)/ugafl train-central --data $(UNC)/data --out $(UNC)/ens.pt --config configs/demo.toml --members 3
$(UNC)/edue.pt: $(UNC)/central.pt
	$(BIN)/ugafl train-central --data $(UNC)/data --out $(UNC)/edue.pt --config configs/demo.toml --edue
$(UNC)/central.pt:
	$(MAKE) demo RUN=$(RUN)
uncertainty-report: setup $(UNC)/ens-m0.pt $(UNC)/edue.pt
	$(BIN)/ugafl uncertainty-report --data $(UNC)/data --model $(UNC)/central.pt \
	  --ensemble $(UNC)/ens-m0.pt --ensemble $(UNC)/ens-m1.pt --ensemble $(UNC)/ens-m2.pt \
	  --edue $(UNC)/edue.pt | tee $(UNC)/uncertainty_report.txt

benchmarks: setup
	$(BIN)/python benchmarks/uncertainty.py
	$(BIN)/python benchmarks/selection.py
	$(BIN)/python benchmarks/round.py
	$(BIN)/python benchmarks/wsi.py --peers monai$(if $(wildcard .venv-tia/bin/python),$(comma)tiatoolbox,)
	$(BIN)/python benchmarks/federation_scale.py --sites 10,50,200 --rounds 2 --params 100000 --offline bench,real

clean:
	rm -rf $(VENV) build *.egg-info

# constraints.txt: every package of the tested venv at its version (pip freeze, ugafl itself left
# out). torch is written without its local label (2.13.0, not 2.13.0+cpu), so the same line takes
# the CPU wheel here and PyTorch's CPU index's 2.13.0+cpu elsewhere, never a CUDA build's packages
# (nvidia-* are not in the venv, so pip's resolve for torch 2.13.0+cpu never adds them).
# Regenerate after a change of dependencies: `make setup CONSTRAINTS=`, `make test`, then `make lock`.
lock: setup
	{ echo "# The versions the tests passed with: written by make lock from .venv (see the Makefile)."; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && touch $(BIN)/.installed

# The review app's viewer, OpenSeadragon, is committed in client/review/static/ (no download at
# install or run time); this fetches the same release from npm again and checks it is the one committed.
OSD_VERSION := 6.1.1
vendor-check:
	cd $$(mktemp -d) && npm pack --silent openseadragon@$(OSD_VERSION) >/dev/null && tar xzf openseadragon-$(OSD_VERSION).tgz && \
	cmp package/build/openseadragon/openseadragon.min.js $(CURDIR)/client/review/static/openseadragon.min.js && \
	cmp package/LICENSE.txt $(CURDIR)/client/review/static/openseadragon-LICENSE.txt && echo "OpenSeadragon $(OSD_VERSION): same as committed"
