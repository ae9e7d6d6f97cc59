# syntax=docker/dockerfile:1
# Bulwark operator image: a static (musl) binary on an empty base, running as UID 65532.
# The role and user Jobs run this same image (`bulwark provision ...`).
#
#   docker build -t bulwark:0.1.0 .
#   kind load docker-image bulwark:0.1.0

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
# musl-tools: C toolchain for aws-lc-sys (rcgen's aws_lc_rs) on the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl > /rust-target ;; \
      arm64) echo aarch64-unknown-linux-musl > /rust-target ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testenv ./testenv
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --locked --release --bin bulwark --target "$target" \
 && cp "target/$target/release/bulwark" /bulwark \
 && /bulwark version

FROM scratch
LABEL org.opencontainers.image.title="bulwark" \
      org.opencontainers.image.description="Kubernetes operator that hardens a three-tier application from one SecurityPolicy" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /bulwark /usr/local/bin/bulwark
# The Jobs run `bulwark provision ...` by name: keep it on PATH.
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bulwark"]
CMD ["run"]
