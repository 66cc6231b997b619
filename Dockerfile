# syntax=docker/dockerfile:1
# The tokenvend image: built with the Rust toolchain, run on distroless (glibc, CA roots,
# no shell, no package manager) as the unprivileged `nonroot` user, UID 65532.
#
#   docker build -t tokenvend .
#   docker run --rm -p 50051:50051 -v $PWD/tokenvend.yaml:/etc/tokenvend/config.yaml:ro tokenvend

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep crates and build output between builds on one machine; the binary is
# copied out of the cache mount so that the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tokenvend-server --bin tokenvend \
    && cp target/release/tokenvend /usr/local/bin/tokenvend

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/tokenvend /tokenvend
USER 65532:65532
# gRPC, and the admin HTTP port (/livez, /readyz).
EXPOSE 50051 9090
ENTRYPOINT ["/tokenvend"]
CMD ["serve", "--config", "/etc/tokenvend/config.yaml"]
