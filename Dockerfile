# syntax=docker/dockerfile:1
# The dialerd image: a release build with the Rust version Cargo.toml asks for
# (rust-version 1.95) on Debian 12, run as uid 65532 on distroless cc (glibc,
# libgcc, CA certificates, no shell). Build it from the repository root:
#
#   docker build -t dialerd:0.1.0 \
#     --build-arg VERSION=0.1.0 \
#     --build-arg GIT_REVISION="$(git rev-parse --short=12 HEAD)" .
#
# `dialerd version` in the image prints the version and GIT_REVISION.
# docs/deploy-doks.md has the push to DigitalOcean's registry.

FROM rust:1.95-slim-bookworm AS builder
ARG GIT_REVISION=unknown
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The cargo registry and target directory are build caches (BuildKit), so the
# binary is copied out in the same step. build.rs finds no .git here (see
# .dockerignore): the revision comes from DIALERD_GIT_REVISION.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    DIALERD_GIT_REVISION="${GIT_REVISION}" cargo build --release --locked --bin dialerd \
    && install -m 0755 target/release/dialerd /usr/local/bin/dialerd

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG GIT_REVISION=unknown
ARG SOURCE_URL=https://github.com/REPLACE-ME/dialerd
LABEL org.opencontainers.image.title="dialerd" \
      org.opencontainers.image.description="SIP user-agent dialer daemon: registers with a PBX, places and takes calls, relays RTP, driven over Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=builder /usr/local/bin/dialerd /usr/local/bin/dialerd
COPY sip-profiles/ /usr/share/dialerd/sip-profiles/
ENV DIALERD_PROFILE_DIR=/usr/share/dialerd/sip-profiles
# Numeric, so that the kubelet can check runAsNonRoot.
USER 65532:65532
# Documentation only: the pod uses host networking. 8080 is the status
# server, 5060/udp the default SIP listener; RTP uses media.rtp_port_range.
EXPOSE 8080/tcp 5060/udp
ENTRYPOINT ["/usr/local/bin/dialerd"]
CMD ["run", "--config", "/etc/dialerd/dialerd.toml"]
