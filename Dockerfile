# syntax=docker/dockerfile:1
# The engine and its Python package, for docker-compose.yaml.
#
#   docker build -t wallaroo-rs .
#
# Stage 1 builds the wheel (Rust + maturin; librdkafka is compiled from source by
# the rdkafka crate, linked to the system OpenSSL and zlib); stage 2 installs it on
# the same slim Python, which has those libraries (hence a plain `linux` wheel tag,
# no manylinux audit: the wheel is for this image only).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG RUST_VERSION=stable
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential ca-certificates curl pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}" \
    && rustc --version
RUN pip install --no-cache-dir "maturin>=1.5,<2"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/opt/cargo/registry \
    --mount=type=cache,target=/src/target \
    maturin build --release --locked --compatibility linux --out /dist

# The star leaders app is bundled in the wheel (wallaroo/examples/star_leaders):
# `python -m wallaroo star_leaders` finds it there. Mount other apps into /app.
FROM ${PYTHON_IMAGE}
COPY --from=builder /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist
WORKDIR /app
ENV PYTHONUNBUFFERED=1
RUN useradd --system --home-dir /app wallaroo
USER wallaroo
CMD ["python", "-m", "wallaroo", "--help"]
