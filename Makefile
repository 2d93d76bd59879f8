# Two commands a user needs (see README): `make run` and `make test`.
# Both create .venv, install torch 2.13.0 (the CPU wheel where this machine has it),
# then this project with its EXTRAS (the CI adds cluster: Ray, for the Ray backend's tests),
# and the Fashion-MNIST files where apt exists.
VENV   ?= .venv
PY     := $(VENV)/bin/python
LFL    := $(VENV)/bin/lfl
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/make-run
EXTRAS ?= test

.PHONY: setup data run test wheel-check bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; \
	else \
	  echo "no apt-get: lfl will download Fashion-MNIST on first use (or see 'lfl datasets')"; \
	fi

## The main job: AdaLFL against cross-entropy, LeNet-5 on Fashion-MNIST, same budget and seed;
## prints both test errors (with the paired comparison) and the learned loss as a compact formula.
RUN_STEPS  ?= 6000
INIT_STEPS ?= 2500
RUN_OPTS   ?= --dataset fashion-mnist --model lenet5 --steps $(RUN_STEPS) --lr 0.01 --momentum 0.9 \
              --nesterov --batch-size 128 --seed 0 --checkpoint-every 1000
run: setup data
	@echo "== make run: PyTorch's cross-entropy (F.cross_entropy) against AdaLFL, LeNet-5 on Fashion-MNIST."
	@echo "== Same data, seed, model, budget ($(RUN_STEPS) steps) and optimiser (SGD lr 0.01, momentum 0.9, Nesterov)"
	@echo "== for both; AdaLFL also runs its $(INIT_STEPS)-step offline phase first. One seed and an untuned lr:"
	@echo "== for learning rates chosen on validation over several seeds, run lfl study studies/fashion-mnist.toml."
	$(LFL) train $(RUN_OPTS) --loss ce --overwrite --out $(RUN_DIR)/ce
	$(LFL) train $(RUN_OPTS) --loss adalfl --init-steps $(INIT_STEPS) --overwrite --out $(RUN_DIR)/adalfl
	$(LFL) compare $(RUN_DIR)/ce $(RUN_DIR)/adalfl
	$(LFL) export $(RUN_DIR)/adalfl --approx

test: setup data
	$(VENV)/bin/pytest -q
	$(VENV)/bin/pytest -q -m slow

## The install users get: a wheel in a fresh venv outside the checkout, lfl and the README's examples.
wheel-check:
	bash .ci/wheel_check.sh

bench: setup
	$(LFL) bench --model lenet5 --batch-size 128

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
