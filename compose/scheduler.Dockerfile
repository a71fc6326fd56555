# The scheduler: a static binary (make build, CGO_ENABLED=0) and nothing else.
# Built from the repository root: docker build -f compose/scheduler.Dockerfile .
FROM scratch
COPY bin/scheduler /scheduler
EXPOSE 7070
ENTRYPOINT ["/scheduler"]
CMD ["run"]
