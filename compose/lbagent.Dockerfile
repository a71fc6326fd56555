# nginx with lbagent as its sidecar supervisor, in one image: lbagent is the
# entrypoint, owns nginx.conf, starts nginx as its child (--manage-nginx),
# renders every change from NATS, tests it with nginx -t, swaps and reloads.
# Built from the repository root: docker build -f compose/lbagent.Dockerfile .
# OpenResty is nginx with lua-nginx-module, lua-resty-core and lua-cjson compiled
# in: lbagent's dynamic upstreams (endpoint changes without reloads) need them.
# With a plain nginx image lbagent falls back to reload mode (--upstream-mode auto).
ARG NGINX_IMAGE=openresty/openresty:1.25.3.2-bookworm
FROM ${NGINX_IMAGE}
COPY bin/lbagent /usr/local/bin/lbagent
COPY templates /etc/berth/templates
RUN mkdir -p /var/lib/berth/nginx /var/lib/berth/lbagent \
 && rm -f /etc/nginx/conf.d/default.conf
EXPOSE 80 443 9102
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lbagent", "--manage-nginx", "--nginx-bin", "/usr/local/openresty/nginx/sbin/nginx", "--nginx-modules-dir", "", \
            "--nginx-conf", "/var/lib/berth/nginx/nginx.conf", "--nginx-prefix", "/var/lib/berth/nginx", \
            "--state-dir", "/var/lib/berth/lbagent", "--templates", "/etc/berth/templates"]
