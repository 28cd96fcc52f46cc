# syntax=docker/dockerfile:1
# fairgate as a container: `docker build -t fairgate .` (deploy/compose.yaml and
# deploy/k8s/ use it). It runs `gate serve` as the unprivileged user fairgate (uid 10001)
# and needs an external Redis (GATE_REDIS_URL): the embedded Redis is not in the image.
# Listeners bind 0.0.0.0 inside the container; publish the admin (8081) and core (8082)
# ports only where operators and the core system reach them, never to the internet.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gate/ gate/
COPY lua/ lua/
RUN python -m venv /opt/fairgate && /opt/fairgate/bin/pip install .

FROM python:3.12-slim
RUN groupadd --system --gid 10001 fairgate \
    && useradd --system --uid 10001 --gid fairgate --no-create-home \
       --home-dir /var/lib/fairgate --shell /usr/sbin/nologin fairgate \
    && install -d -o fairgate -g fairgate -m 0700 /var/lib/fairgate /etc/fairgate/keys
COPY --from=build /opt/fairgate /opt/fairgate
ENV PATH=/opt/fairgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATE_HOST=0.0.0.0 \
    GATE_ADMIN_HOST=0.0.0.0 \
    GATE_CORE_HOST=0.0.0.0 \
    GATE_DATA_DIR=/var/lib/fairgate
USER 10001:10001
WORKDIR /var/lib/fairgate
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["gate"]
CMD ["serve"]
