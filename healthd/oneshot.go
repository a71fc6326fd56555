package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// probeForms names what --probe accepts, for its errors.
const probeForms = "want host:port, http://host[:port][/path], https://host[:port][/path], tcp://host:port, or a JSON file of targets"

// probeTargets turns --probe into the targets to probe once: a JSON file
// of targets when the argument names a file; else one target, from a URL
// (its scheme, host, port and path decide the check, and --probe-type and
// --probe-path are not used) or from host:port (checked as --probe-type at
// --probe-path). Anything else is an error naming the flag and the forms.
func (c *cli) probeTargets() ([]probe.Target, error) {
	if st, err := os.Stat(c.Probe); err == nil && !st.IsDir() {
		b, err := os.ReadFile(c.Probe)
		var targets []probe.Target
		if err == nil {
			err = json.Unmarshal(b, &targets)
		}
		if err != nil {
			return nil, fmt.Errorf("--probe %s: %w", c.Probe, err)
		}
		// As when running: "$env:BERTH_PROBE_…" header values and bodies
		// are read from healthd's environment, never sent as written.
		for i := range targets {
			app, _, _ := strings.Cut(targets[i].Key, ".")
			targets[i].Check = checker.ResolveSecrets(app, targets[i].Check, os.LookupEnv)
		}
		return targets, nil
	}
	typ, addr, path, tls, err := parseProbe(c.Probe, c.ProbeType, c.ProbePath)
	if err != nil {
		return nil, err
	}
	h := &spec.Health{Type: typ, Path: path, TLS: tls, Timeout: spec.Duration(c.ProbeTimeout),
		Interval: spec.Duration(c.ProbeTimeout + time.Second), HealthyThreshold: 1, UnhealthyThreshold: 1}
	a := &spec.App{Port: 1, Health: h}
	a.Default() // method, expected status, port
	if typ == spec.HealthTCP {
		h.Path = ""
	}
	return []probe.Target{{Key: c.Probe, Address: addr, Check: *h}}, nil
}

// parseProbe reads a --probe address: a URL (http, https or tcp) or
// host:port. It returns the check type, the host:port to dial, the HTTP
// path and whether to use TLS. typ and path are used for host:port only.
func parseProbe(arg, typ, path string) (checkType, addr, reqPath string, tls bool, err error) {
	bad := func(why string) error { return fmt.Errorf("--probe %q: %s; %s", arg, why, probeForms) }
	if host, port, err := net.SplitHostPort(arg); err == nil && host != "" && validPort(port) {
		return typ, arg, path, false, nil
	}
	u, err := url.Parse(arg)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", "", "", false, bad("not an address or a URL")
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", "", "", false, bad("user info, a query or a fragment cannot be probed")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" || port != "" && !validPort(port) {
		return "", "", "", false, bad("the URL's host or port is not valid")
	}
	switch u.Scheme {
	case "http", "https":
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		reqPath = u.EscapedPath()
		if reqPath == "" {
			reqPath = "/"
		}
		return spec.HealthHTTP, net.JoinHostPort(host, port), reqPath, u.Scheme == "https", nil
	case "tcp":
		if port == "" {
			return "", "", "", false, bad("a tcp:// URL needs a port")
		}
		if p := u.EscapedPath(); p != "" && p != "/" {
			return "", "", "", false, bad("a tcp:// URL has no path")
		}
		return spec.HealthTCP, net.JoinHostPort(host, port), "", false, nil
	}
	return "", "", "", false, bad(fmt.Sprintf("scheme %q is not http, https or tcp", u.Scheme))
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 1 && n <= 65535
}
