// Package spec owns the app spec: what an operator applies to Berth with
// `scheduler apply -f` or `PUT /v1/apps/{name}`. It defines the types, their
// strict YAML and JSON decoding, their defaults, and the validation that
// every string reaching nginx or Docker passes before anything acts on it.
package spec

// App is one application as an operator declares it. The zero values of
// optional fields are replaced by Default; Validate checks the result.
type App struct {
	// Name is a DNS label that identifies the app everywhere.
	Name string `json:"name"`
	// Image is the container image reference.
	Image string `json:"image"`
	// Command overrides the image's command when set.
	Command []string `json:"command,omitempty"`
	// Env is the container environment. No value is ever logged; one
	// marked secret ({secret: …}) is also stored encrypted and shown as
	// RedactedValue (see EnvValue).
	Env map[string]EnvValue `json:"env,omitempty"`
	// Port is the container port that nginx sends traffic to.
	Port int `json:"port"`
	// Replicas is a fixed replica count. Exclusive with Scaling.
	Replicas *int `json:"replicas,omitempty"`
	// Scaling makes the replica count follow metrics. Exclusive with Replicas.
	Scaling *Scaling `json:"scaling,omitempty"`
	// Resources are the container's CPU and memory limits.
	Resources Resources `json:"resources"`
	// Health is the instance health check; nil means none, and then a
	// running instance is routable.
	Health *Health `json:"health,omitempty"`
	// Update controls rolling updates.
	Update Update `json:"update"`
	// Restart controls crash recovery.
	Restart Restart `json:"restart"`
	// Stop controls how instances are drained and stopped.
	Stop Stop `json:"stop"`
	// LB is how nginx balances across instances.
	LB LB `json:"lb"`
	// Routing is which requests nginx sends to the app.
	Routing Routing `json:"routing"`
	// Placement restricts and spreads the app's instances over Docker
	// hosts; nil: any host, spread over hosts.
	Placement *Placement `json:"placement,omitempty"`
	// Logging is the Docker log limits of the app's containers; nil (or
	// zero fields): the scheduler's defaults (10m × 3 unless its flags
	// say otherwise).
	Logging *Logging `json:"logging,omitempty"`
	// Release is the app's release task (database migrations): it runs
	// once per new version of the container spec, before the version's
	// first instance starts; nil: none.
	Release *Release `json:"release,omitempty"`
}

// Scaling is an autoscaling policy. At least one target must be set; a
// zero target is not configured.
type Scaling struct {
	// Min is the lowest replica count.
	Min int `json:"min"`
	// Max is the highest replica count.
	Max int `json:"max"`
	// TargetCPUPercent is the target mean CPU use, in percent of the limit.
	TargetCPUPercent float64 `json:"target_cpu_percent,omitempty"`
	// TargetMemoryPercent is the target mean memory use, in percent of the limit.
	TargetMemoryPercent float64 `json:"target_memory_percent,omitempty"`
	// TargetRPSPerReplica is the target request rate per replica.
	TargetRPSPerReplica float64 `json:"target_rps_per_replica,omitempty"`
	// TargetP95LatencyMS is the target 95th percentile latency in milliseconds.
	TargetP95LatencyMS float64 `json:"target_p95_latency_ms,omitempty"`
	// Window is how far back metric samples count; after a change, only
	// samples taken since it count.
	Window Duration `json:"window"`
	// ScaleUpStabilization is how long a higher recommendation must hold.
	ScaleUpStabilization Duration `json:"scale_up_stabilization"`
	// ScaleDownStabilization is the window whose highest recommendation wins
	// when scaling down.
	ScaleDownStabilization Duration `json:"scale_down_stabilization"`
	// ScaleUpCooldown and ScaleDownCooldown hold scale-ups and scale-downs
	// after any change of the replica count.
	ScaleUpCooldown   Duration `json:"scale_up_cooldown"`
	ScaleDownCooldown Duration `json:"scale_down_cooldown"`
	// ScaleUpMaxPercent and ScaleUpMaxReplicas limit a scale-up to the
	// larger of +percent and +replicas per ScaleUpPeriod.
	ScaleUpMaxPercent  float64  `json:"scale_up_max_percent"`
	ScaleUpMaxReplicas int      `json:"scale_up_max_replicas"`
	ScaleUpPeriod      Duration `json:"scale_up_period"`
	// Tolerance is the ratio band around 1.0 inside which nothing changes.
	Tolerance float64 `json:"tolerance"`
}

// Resources are container limits. Zero CPU or memory means the
// scheduler's default.
type Resources struct {
	// CPU is the limit in cores (0.5 is half a core).
	CPU float64 `json:"cpu,omitempty"`
	// Memory is the limit in bytes.
	Memory ByteSize `json:"memory,omitempty"`
	// Pids is the most processes and threads the container may run at
	// once (DefaultPids when absent; never unlimited).
	Pids int `json:"pids,omitempty"`
}

// Health types.
const (
	HealthHTTP = "http"
	HealthTCP  = "tcp"
	// HealthDocker takes Docker's own health of the container (the
	// image's HEALTHCHECK, or Docker below): the scheduler reads it.
	HealthDocker = "docker"
	// HealthExec runs Exec in the container through the Docker API: the
	// scheduler runs it.
	HealthExec = "exec"
)

// Health is an instance health check: probed by healthd (http, tcp), or
// read and run by the scheduler, which alone holds the Docker API (docker,
// exec).
type Health struct {
	// Type is http, tcp, docker or exec.
	Type string `json:"type"`
	// Enabled turns the check off when false; the default is true.
	Enabled *bool `json:"enabled,omitempty"`
	// Port is the container port to probe; it defaults to App.Port.
	Port int `json:"port"`
	// Path is the HTTP request path.
	Path string `json:"path,omitempty"`
	// Method is the HTTP method.
	Method string `json:"method,omitempty"`
	// Headers are extra HTTP request headers.
	Headers map[string]string `json:"headers,omitempty"`
	// Body is the HTTP request body.
	Body string `json:"body,omitempty"`
	// ExpectedStatus is a list of status codes and ranges ("200-399,404").
	ExpectedStatus StatusRanges `json:"expected_status,omitempty"`
	// ExpectedBody, when set, must occur in the HTTP response body.
	ExpectedBody string `json:"expected_body,omitempty"`
	// FollowRedirects follows HTTP redirects; the default is not to.
	FollowRedirects bool `json:"follow_redirects,omitempty"`
	// TLS probes over HTTPS instead of HTTP.
	TLS bool `json:"tls,omitempty"`
	// TLSSkipVerify skips certificate verification for TLS probes.
	TLSSkipVerify bool `json:"tls_skip_verify,omitempty"`
	// Send is written to a TCP connection before reading.
	Send string `json:"send,omitempty"`
	// Expect, when set, must occur in what the TCP peer answers.
	Expect string `json:"expect,omitempty"`
	// Interval is the time between probes.
	Interval Duration `json:"interval"`
	// Timeout bounds one probe, retries included; less than Interval.
	Timeout Duration `json:"timeout"`
	// Retries is how many more attempts one probe makes before failing.
	Retries int `json:"retries"`
	// HealthyThreshold is the consecutive passes that make an instance healthy.
	HealthyThreshold int `json:"healthy_threshold"`
	// UnhealthyThreshold is the consecutive failures that make it unhealthy.
	UnhealthyThreshold int `json:"unhealthy_threshold"`
	// InitialDelay is how long a new instance is not probed.
	InitialDelay Duration `json:"initial_delay"`
	// Docker overrides the image's HEALTHCHECK (type docker only);
	// absent: the image's own.
	Docker *DockerHealth `json:"docker,omitempty"`
	// Exec is the command an exec check runs (type exec only).
	Exec *ExecHealth `json:"exec,omitempty"`
	// MaxResponseTime, when set, makes an http or tcp probe that passes
	// but takes longer than it (retries included) a failure of kind slow;
	// below Timeout. Zero means unset: a pass is a pass however long it took.
	MaxResponseTime Duration `json:"max_response_time,omitempty"`
	// Outlier ejects instances that fail real traffic (passive health,
	// outlier.go); absent: off.
	Outlier *Outlier `json:"outlier,omitempty"`
}

// IsEnabled reports whether the check runs.
func (h *Health) IsEnabled() bool { return h != nil && (h.Enabled == nil || *h.Enabled) }

// Update controls a rolling update.
type Update struct {
	// MaxSurge is how many instances may run above the desired count.
	MaxSurge int `json:"max_surge"`
	// MaxUnavailable is how many desired instances may be not ready.
	MaxUnavailable int `json:"max_unavailable"`
	// MinHealthyTime is how long a new instance must stay healthy to count.
	MinHealthyTime Duration `json:"min_healthy_time"`
	// HealthyDeadline is how long a new instance has to become healthy.
	HealthyDeadline Duration `json:"healthy_deadline"`
	// AutoRollback rolls back a failed update; the default is true.
	AutoRollback *bool `json:"auto_rollback,omitempty"`
}

// Restart is the crash recovery budget.
type Restart struct {
	// MaxAttempts is how many restarts are allowed within Window.
	MaxAttempts int `json:"max_attempts"`
	// Window is the period over which attempts are counted.
	Window Duration `json:"window"`
	// BackoffInitial is the first restart delay; it doubles each time.
	BackoffInitial Duration `json:"backoff_initial"`
	// BackoffMax caps the restart delay.
	BackoffMax Duration `json:"backoff_max"`
}

// Stop controls how an instance is taken down.
type Stop struct {
	// Signal is sent to the container first (SIGTERM, SIGINT, SIGQUIT, …).
	Signal string `json:"signal"`
	// Grace is how long the container has after Signal before SIGKILL.
	Grace Duration `json:"grace"`
	// Drain is how long an instance is out of nginx before it is signalled.
	Drain Duration `json:"drain"`
}

// Load balancing methods.
const (
	LBRoundRobin         = "round_robin"
	LBLeastConn          = "least_conn"
	LBIPHash             = "ip_hash"
	LBHash               = "hash"
	LBRandomTwoLeastConn = "random_two_least_conn"
)

// LB is the nginx upstream configuration of an app.
type LB struct {
	// Method is one of the LB* constants.
	Method string `json:"method"`
	// HashKey is the nginx variable expression hashed by the hash method.
	HashKey string `json:"hash_key,omitempty"`
	// Keepalive is the idle upstream connections nginx keeps per worker.
	Keepalive int `json:"keepalive"`
	// MaxFails is nginx's max_fails per server.
	MaxFails int `json:"max_fails"`
	// FailTimeout is nginx's fail_timeout per server.
	FailTimeout Duration `json:"fail_timeout"`
	// ConnectTimeout is proxy_connect_timeout.
	ConnectTimeout Duration `json:"connect_timeout"`
	// ReadTimeout is proxy_read_timeout.
	ReadTimeout Duration `json:"read_timeout"`
	// NextUpstreamTries is proxy_next_upstream_tries.
	NextUpstreamTries int `json:"next_upstream_tries"`
	// ClientMaxBodySize is client_max_body_size in bytes.
	ClientMaxBodySize ByteSize `json:"client_max_body_size"`
}

// Routing selects the requests nginx sends to an app.
type Routing struct {
	// Hosts are the server names; "*.example.com" is a wildcard.
	Hosts []string `json:"hosts,omitempty"`
	// Paths are location prefixes; the default is "/".
	Paths []string `json:"paths,omitempty"`
	// Rules are locations with their own match (prefix, exact or regex),
	// rate limit and response headers.
	Rules []Rule `json:"rules,omitempty"`
	// TLS terminates HTTPS when set.
	TLS *TLS `json:"tls,omitempty"`
	// ShareWith are the apps that may route on this app's hosts, which
	// belong to the app that claimed them first (Claims).
	ShareWith []Share `json:"share_with,omitempty"`
}

// TLS is the certificate nginx serves for an app's hosts: files present
// on every edge node, one every lbagent makes for itself (SelfSigned), or
// one an ACME CA issues (ACME).
type TLS struct {
	// Certificate is the absolute path of the PEM certificate chain.
	Certificate string `json:"certificate,omitempty"`
	// Key is the absolute path of the PEM private key.
	Key string `json:"key,omitempty"`
	// SelfSigned has every lbagent make and renew a self-signed
	// certificate for the app's hosts, for development and tests: clients
	// do not trust it.
	SelfSigned bool `json:"self_signed,omitempty"`
	// ACME has the scheduler leader obtain and renew a certificate for the
	// app's hosts from an ACME CA (--acme-directory) over HTTP-01, which
	// every lbagent answers; until the first is issued the app is served
	// over plain HTTP.
	ACME bool `json:"acme,omitempty"`
	// RedirectHTTP answers plain HTTP with a redirect to HTTPS.
	RedirectHTTP bool `json:"redirect_http,omitempty"`
}
