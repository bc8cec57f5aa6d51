# The mmlab inference service (`mmlab serve`) as a CPU image on the official Python base.
# Build:  docker build -t mmlab-serve .
#         docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t mmlab-serve:cuda .   (the CUDA wheel)
# Run:    docker run -p 8000:8000 -v $PWD/runs:/models:ro mmlab-serve --checkpoint /models/trimodal-late
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# the wheel index torch comes from: the CPU build by default, a CUDA build when overridden
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MMLAB_OFFLINE=true OMP_NUM_THREADS=1

RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY mmlab ./mmlab
RUN pip install ".[serve,data]"

# an unprivileged user; the models are mounted read-only at /models
RUN useradd --create-home --uid 10001 mmlab && mkdir /models && chown mmlab /models
USER mmlab

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["mmlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--checkpoint", "/models/classifier"]
