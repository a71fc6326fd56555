# nginx with lbagent as its sidecar supervisor, in one image: lbagent is the
# entrypoint, owns nginx.conf, starts nginx as its child (--manage-nginx),
# renders every change from NATS, tests it with nginx -t, swaps and reloads.
# Built from the repository root: docker build -f compose/lbagent.Dockerfile .
ARG NGINX_IMAGE=nginx:1.27-bookworm
FROM ${NGINX_IMAGE}
COPY bin/lbagent /usr/local/bin/lbagent
COPY templates /etc/berth/templates
RUN mkdir -p /var/lib/berth/nginx /var/lib/berth/lbagent \
 && rm -f /etc/nginx/conf.d/default.conf
EXPOSE 80 443 9102
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lbagent", "--manage-nginx", "--nginx-bin", "/usr/sbin/nginx", \
            "--nginx-conf", "/var/lib/berth/nginx/nginx.conf", "--nginx-prefix", "/var/lib/berth/nginx", \
            "--state-dir", "/var/lib/berth/lbagent", "--templates", "/etc/berth/templates"]
