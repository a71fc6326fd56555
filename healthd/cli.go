package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
)

// cli is every flag of healthd; each has an env name BERTH_HEALTHD_….
type cli struct {
	NATS           bus.Flags     `embed:"" envprefix:"BERTH_HEALTHD_"`
	Prefix         string        `help:"Prefix of every NATS bucket and subject." default:"berth" env:"BERTH_HEALTHD_PREFIX"`
	ID             string        `help:"This checker's id (default: host name and pid)." default:"" env:"BERTH_HEALTHD_ID"`
	MaxConc        int           `name:"max-concurrency" help:"Probes in flight at once." default:"512" env:"BERTH_HEALTHD_MAX_CONCURRENCY"`
	Refresh        time.Duration `help:"Put health values again this often: those whose status changed, and each at least every tenth time (all of them after a NATS reconnect); health no checker probes is deleted at the same pace." default:"30s" env:"BERTH_HEALTHD_REFRESH"`
	MaxTimeout     time.Duration `name:"max-probe-timeout" help:"Cap on every probe's timeout, whatever an app's health.timeout says: the longest one probe holds one of the --max-concurrency slots." default:"10s" env:"BERTH_HEALTHD_MAX_PROBE_TIMEOUT"`
	MetricsMaxApps int           `name:"metrics-max-apps" help:"Most apps with a berth_healthd_probe_duration_seconds series of their own on /metrics; the probes of the others are observed under app=\"_other\" and the apps counted in berth_healthd_metrics_apps_dropped. 0 puts every app under _other." default:"1000" env:"BERTH_HEALTHD_METRICS_MAX_APPS"`
	Metrics        string        `name:"metrics-listen" help:"Address for /metrics, /healthz and /readyz; empty turns it off." default:"127.0.0.1:9103" env:"BERTH_HEALTHD_METRICS_LISTEN"`

	LogLevel  string `name:"log-level" help:"debug, info, warn or error." default:"info" env:"BERTH_HEALTHD_LOG_LEVEL"`
	LogFormat string `name:"log-format" help:"json or console." default:"json" env:"BERTH_HEALTHD_LOG_FORMAT"`

	CheckConfig  bool          `name:"check-config" help:"Check the flags, print what is wrong, and exit 0 or 1." default:"false"`
	Probe        string        `help:"Probe once and exit (0: all passed, 1: one failed): host:port, http://host[:port][/path], https://host[:port][/path], tcp://host:port, or a JSON file of targets [{\"key\":…,\"address\":…,\"check\":{…}}]." default:""`
	ProbeType    string        `name:"probe-type" help:"With --probe host:port: http or tcp (a URL's scheme decides for itself)." default:"http"`
	ProbePath    string        `name:"probe-path" help:"With --probe host:port: the HTTP path (a URL's path decides for itself)." default:"/healthz"`
	ProbeTimeout time.Duration `name:"probe-timeout" help:"With --probe: the timeout of each probe." default:"2s"`

	// crash makes a stop behave like a crash (no goodbye): tests only.
	crash bool
}

func (c *cli) id() string {
	if c.ID != "" {
		return c.ID
	}
	h, _ := os.Hostname()
	return msg.NodeID(fmt.Sprintf("%s-%d", h, os.Getpid()))
}

// check returns every problem with the flags at once.
func (c *cli) check() error {
	var errs []error
	if _, err := msg.NewNames(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("--prefix: %w", err))
	}
	if c.ID != "" {
		if err := msg.CheckToken(c.ID); err != nil {
			errs = append(errs, fmt.Errorf("--id: %w", err))
		}
	}
	if c.MaxConc < 1 || c.MaxConc > 100000 {
		errs = append(errs, fmt.Errorf("--max-concurrency (%d): must be between 1 and 100000", c.MaxConc))
	}
	if c.MetricsMaxApps < 0 || c.MetricsMaxApps > maxMetricsApps {
		errs = append(errs, fmt.Errorf("--metrics-max-apps %d: want 0 (every app under _other) to %d", c.MetricsMaxApps, maxMetricsApps))
	}
	if c.Refresh < time.Second {
		errs = append(errs, fmt.Errorf("--refresh (%s): must be at least 1s", c.Refresh))
	}
	if c.ProbeType != "http" && c.ProbeType != "tcp" {
		errs = append(errs, fmt.Errorf("--probe-type %q: must be http or tcp", c.ProbeType))
	}
	if c.Probe != "" {
		if _, err := c.probeTargets(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxTimeout < 10*time.Millisecond || c.MaxTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("--max-probe-timeout (%s): must be 10ms to 1h", c.MaxTimeout))
	}
	if c.ProbeTimeout <= 0 {
		errs = append(errs, errors.New("--probe-timeout: must be positive"))
	}
	if err := (logging.Options{Level: c.LogLevel, Format: c.LogFormat}).Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.NATS.Options("healthd"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func parse(args []string, stdout, stderr *os.File) (*cli, int, bool) {
	c, _, code, done := cmdline.Parse[cli]("healthd",
		"Berth healthd: probes every instance over HTTP or TCP and publishes health on NATS.", bus.FlagVars, args, stdout, stderr)
	return c, code, done
}
