# healthd: a static binary (make build, CGO_ENABLED=0) and nothing else.
# Built from the repository root: docker build -f compose/healthd.Dockerfile .
FROM scratch
COPY bin/healthd /healthd
EXPOSE 9103
ENTRYPOINT ["/healthd"]
