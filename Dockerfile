# ntsd, the NTS server, as a container image.
#   docker build -t ntsd .
#   docker run -d --name ntsd -p 123:123/udp -p 4460:4460/tcp -p 9460:9460/tcp \
#     -v /etc/ntsd/tls:/etc/ntsd/tls:ro -v ntsd-keys:/var/lib/ntsd ntsd
# Docker's default seccomp profile blocks io_uring; the default back end
# ("auto" = portable) does not need it. README "Containers" shows how to allow
# io_uring for backend = "io-uring".

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit for ntsd_build_info (the build context has no .git).
ARG NTSD_COMMIT=unknown
RUN NTSD_COMMIT=$NTSD_COMMIT cargo build --release --locked -p ntsd \
 && install -m 0755 target/release/ntsd /usr/local/bin/ntsd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 4460 ntsd \
 && useradd --system --uid 4460 --gid ntsd --home-dir /var/lib/ntsd --shell /usr/sbin/nologin ntsd \
 && install -d -o ntsd -g ntsd -m 0700 /var/lib/ntsd \
 && install -d -m 0755 /etc/ntsd /etc/ntsd/tls
COPY --from=build /usr/local/bin/ntsd /usr/local/bin/ntsd
# Port 123 as a non-root user: the one capability, on the binary.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/ntsd \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y
COPY deploy/docker/config.toml /etc/ntsd/config.toml
USER ntsd
VOLUME ["/var/lib/ntsd", "/etc/ntsd/tls"]
EXPOSE 123/udp 4460/tcp 9460/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["ntsd", "ready", "--config", "/etc/ntsd/config.toml"]
ENTRYPOINT ["ntsd", "run", "--config", "/etc/ntsd/config.toml"]
