# Prometheus for the compose test where prom/prometheus cannot be pulled: the
# binary of the host's Debian `prometheus` package (it links libc only) on
# the test's own base image, laid out like the official image (entrypoint
# /bin/prometheus, data in /prometheus owned by nobody).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY prometheus /usr/bin/prometheus
RUN install -d -o 65534 -g 65534 /prometheus
USER 65534:65534
ENTRYPOINT ["/usr/bin/prometheus"]
