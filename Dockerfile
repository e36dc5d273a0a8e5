# syntax=docker/dockerfile:1
# One image for every Cairn process; each Deployment names its command:
#   python -m cairn_ingest | cairn_matcher | cairn_scheduler | cairn_dispatcher
#   python -m cairn_common.migrate            (the migrations Job; `--wait` in init containers)
#
#   docker build -t REGISTRY/cairn:TAG .

ARG PYTHON_VERSION=3.12

# ---- build: the locked workspace, services only, into /app/.venv ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
RUN pip install --no-cache-dir uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY cli cli
# The four services and what they depend on, exactly as locked; not the CLI (it bundles NATS and
# PostgreSQL binaries for `cairn up`) and no dev tools. Non-editable: /src is not in the image.
# uv keys a cached wheel of a local package on its pyproject.toml, not its code: without
# --reinstall-package, the cache mount would put last build's cairn code in this image.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
        --package cairn-ingest --package cairn-matcher \
        --package cairn-scheduler --package cairn-dispatcher \
        --reinstall-package cairn-common --reinstall-package cairn-journey \
        --reinstall-package cairn-control --reinstall-package cairn-ingest \
        --reinstall-package cairn-matcher --reinstall-package cairn-scheduler \
        --reinstall-package cairn-dispatcher

# ---- runtime: the venv on a slim Python, as an unprivileged user ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 cairn \
    && useradd --system --uid 10001 --gid cairn --no-create-home --shell /usr/sbin/nologin cairn
# Owned by root and read-only to the service user: pods run with readOnlyRootFilesystem.
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAIRN_LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
EXPOSE 8080 8090 9000
# No default service: print what to run.
CMD ["python", "-c", "print('run: python -m cairn_ingest|cairn_matcher|cairn_scheduler|cairn_dispatcher|cairn_common.migrate')"]
