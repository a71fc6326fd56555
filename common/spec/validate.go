package spec

import (
	"fmt"
	"strings"
	"time"
)

// Bounds that Validate enforces, documented in docs/spec.md.
const (
	MaxReplicas    = 1000
	MaxEnvVars     = 1000
	MaxCommandArgs = 256
	MaxArgLen      = 4096
	MaxHosts       = 100
	MaxPaths       = 100
	// MaxRoutes caps hosts × paths of one app: each is a location (two
	// for a prefix) in every nginx; 100 × 100 rendered 26 MB of config.
	MaxRoutes       = 1000
	MaxHeaders      = 50
	MaxHealthBody   = 64 << 10
	MaxTCPSend      = 1 << 10
	MaxTCPExpect    = 1 << 10
	MaxCPU          = 256.0
	MinMemory       = ByteSize(6 << 20)
	MaxMemory       = ByteSize(1 << 40)
	MinPids         = 16
	MaxPids         = 32768
	MaxBodySizeSize = ByteSize(100 << 30)
)

// Validate checks the whole spec after defaults and returns every problem at
// once as Errors, or nil.
func (a *App) Validate() error {
	var es Errors
	es.Check("name", CheckName(a.Name))
	if a.Image == "" {
		es.Add("image", "must be set (an image reference such as registry.local/web:1.4.2)")
	} else {
		es.Check("image", CheckImage(a.Image))
	}
	if len(a.Command) > MaxCommandArgs {
		es.Add("command", "has %d arguments; at most %d", len(a.Command), MaxCommandArgs)
	}
	for i, arg := range a.Command {
		if strings.ContainsRune(arg, 0) || len(arg) > MaxArgLen {
			es.Add(Index("command", i), "must have no NUL byte and at most %d characters", MaxArgLen)
		}
	}
	validateEnv(a.Env, &es) // never echoes a value
	intIn(&es, "port", a.Port, 1, 65535)

	switch {
	case a.Replicas != nil && a.Scaling != nil:
		es.Add("replicas", "cannot be set together with scaling: use replicas for a fixed count, or scaling.min and scaling.max")
	case a.Replicas != nil:
		intIn(&es, "replicas", *a.Replicas, 0, MaxReplicas)
	case a.Scaling != nil:
		a.Scaling.validate("scaling", &es)
	}
	a.Resources.validate("resources", &es)
	if a.Health != nil {
		h := *a.Health
		if h.Port == 0 {
			h.Port = a.Port
		}
		es = append(es, h.Validate("health")...)
		refs := map[string]string{"health.body": h.Body}
		for k, v := range h.Headers {
			refs[Key("health.headers", k)] = v
		}
		if _, ref := EnvRef(h.Body); h.Body != "" && !ref {
			es.Add("health.body", "is published to every NATS reader with the app, so it must be a reference: put the body in healthd's environment as %sBODY and write body: $env:%sBODY",
				ProbeEnvPrefixOf(a.Name), ProbeEnvPrefixOf(a.Name))
		}
		for _, p := range sortedKeys(refs) {
			if name, ok := EnvRef(refs[p]); ok && !OwnEnvRef(a.Name, name) {
				es.Add(p, "$env:%s is not this app's: its references name variables %s followed by A-Z, 0-9 and single '_' (healthd resolves no other)",
					name, ProbeEnvPrefixOf(a.Name))
			}
		}
		if what, ok := reservedPorts[h.Port]; ok && h.Port != a.Port {
			es.Add("health.port", "(%d) is %s, which Berth itself uses: a health check probes the app's own container, "+
				"so probe port (%d) or another port the container listens on", h.Port, what, a.Port)
		}
	}
	a.Update.validate("update", &es)
	a.Restart.validate("restart", &es)
	es.Check("stop.signal", CheckSignal(a.Stop.Signal))
	durIn(&es, "stop.grace", a.Stop.Grace, 0, time.Hour)
	durIn(&es, "stop.drain", a.Stop.Drain, 0, 10*time.Minute)
	es = append(es, a.LB.Validate("lb")...)
	es = append(es, a.Routing.Validate("routing")...)
	for i, sh := range a.Routing.ShareWith {
		if sh.App == a.Name {
			es.Add(Join(Index("routing.share_with", i), "app"), "%q is this app itself: an app always routes on the hosts it owns", sh.App)
		}
	}
	es = append(es, a.Placement.Validate("placement")...)
	a.Logging.validate("logging", &es)
	a.Release.validate("release", &es)
	return es.Err()
}

func (s *Scaling) validate(path string, es *Errors) {
	intIn(es, Join(path, "min"), s.Min, 1, MaxReplicas)
	intIn(es, Join(path, "max"), s.Max, 1, MaxReplicas)
	if s.Min > s.Max {
		es.Add(Join(path, "min"), "(%d) must not be more than %s (%d)", s.Min, Join(path, "max"), s.Max)
	}
	if s.TargetCPUPercent == 0 && s.TargetMemoryPercent == 0 && s.TargetRPSPerReplica == 0 && s.TargetP95LatencyMS == 0 {
		es.Add(path, "needs at least one target: target_cpu_percent, target_memory_percent, target_rps_per_replica or target_p95_latency_ms")
	}
	floatIn(es, Join(path, "target_cpu_percent"), s.TargetCPUPercent, 0, 100)
	floatIn(es, Join(path, "target_memory_percent"), s.TargetMemoryPercent, 0, 100)
	floatIn(es, Join(path, "target_rps_per_replica"), s.TargetRPSPerReplica, 0, 1e6)
	floatIn(es, Join(path, "target_p95_latency_ms"), s.TargetP95LatencyMS, 0, 600000)
	durIn(es, Join(path, "scale_up_stabilization"), s.ScaleUpStabilization, 0, time.Hour)
	durIn(es, Join(path, "scale_down_stabilization"), s.ScaleDownStabilization, 0, time.Hour)
	durIn(es, Join(path, "window"), s.Window, time.Second, time.Hour)
	durIn(es, Join(path, "scale_up_cooldown"), s.ScaleUpCooldown, 0, time.Hour)
	durIn(es, Join(path, "scale_down_cooldown"), s.ScaleDownCooldown, 0, time.Hour)
	floatIn(es, Join(path, "scale_up_max_percent"), s.ScaleUpMaxPercent, 0, 1000)
	intIn(es, Join(path, "scale_up_max_replicas"), s.ScaleUpMaxReplicas, 0, MaxReplicas)
	if s.ScaleUpMaxPercent == 0 && s.ScaleUpMaxReplicas == 0 {
		es.Add(Join(path, "scale_up_max_replicas"), "and scale_up_max_percent cannot both be 0: a scale-up could add nothing")
	}
	durIn(es, Join(path, "scale_up_period"), s.ScaleUpPeriod, 0, time.Hour)
	floatIn(es, Join(path, "tolerance"), s.Tolerance, 0, 0.5)
}

func (r Resources) validate(path string, es *Errors) {
	if r.CPU != 0 {
		floatIn(es, Join(path, "cpu"), r.CPU, 0.01, MaxCPU)
	}
	if r.Memory != 0 && (r.Memory < MinMemory || r.Memory > MaxMemory) {
		es.Add(Join(path, "memory"), "(%s) must be between %s and %s, or absent for the scheduler's default", r.Memory, MinMemory, MaxMemory)
	}
	intIn(es, Join(path, "pids"), r.Pids, MinPids, MaxPids)
}

// Validate checks a health check on its own, as a receiver of a health view
// does: its port must be set. path prefixes every field path.
func (h *Health) Validate(path string) Errors {
	var es Errors
	switch h.Type {
	case HealthHTTP:
		es.Check(Join(path, "path"), CheckPath(h.Path))
		es.Check(Join(path, "method"), CheckMethod(h.Method))
		if len(h.Headers) > MaxHeaders {
			es.Add(Join(path, "headers"), "has %d headers; at most %d", len(h.Headers), MaxHeaders)
		}
		for _, k := range sortedKeys(h.Headers) {
			es.Check(Key(Join(path, "headers"), k), CheckHeaderName(k))
			es.Check(Key(Join(path, "headers"), k), CheckHeaderValue(h.Headers[k]))
		}
		if len(h.Body) > MaxHealthBody {
			es.Add(Join(path, "body"), "has %d bytes; at most %d", len(h.Body), MaxHealthBody)
		}
		if len(h.ExpectedStatus) == 0 {
			es.Add(Join(path, "expected_status"), "must list at least one status code or range, e.g. \"200-399\"")
		}
		probeText(&es, Join(path, "expected_body"), h.ExpectedBody)
		if h.Send != "" {
			es.Add(Join(path, "send"), "is only for type tcp")
		}
		if h.Expect != "" {
			es.Add(Join(path, "expect"), "is only for type tcp")
		}
		if h.TLSSkipVerify && !h.TLS {
			es.Add(Join(path, "tls_skip_verify"), "needs tls: true")
		}
	case HealthTCP:
		tcpText(&es, Join(path, "send"), h.Send, MaxTCPSend)
		tcpText(&es, Join(path, "expect"), h.Expect, MaxTCPExpect)
		httpOnly := map[string]bool{
			"path": h.Path != "", "method": h.Method != "", "headers": len(h.Headers) > 0, "body": h.Body != "",
			"expected_status": len(h.ExpectedStatus) > 0, "expected_body": h.ExpectedBody != "",
			"follow_redirects": h.FollowRedirects, "tls": h.TLS, "tls_skip_verify": h.TLSSkipVerify,
		}
		for _, field := range sortedKeys(httpOnly) {
			if httpOnly[field] {
				es.Add(Join(path, field), "is only for type http")
			}
		}
	case HealthDocker, HealthExec:
		h.validateScheduled(path, &es)
	default:
		es.Add(Join(path, "type"), "%q is not a health check type (http, tcp, docker or exec)", h.Type)
	}
	if h.Type != HealthDocker && h.Docker != nil {
		es.Add(Join(path, "docker"), "is only for type docker")
	}
	if h.Type != HealthExec && h.Exec != nil {
		es.Add(Join(path, "exec"), "is only for type exec")
	}
	intIn(&es, Join(path, "port"), h.Port, 1, 65535)
	durIn(&es, Join(path, "interval"), h.Interval, 100*time.Millisecond, time.Hour)
	durIn(&es, Join(path, "timeout"), h.Timeout, 10*time.Millisecond, time.Hour)
	if h.Timeout >= h.Interval {
		es.Add(Join(path, "timeout"), "(%s) must be less than %s (%s)", h.Timeout, Join(path, "interval"), h.Interval)
	}
	intIn(&es, Join(path, "retries"), h.Retries, 0, 10)
	intIn(&es, Join(path, "healthy_threshold"), h.HealthyThreshold, 1, 100)
	intIn(&es, Join(path, "unhealthy_threshold"), h.UnhealthyThreshold, 1, 100)
	durIn(&es, Join(path, "initial_delay"), h.InitialDelay, 0, time.Hour)
	if h.MaxResponseTime != 0 {
		durIn(&es, Join(path, "max_response_time"), h.MaxResponseTime, time.Millisecond, time.Hour)
		if h.MaxResponseTime >= h.Timeout {
			es.Add(Join(path, "max_response_time"), "(%s) must be less than %s (%s): a probe is cut off at its timeout, so it could never be slow",
				h.MaxResponseTime, Join(path, "timeout"), h.Timeout)
		}
	}
	h.Outlier.validate(Join(path, "outlier"), &es)
	return es
}

// reservedPorts are the default ports of Berth's own services and their
// stores. A health.port other than port is never one of them: probing it
// can only reach Berth, never the app (the confirmed attack sent NATS
// protocol to 4222 in a TCP check's send). healthd refuses to reach another
// port except on a container's own network address in any case.
var reservedPorts = map[int]string{
	2375: "the Docker API port",
	2376: "the Docker API TLS port",
	4222: "the NATS client port",
	5432: "the PostgreSQL port",
	6222: "the NATS cluster port",
	7070: "the scheduler API port",
	7422: "the NATS leaf node port",
	8222: "the NATS monitoring port",
}

// tcpText checks what a TCP check sends or expects: at most limit bytes of
// probe text.
func tcpText(es *Errors, path, s string, limit int) {
	if len(s) > limit {
		es.Add(path, "has %d bytes; at most %d", len(s), limit)
		return
	}
	probeText(es, path, s)
}

// probeText checks text sent to or expected from a probe: printable ASCII,
// tab, CR and LF only.
func probeText(es *Errors, path, s string) {
	if len(s) > MaxProbeDataLen {
		es.Add(path, "has %d bytes; at most %d", len(s), MaxProbeDataLen)
		return
	}
	for _, r := range s {
		if (r < 0x20 && r != '\t' && r != '\r' && r != '\n') || r >= 0x7f {
			es.Add(path, "must be printable ASCII (tab, CR and LF allowed)")
			return
		}
	}
}

func (u Update) validate(path string, es *Errors) {
	intIn(es, Join(path, "max_surge"), u.MaxSurge, 0, 100)
	intIn(es, Join(path, "max_unavailable"), u.MaxUnavailable, 0, 100)
	if u.MaxSurge == 0 && u.MaxUnavailable == 0 {
		es.Add(Join(path, "max_surge"), "and %s cannot both be 0: an update could never make progress", Join(path, "max_unavailable"))
	}
	durIn(es, Join(path, "min_healthy_time"), u.MinHealthyTime, 0, time.Hour)
	durIn(es, Join(path, "healthy_deadline"), u.HealthyDeadline, time.Second, 24*time.Hour)
	if u.HealthyDeadline <= u.MinHealthyTime {
		es.Add(Join(path, "healthy_deadline"), "(%s) must be more than %s (%s)", u.HealthyDeadline, Join(path, "min_healthy_time"), u.MinHealthyTime)
	}
}

func (r Restart) validate(path string, es *Errors) {
	intIn(es, Join(path, "max_attempts"), r.MaxAttempts, 0, 1000)
	durIn(es, Join(path, "window"), r.Window, time.Second, 7*24*time.Hour)
	durIn(es, Join(path, "backoff_initial"), r.BackoffInitial, 10*time.Millisecond, time.Hour)
	durIn(es, Join(path, "backoff_max"), r.BackoffMax, 10*time.Millisecond, 24*time.Hour)
	if r.BackoffInitial > r.BackoffMax {
		es.Add(Join(path, "backoff_initial"), "(%s) must not be more than %s (%s)", r.BackoffInitial, Join(path, "backoff_max"), r.BackoffMax)
	}
}

// Validate checks load balancing settings; path prefixes every field path.
func (l LB) Validate(path string) Errors {
	var es Errors
	es.Check(Join(path, "method"), CheckLBMethod(l.Method))
	switch {
	case l.Method == LBHash:
		if l.HashKey == "" {
			es.Add(Join(path, "hash_key"), "must be set when method is hash (e.g. $remote_addr or $cookie_session)")
		} else {
			es.Check(Join(path, "hash_key"), CheckHashKey(l.HashKey))
		}
	case l.HashKey != "":
		es.Add(Join(path, "hash_key"), "is only for method hash")
	}
	intIn(&es, Join(path, "keepalive"), l.Keepalive, 0, 10000)
	intIn(&es, Join(path, "max_fails"), l.MaxFails, 0, 1000)
	durIn(&es, Join(path, "fail_timeout"), l.FailTimeout, 0, time.Hour)
	durIn(&es, Join(path, "connect_timeout"), l.ConnectTimeout, time.Millisecond, 75*time.Second)
	durIn(&es, Join(path, "read_timeout"), l.ReadTimeout, time.Millisecond, 24*time.Hour)
	intIn(&es, Join(path, "next_upstream_tries"), l.NextUpstreamTries, 0, 100)
	if l.ClientMaxBodySize < 0 || l.ClientMaxBodySize > MaxBodySizeSize {
		es.Add(Join(path, "client_max_body_size"), "must be between 0 (no limit) and %s", MaxBodySizeSize)
	}
	return es
}

// Routes counts the app's routes: every path on every host (on the
// default server when there is no host).
func (r Routing) Routes() int { return max(len(r.Hosts), 1) * (len(r.Paths) + len(r.Rules)) }

// Validate checks hosts, paths and TLS; path prefixes every field path.
func (r Routing) Validate(path string) Errors {
	var es Errors
	if len(r.Hosts) > MaxHosts {
		es.Add(Join(path, "hosts"), "has %d hosts; at most %d", len(r.Hosts), MaxHosts)
	}
	seen := map[string]int{}
	for i, h := range r.Hosts {
		p := Index(Join(path, "hosts"), i)
		if err := CheckHost(h); err != nil {
			es.Check(p, err)
			continue
		}
		if j, dup := seen[strings.ToLower(h)]; dup {
			es.Add(p, "%q repeats %s", h, Index(Join(path, "hosts"), j))
		}
		seen[strings.ToLower(h)] = i
	}
	if len(r.Paths) > MaxPaths {
		es.Add(Join(path, "paths"), "has %d paths; at most %d", len(r.Paths), MaxPaths)
	}
	if n := r.Routes(); n > MaxRoutes {
		es.Add(path, "%d hosts × %d paths and rules make %d routes (each a location in every nginx); at most %d: route fewer paths per host, or split the app",
			max(len(r.Hosts), 1), len(r.Paths)+len(r.Rules), n, MaxRoutes)
	}
	es = append(es, validateRules(Join(path, "rules"), r)...)
	es = append(es, validateShares(Join(path, "share_with"), r)...)
	seen = map[string]int{}
	for i, p := range r.Paths {
		fp := Index(Join(path, "paths"), i)
		if err := CheckPath(p); err != nil {
			es.Check(fp, err)
			continue
		}
		// "/x" and "/x/" are one route (RoutePath): nginx would refuse
		// the pair as a duplicate location.
		if j, dup := seen[RoutePath(p)]; dup {
			es.Add(fp, "%q repeats %s (a trailing '/' names the same route)", p, Index(Join(path, "paths"), j))
		}
		seen[RoutePath(p)] = i
	}
	if t := r.TLS; t != nil {
		tp := Join(path, "tls")
		if len(r.Hosts) == 0 {
			es.Add(tp, "needs routing.hosts: a certificate is chosen by host name")
		}
		files := t.Certificate != "" || t.Key != ""
		switch {
		case t.ACME && (t.SelfSigned || files):
			es.Add(tp, "has acme with self_signed or certificate files: choose one of acme, self_signed or certificate and key")
		case t.SelfSigned && files:
			es.Add(tp, "has both self_signed and certificate files: choose one")
		case t.ACME:
			es = append(es, validateACME(path, r)...)
		case !t.SelfSigned:
			es.Check(Join(tp, "certificate"), CheckFilePath(t.Certificate))
			es.Check(Join(tp, "key"), CheckFilePath(t.Key))
		}
	}
	return es
}

// ACMEChallengePath is where a CA asks for an HTTP-01 answer; with
// tls.acme, lbagent answers every request under it.
const ACMEChallengePath = "/.well-known/acme-challenge/"

// validateACME checks what an ACME certificate needs of the routing: host
// names a CA validates over HTTP-01 (no wildcard), and no route of the app's own under
// the challenge path, which lbagent answers.
func validateACME(path string, r Routing) Errors {
	var es Errors // MaxHosts is also what a public CA signs in one certificate
	for i, h := range r.Hosts {
		if strings.HasPrefix(h, "*.") {
			es.Add(Index(Join(path, "hosts"), i), "%q: tls.acme validates hosts over HTTP-01, which issues no wildcard certificate; name the hosts, or use certificate files", h)
		}
	}
	under := func(p string) bool {
		return strings.HasPrefix(RoutePath(p)+"/", ACMEChallengePath) || strings.HasPrefix(p, ACMEChallengePath)
	}
	for i, p := range r.Paths {
		if under(p) {
			es.Add(Index(Join(path, "paths"), i), "%q is under %s, which lbagent answers for tls.acme", p, ACMEChallengePath)
		}
	}
	for i, rule := range r.Rules {
		if rule.Match != MatchRegex && under(rule.Path) {
			es.Add(Join(Index(Join(path, "rules"), i), "path"), "%q is under %s, which lbagent answers for tls.acme", rule.Path, ACMEChallengePath)
		}
	}
	return es
}

func intIn(es *Errors, path string, v, lo, hi int) {
	if v < lo || v > hi {
		es.Add(path, "(%d) must be between %d and %d", v, lo, hi)
	}
}

func floatIn(es *Errors, path string, v, lo, hi float64) {
	if v < lo || v > hi {
		es.Add(path, "(%g) must be between %g and %g", v, lo, hi)
	}
}

func durIn(es *Errors, path string, v Duration, lo, hi time.Duration) {
	if v.Std() < lo || v.Std() > hi {
		es.Add(path, "(%s) must be between %s and %s", v, fmt.Sprint(lo), fmt.Sprint(hi))
	}
}
