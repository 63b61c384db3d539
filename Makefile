# SwiftVR deploy. Every target sets up the environment (.venv) itself.
#   make demo [CKPT=DIR]                         restore a generated clip end to end
#   make test                                    the test suite (CPU)
#   make engine RES=1080p GPU=rtx5090 [CKPT=DIR | PRESET=5b] [SCALE=4 | IN=WxH] [PRECISION=bf16] [OUT=file]
#   make engine RES=360p GPU=rtx5090 PRECISION=fp8 CALIB=clip.mp4   (GPU=cpu PRECISION=int8: ONNX Runtime)
#                 [MIN_PSNR=40] [GROUPS="encoder.conv decoder.conv ..."]   which layer groups are quantized
#                 [CALIB_RES=360p]   calibrate at that output size, apply the ranges at RES (e.g. RES=1080p)
#   make engine ... REAE_SLICE=N                 the ReAE in slices of N latent frames (0: whole chunks; cpu default 1)
#   make engine RES=1080p GPU=rtx4070 VRAM=12     fit the GPU's memory: slices, shared buffers, weight streaming
#   make bench [BENCH_ARGS=...]                  GPU benchmark of the torch backend (docs/benchmarks.md)
#   make embed                                   libswiftvr (C ABI), swiftvr.hpp and examples in build/c
#   make gpucheck-wheels                         wheels scripts/gpu-check.sh installs on a GPU machine without an index
#   make proto                                   regenerate runtime/serve/restorer_pb2.py from restorer.proto
PY      := .venv/bin/python
STAMP   := .venv/.installed
RES       ?= 360p
GPU       ?= rtx5090

.PHONY: setup test demo engine bench embed gpucheck-wheels proto clean
setup: $(STAMP)

# torch goes first and alone so that pip takes the pinned CPU wheel, never the CUDA build.
$(STAMP): requirements.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# --dist loadscope: one test file per worker at a time, so a file's module fixtures (an export, a Ray
# cluster, a calibration) are made once, and no worker waits on the other's lock for them (7:44 vs 9:13).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

demo: $(STAMP)
	$(PY) -m runtime.demo $(if $(CKPT),--checkpoint $(CKPT))

engine: $(STAMP)
	$(PY) -m engines.make --res $(RES) --gpu $(GPU) $(if $(CKPT),--checkpoint $(CKPT)) $(if $(PRESET),--preset $(PRESET)) \
		$(if $(SCALE),--scale $(SCALE)) $(if $(IN),--input $(IN)) \
		$(if $(PRECISION),--precision $(PRECISION)) $(if $(CALIB),--calib $(CALIB)) $(if $(OUT),--out $(OUT)) \
		$(if $(MIN_PSNR),--min-psnr $(MIN_PSNR)) $(if $(GROUPS),--groups $(GROUPS)) $(if $(CALIB_RES),--calib-res $(CALIB_RES)) $(if $(REAE_SLICE),--reae-slice $(REAE_SLICE)) $(if $(VRAM),--vram $(VRAM))

bench: $(STAMP)
	$(PY) -m runtime.bench $(BENCH_ARGS)

# The venv's interpreter tells CMake which libpython to link (its base installation's).
embed: $(STAMP)
	cmake -S runtime/c -B build/c -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/c -j

# PyAV, safetensors and tqdm for a GPU machine that has python3 + torch but no package index
# (scripts/gpu-check.sh installs them from here; abi3 wheels: any CPython >= 3.11 on x86_64 Linux).
gpucheck-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
		--python-version 3.11 -d build/gpucheck-wheels av==18.1.0 safetensors==0.8.0 tqdm==4.70.1

# The generated module is committed, so that `pip install -e .[serve]` needs no build step and a fresh
# CI machine nothing but requirements.txt; tests/test_grpc.py regenerates it and fails when it differs. Messages only: both sides call the method with bytes
# (runtime/serve/messages.py), so no gRPC stub is generated.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. runtime/serve/restorer.proto

clean:
	rm -rf build exports engines/*.plan engines/.cache
