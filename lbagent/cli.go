package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/render"
)

// cli is every flag of lbagent; each has an env name BERTH_LBAGENT_….
type cli struct {
	NATS   bus.Flags `embed:"" envprefix:"BERTH_LBAGENT_"`
	Prefix string    `help:"Prefix of every NATS bucket and subject." default:"berth" env:"BERTH_LBAGENT_PREFIX"`
	Node   string    `help:"This agent's node id (default: the node of a --nats-nkey credential of a node's own key, else the host name, made a valid token)." default:"" env:"BERTH_LBAGENT_NODE"`

	Templates    string `help:"Directory of nginx templates, watched for edits; the embedded copy is used when it does not exist." default:"templates" env:"BERTH_LBAGENT_TEMPLATES"`
	NginxBin     string `name:"nginx-bin" help:"nginx executable." default:"nginx" env:"BERTH_LBAGENT_NGINX_BIN"`
	NginxConf    string `name:"nginx-conf" help:"Main nginx.conf that lbagent owns and writes (with --manage-nginx, or beside an nginx started with -c this file)." default:"" env:"BERTH_LBAGENT_NGINX_CONF" type:"path"`
	ConfDir      string `name:"conf-dir" help:"Include directory of an nginx.conf lbagent does not own: lbagent writes only berth.conf there; include it inside http {}." default:"" env:"BERTH_LBAGENT_CONF_DIR" type:"path"`
	NginxPid     string `name:"nginx-pid-file" help:"Pid file of the nginx to reload when lbagent does not manage it." default:"/run/nginx.pid" env:"BERTH_LBAGENT_NGINX_PID_FILE" type:"path"`
	NginxPrefix  string `name:"nginx-prefix" help:"Prefix (-p) of a managed nginx: its run/, logs/ and temp/ live here." default:"/var/lib/berth/nginx" env:"BERTH_LBAGENT_NGINX_PREFIX" type:"path"`
	Manage       bool   `name:"manage-nginx" help:"Start nginx as a child and supervise it (the sidecar image); needs --nginx-conf." default:"false" env:"BERTH_LBAGENT_MANAGE_NGINX"`
	LeaveNginx   bool   `name:"leave-nginx-running" help:"With --manage-nginx: on a clean stop (SIGTERM) leave nginx serving, for the next lbagent to adopt, instead of quitting it gracefully." default:"false" env:"BERTH_LBAGENT_LEAVE_NGINX_RUNNING"`
	UpstreamMode string `name:"upstream-mode" help:"auto, dynamic or reload: dynamic pushes endpoint changes into nginx's Lua balancer without a reload; auto picks it when lbagent owns nginx.conf and nginx has the Lua module." default:"auto" enum:"auto,dynamic,reload" env:"BERTH_LBAGENT_UPSTREAM_MODE"`
	ModulesDir   string `name:"nginx-modules-dir" help:"Directory of ndk_http_module.so and ngx_http_lua_module.so (dynamic mode); empty when they are compiled into nginx (OpenResty)." default:"/usr/lib/nginx/modules" env:"BERTH_LBAGENT_NGINX_MODULES_DIR" type:"path"`
	StateDir     string `name:"state-dir" help:"Directory for the staging tree used by nginx -t." default:"/var/lib/berth/lbagent" env:"BERTH_LBAGENT_STATE_DIR" type:"path"`

	ListenHTTP   string        `name:"listen-http" help:"Where nginx accepts app traffic." default:"0.0.0.0:80" env:"BERTH_LBAGENT_LISTEN_HTTP"`
	ListenHTTPS  string        `name:"listen-https" help:"Where nginx accepts TLS app traffic." default:"0.0.0.0:443" env:"BERTH_LBAGENT_LISTEN_HTTPS"`
	StatusListen string        `name:"status-listen" help:"nginx status listener: stub_status and the generation endpoint." default:"127.0.0.1:8091" env:"BERTH_LBAGENT_STATUS_LISTEN"`
	AccessLog    string        `name:"access-log-socket" help:"Unix datagram socket nginx sends its JSON access log to; empty turns the access log off." default:"" env:"BERTH_LBAGENT_ACCESS_LOG_SOCKET"`
	MetricsWin   time.Duration `name:"metrics-window" help:"Window over which access log metrics are aggregated and published on <prefix>.v1.metrics.<app>." default:"5s" env:"BERTH_LBAGENT_METRICS_WINDOW"`
	Debounce     string        `help:"min:max wait that lets a burst of changes settle into one reload." default:"50ms:500ms" env:"BERTH_LBAGENT_DEBOUNCE"`
	Resync       time.Duration `help:"Re-render this often even without a change." default:"60s" env:"BERTH_LBAGENT_RESYNC"`
	EmptyHold    time.Duration `name:"empty-hold" help:"How long a state with every instance record gone is held back before it is applied; also how long a bucket loaded again (a NATS reset) keeps the app and instance records it lacks, until the scheduler puts them back." default:"30s" env:"BERTH_LBAGENT_EMPTY_HOLD"`
	DynRoutes    bool          `name:"dynamic-routes" negatable:"" help:"Dynamic mode: route apps by nginx's Lua router, from a route table pushed with their endpoints, so creating, changing or removing an app, its hosts, paths and rules reloads nothing. Apps the router cannot route yet (TLS, lb.keepalive 0, and the apps sharing a host with them; see docs/lbagent.md) are rendered as before. --no-dynamic-routes renders every app." default:"true" env:"BERTH_LBAGENT_DYNAMIC_ROUTES"`
	ReloadDrain  time.Duration `name:"reload-drain" help:"Dynamic mode: before a reload, how long nginx closes each keep-alive connection after its answer, so that the reload cuts no connection a client is about to use; 0 reloads at once (0-10s)." default:"250ms" env:"BERTH_LBAGENT_RELOAD_DRAIN"`
	Confirm      time.Duration `name:"confirm-timeout" help:"The least time nginx has to serve a new generation after a reload. A big config is waited for longer: 3x its nginx -t time or the last reload's time to serve, whichever is longer, then while nginx's master still works on it (at most 10m in all). A reload is never signalled again while the last one may still be taking effect; changes that come meanwhile make one reload after it." default:"10s" env:"BERTH_LBAGENT_CONFIRM_TIMEOUT"`
	ACMEListen   string        `name:"acme-listen" help:"Loopback address where lbagent answers ACME HTTP-01 challenges, which nginx forwards from apps with tls.acme; port 0 picks one and keeps it across restarts." default:"127.0.0.1:0" env:"BERTH_LBAGENT_ACME_LISTEN"`
	Metrics      string        `name:"metrics-listen" help:"Address for /metrics, /healthz and /readyz; empty turns it off." default:"127.0.0.1:9102" env:"BERTH_LBAGENT_METRICS_LISTEN"`
	LogLevel     string        `name:"log-level" help:"debug, info, warn or error." default:"info" env:"BERTH_LBAGENT_LOG_LEVEL"`
	LogFormat    string        `name:"log-format" help:"json or console." default:"json" env:"BERTH_LBAGENT_LOG_FORMAT"`

	// AccessLogGroup may send to the access log socket, beside lbagent.
	AccessLogGroup string `name:"access-log-group" help:"Group (name or id) of nginx's workers, which may send to the access log socket (mode 0660); empty: as root, the primary group of user nginx or else nobody (nginx's default worker users), else lbagent's own group." default:"" env:"BERTH_LBAGENT_ACCESS_LOG_GROUP"`

	// MetricsMaxApps caps the apps with per-app series on /metrics.
	MetricsMaxApps int `name:"metrics-max-apps" help:"Most apps with per-app Prometheus series on /metrics (requests, request durations, upstream connect errors, from the access log); apps beyond it are counted in berth_lbagent_metrics_apps_dropped_total and logged; 0 turns the per-app series off." default:"1000" env:"BERTH_LBAGENT_METRICS_MAX_APPS"`

	// dyn is the resolved dynamic upstream mode; nil: reload mode.
	dyn *render.Dynamic
	// acmeAddr is where the challenge responder listens, once it does.
	acmeAddr string
	// keyNode is the node whose own key --nats-nkey holds (scheduler
	// nats-credential lbagent --node), "" for the shared lbagent key.
	keyNode string

	CheckConfig bool   `name:"check-config" help:"Check the flags and templates, print what is wrong, and exit 0 or 1." default:"false"`
	DryRun      string `name:"dry-run" help:"Render once to stdout and exit: from live NATS state with '-', or from a JSON snapshot file." default:"" type:"path"`
}

// maxMetricsApps bounds --metrics-max-apps: each app has 23 series (5
// status classes, 17 of the histogram, connect errors).
const maxMetricsApps = 100000

// debounce parses --debounce.
func (c *cli) debounce() (lo, hi time.Duration, err error) {
	a, b, ok := strings.Cut(c.Debounce, ":")
	if !ok {
		return 0, 0, fmt.Errorf("--debounce %q: want min:max, e.g. 50ms:500ms", c.Debounce)
	}
	if lo, err = time.ParseDuration(a); err == nil {
		hi, err = time.ParseDuration(b)
	}
	if err != nil || lo <= 0 || hi < lo {
		return 0, 0, fmt.Errorf("--debounce %q: want min:max with 0 < min <= max, e.g. 50ms:500ms", c.Debounce)
	}
	return lo, hi, nil
}

// check checks every flag and returns all problems at once. (It is not
// named Validate so that kong leaves it to run, which decides between exit
// code 1 for --check-config and 2 for a usage error.)
func (c *cli) check() error {
	var errs []error
	if (c.NginxConf == "") == (c.ConfDir == "") {
		errs = append(errs, errors.New("give exactly one of --nginx-conf (lbagent owns nginx.conf) or --conf-dir (lbagent owns an include directory)"))
	}
	if c.Manage && c.NginxConf == "" {
		errs = append(errs, errors.New("--manage-nginx needs --nginx-conf: a supervised nginx runs the config lbagent owns"))
	}
	if c.NginxConf != "" && !filepath.IsAbs(c.NginxConf) || c.ConfDir != "" && !filepath.IsAbs(c.ConfDir) {
		errs = append(errs, errors.New("--nginx-conf and --conf-dir must be absolute paths"))
	}
	if _, err := msg.NewNames(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("--prefix: %w", err))
	}
	if c.Node != "" {
		if err := msg.CheckToken(c.Node); err != nil {
			errs = append(errs, fmt.Errorf("--node: %w", err))
		}
	}
	for flag, v := range map[string]string{"--listen-http": c.ListenHTTP, "--listen-https": c.ListenHTTPS, "--status-listen": c.StatusListen} {
		if err := msg.CheckAddress(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	if ap, err := netip.ParseAddrPort(c.ACMEListen); err != nil || !ap.Addr().IsLoopback() {
		errs = append(errs, fmt.Errorf("--acme-listen %q: must be a loopback address and port (127.0.0.1:0): only nginx on this host talks to it", c.ACMEListen))
	}
	if c.AccessLog != "" && !filepath.IsAbs(c.AccessLog) {
		errs = append(errs, errors.New("--access-log-socket must be an absolute path"))
	}
	if _, _, err := c.debounce(); err != nil {
		errs = append(errs, err)
	}
	if c.Resync <= 0 || c.EmptyHold < 0 || c.Confirm <= 0 || c.MetricsWin <= 0 {
		errs = append(errs, errors.New("--resync, --confirm-timeout and --metrics-window must be positive, --empty-hold not negative"))
	}
	if c.MetricsMaxApps < 0 || c.MetricsMaxApps > maxMetricsApps {
		errs = append(errs, fmt.Errorf("--metrics-max-apps %d: want 0 (no per-app series) to %d", c.MetricsMaxApps, maxMetricsApps))
	}
	if c.ReloadDrain < 0 || c.ReloadDrain > 10*time.Second {
		errs = append(errs, fmt.Errorf("--reload-drain %s: want 0 to 10s", c.ReloadDrain))
	}
	if err := (logging.Options{Level: c.LogLevel, Format: c.LogFormat}).Validate(); err != nil {
		errs = append(errs, err)
	}
	if o, err := c.NATS.Options("lbagent"); err != nil {
		errs = append(errs, err)
	} else if c.keyNode = o.Keys.Node(); c.keyNode != "" && c.Node != "" && c.Node != c.keyNode {
		errs = append(errs, fmt.Errorf("--node %s: --nats-nkey is the key of lbagent node %s, which may write only that node's record: "+
			"give --node %s (or no --node), or that node's own credential (scheduler nats-credential lbagent --node %s)", c.Node, c.keyNode, c.keyNode, c.Node))
	}
	return errors.Join(errs...)
}

// node returns --node, or the node of a node's own credential, or the
// host name made a valid token.
func (c *cli) node() string {
	if c.Node != "" {
		return c.Node
	}
	if c.keyNode != "" {
		return c.keyNode
	}
	h, _ := os.Hostname()
	return msg.NodeID(h)
}

// target is the file lbagent writes and whether it is a whole nginx.conf.
func (c *cli) target() (path string, main bool) {
	if c.NginxConf != "" {
		return c.NginxConf, true
	}
	return filepath.Join(c.ConfDir, "berth.conf"), false
}

func parse(args []string, stdout, stderr *os.File) (*cli, int, bool) {
	c, _, code, done := cmdline.Parse[cli]("lbagent",
		"Berth lbagent: renders nginx config from NATS state, tests, swaps, reloads and confirms it.", bus.FlagVars, args, stdout, stderr)
	return c, code, done
}
