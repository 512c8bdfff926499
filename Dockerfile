# One image for every role: `stowage agent`, `stowage controller`, `stowage extender`.
#   docker build -t stowage:0.1.0 .
# The toolchain CI builds and tests with; Cargo.toml's rust-version (1.89) is the floor.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin stowage \
 && cp target/dist/stowage /stowage

# distroless/cc has glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /stowage /usr/local/bin/stowage
# Roles pick their own user in the manifests: the agent runs as root (pool directories),
# the controller and extender as 65532.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/stowage"]
