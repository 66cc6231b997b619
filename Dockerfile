# syntax=docker/dockerfile:1
# The tokenvend image: built with the Rust toolchain, run on distroless (glibc, CA roots,
# no shell, no package manager) as the unprivileged `nonroot` user, UID 65532.
#
#   docker build -t tokenvend .
#   docker build --build-arg PGO=0 -t tokenvend .    # quicker build, ~20% more CPU per call
#   docker run --rm -p 50051:50051 -v $PWD/tokenvend.yaml:/etc/tokenvend/config.yaml:ro tokenvend

FROM rust:1.95-bookworm AS build
# By default the binary is built with profile-guided optimisation (scripts/build-pgo): a
# training run of the benchmark harness on loopback, then a build tuned by its profile,
# which spends about a fifth fewer instructions per cache hit (BENCHMARKS.md). It takes
# three release builds instead of one.
ARG PGO=1
RUN if [ "$PGO" = 1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends nghttp2-client \
      && rm -rf /var/lib/apt/lists/* && rustup component add llvm-tools; \
    fi
WORKDIR /src
COPY . .
# The caches keep crates and build output between builds on one machine; the binary is
# copied out of the cache mount so that the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      scripts/build-pgo && cp target/pgo/tokenvend /usr/local/bin/tokenvend; \
    else \
      cargo build --release --locked -p tokenvend-server --bin tokenvend \
      && cp target/release/tokenvend /usr/local/bin/tokenvend; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/tokenvend /tokenvend
USER 65532:65532
# gRPC, and the admin HTTP port (/livez, /readyz).
EXPOSE 50051 9090
ENTRYPOINT ["/tokenvend"]
CMD ["serve", "--config", "/etc/tokenvend/config.yaml"]
