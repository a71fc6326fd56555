package msg

import (
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var at = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func healthCheck() *spec.Health {
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	return &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz", Method: "GET",
		ExpectedStatus: st, Interval: spec.Duration(5 * time.Second), Timeout: spec.Duration(2 * time.Second),
		HealthyThreshold: 1, UnhealthyThreshold: 3}
}

// examples holds one fully populated message of each type: the public
// contract, kept byte for byte in testdata/<type>.json.
func examples() map[string]Message {
	started := at.Add(-time.Minute)
	out := map[string]Message{
		TypeApp: &App{Name: "web", Generation: 7, Term: 3, Port: 8080, Health: healthCheck(),
			LB: spec.LB{Method: spec.LBLeastConn, Keepalive: 32, MaxFails: 1, FailTimeout: spec.Duration(10 * time.Second),
				ConnectTimeout: spec.Duration(2 * time.Second), ReadTimeout: spec.Duration(time.Minute), NextUpstreamTries: 2, ClientMaxBodySize: 1 << 20},
			Routing: spec.Routing{Hosts: []string{"web.example.com"}, Paths: []string{"/"},
				TLS: &spec.TLS{Certificate: "/etc/berth/tls/web.crt", Key: "/etc/berth/tls/web.key", RedirectHTTP: true}},
			Drain: spec.Duration(10 * time.Second), UpdatedAt: at},
		TypeInstance: &Instance{App: "web", ID: "k3x9q2", Generation: 7, Term: 3, Address: "127.0.0.1:32768",
			State: StateRunning, Weight: 1, ContainerID: "3f4e5d6c7b8a", StartedAt: &started, UpdatedAt: at},
		TypeHealth: &Health{App: "web", Instance: "k3x9q2", Status: StatusUnhealthy, Failure: FailureHTTPStatus,
			Message: "status 503", ConsecutiveFailures: 3, LatencyMS: 1.25, Checker: "healthd-a-1234", InstanceTerm: 3, Generation: 7, CheckedAt: at},
		TypeHealthChange: &HealthChange{App: "web", Instance: "k3x9q2", From: StatusHealthy, To: StatusUnhealthy,
			Failure: FailureHTTPStatus, Message: "status 503", LatencyMS: 1.25, Checker: "healthd-a-1234", At: at},
		TypeAgent: &Agent{Node: "lb-1", AppliedRevision: 4211, Apps: map[string]int64{"web": 7, "api": 2},
			Errors: map[string]string{"api": "nginx -t: host not found in upstream"}, NginxVersion: "nginx/1.22.1", Mode: ModeDynamic,
			LastReload: &ConfigChange{At: at.Add(-time.Hour), DurationMS: 84.5, Revision: 4100},
			LastPush:   &ConfigChange{At: at.Add(-2 * time.Second), DurationMS: 1.5, Revision: 4211}, UpdatedAt: at},
		TypeChecker: &Checker{ID: "healthd-a-1234", Targets: 120, StartedAt: started, HeartbeatAt: at},
		TypeEvent: &Event{ID: "1042", App: "web", Instance: "k3x9q2", Kind: EventInstanceStarted, Message: "instance k3x9q2 started",
			Details: map[string]string{"container_id": "3f4e5d6c7b8a", "generation": "7"}, Actor: "scheduler", Term: 3, At: at},
		TypeMetrics: &Metrics{Node: "lb-1", App: "web", WindowStart: at, Window: spec.Duration(5 * time.Second), Requests: 500, RPS: 100,
			Status: StatusCounts{S2xx: 490, S4xx: 8, S5xx: 2}, P50MS: 3.2, P95MS: 12.5, P99MS: 40.1, UpstreamErrors: 1,
			LatencyHistogram: &Histogram{RelativeAccuracy: HistogramAccuracy, Bins: [][2]float64{{58, 240}, {59, 210}, {126, 30}, {184, 20}}}},
		TypeUsage: &Usage{App: "web", Instances: []InstanceUsage{{Instance: "k3x9q2", CPUPercent: 42.5, MemoryPercent: 31.25, MemoryBytes: 83886080}},
			Term: 3, At: at},
		TypeCertificate: &Certificate{App: "web", Names: []string{"web.example.com", "www.example.com"},
			Chain:  "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
			Keys:   []SealedKey{{To: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4", Box: "c2VhbGVkIGJveA=="}},
			Serial: "3f1a2b", NotBefore: started, NotAfter: at.Add(90 * 24 * time.Hour), Term: 3, UpdatedAt: at},
		TypeChallenge: &Challenge{App: "web", Host: "web.example.com", Token: "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
			KeyAuthorization: "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI", Term: 3, At: at},
		TypeNode: &Node{Node: "lb-1", Keys: []string{"UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}, UpdatedAt: at},
		TypeReload: &Reload{Node: "lb-1", Result: ReloadRejected, DurationMS: 84.5, Revision: 4211,
			FailedApps: map[string]string{"api": "nginx -t: host not found in upstream"}, At: at},
	}
	for _, m := range out {
		m.header().Type = m.MessageType()
	}
	return out
}

func TestGoldenMessages(t *testing.T) {
	t.Parallel()
	ex := examples()
	require.ElementsMatch(t, Types(), keys(ex), "every type has a golden example")
	for typ, m := range ex {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			b, err := Encode(m)
			require.NoError(t, err)
			var pretty map[string]any
			require.NoError(t, json.Unmarshal(b, &pretty))
			indented, err := json.MarshalIndent(pretty, "", "  ")
			require.NoError(t, err)
			indented = append(indented, '\n')
			path := filepath.Join("testdata", strings.TrimPrefix(typ, "berth.")+".json")
			if *update {
				require.NoError(t, os.WriteFile(path, indented, 0o644))
			}
			golden, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(golden), string(indented), "the v1 wire format changed: this is the public contract (run make golden only for an additive change)")

			back, err := Decode(golden)
			require.NoError(t, err)
			require.Equal(t, m, back)
		})
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	valid, err := Encode(examples()[TypeInstance])
	require.NoError(t, err)
	tests := []struct {
		name string
		data string
		want error
		text string
	}{
		{"oversize", `{"type":"berth.instance.v1","app":"` + strings.Repeat("a", MaxMessageSize) + `"}`, ErrTooLarge, "the limit is 262144"},
		{"garbage", "not json", ErrMalformed, ""},
		{"array", "[1,2]", ErrMalformed, ""},
		{"no type", `{"app":"web"}`, ErrMalformed, `no "type" field`},
		{"unknown type", `{"type":"berth.instance.v9"}`, ErrUnknownType, `"berth.instance.v9"`},
		{"wrong field kind", `{"type":"berth.instance.v1","weight":"heavy"}`, ErrMalformed, ""},
		{"invalid content", strings.Replace(string(valid), `"state":"running"`, `"state":"dancing"`, 1), ErrInvalid, `state: "dancing" is not one of pending`},
		{"bad address", strings.Replace(string(valid), `127.0.0.1:32768`, `127.0.0.1:32768;`, 1), ErrInvalid, `address: "127.0.0.1:32768;" is not a valid address`},
	}
	chal, err := Encode(examples()[TypeChallenge])
	require.NoError(t, err)
	cert, err := Encode(examples()[TypeCertificate])
	require.NoError(t, err)
	tests = append(tests, []struct {
		name string
		data string
		want error
		text string
	}{
		{"nginx in a key authorization", strings.Replace(string(chal), `-oA.9jg`, `-oA.9jg';return 200 'x`, 1), ErrInvalid, "key_authorization: must be the token"},
		{"a token with a path", strings.Replace(string(chal), `"token":"evaGx`, `"token":"../../evaGx`, 1), ErrInvalid, "token: must be 16-128 base64url"},
		{"a wildcard challenge", strings.Replace(string(chal), `"host":"web`, `"host":"*.web`, 1), ErrInvalid, "HTTP-01 validates no wildcard"},
		{"a chain that is not PEM", strings.Replace(string(cert), `-----BEGIN CERTIFICATE-----\nMIIB`, `ssl_certificate /etc/shadow;`, 1), ErrInvalid, "chain: must be a PEM"},
		{"a key sealed to a non-key", strings.Replace(string(cert), `"to":"UDXU`, `"to":"SUDXU`, 1), ErrInvalid, "keys[0].to"},
	}...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode([]byte(tt.data))
			require.ErrorIs(t, err, tt.want)
			require.Contains(t, err.Error(), tt.text)
		})
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	t.Parallel()
	b, err := Encode(examples()[TypeInstance])
	require.NoError(t, err)
	newer := strings.Replace(string(b), `{`, `{"zone":"eu-1","future":{"x":1},`, 1)
	m, err := DecodeAs[*Instance]([]byte(newer))
	require.NoError(t, err, "a v1 consumer must accept optional fields added later")
	require.Equal(t, "k3x9q2", m.ID)
}

// TestDecodeOlderAgent: the record of an lbagent from before mode,
// last_reload and last_push decodes, with none of them.
func TestDecodeOlderAgent(t *testing.T) {
	t.Parallel()
	m, err := Decode([]byte(`{"type":"berth.agent.v1","node":"lb-1","applied_revision":12,"apps":{"web":3},"updated_at":"2026-11-23T12:00:00Z"}`))
	require.NoError(t, err)
	a := m.(*Agent)
	require.Equal(t, "", a.Mode)
	require.Nil(t, a.LastReload)
	require.Nil(t, a.LastPush)
	require.EqualValues(t, 12, a.AppliedRevision)
}

func TestDecodeAsChecksType(t *testing.T) {
	t.Parallel()
	b, err := Encode(examples()[TypeHealth])
	require.NoError(t, err)
	_, err = DecodeAs[*Instance](b)
	require.ErrorIs(t, err, ErrWrongType)
	require.ErrorContains(t, err, "got berth.health.v1, want berth.instance.v1")
	h, err := DecodeAs[*Health](b)
	require.NoError(t, err)
	require.Equal(t, StatusUnhealthy, h.Status)
}

func TestEncodeRefusesInvalid(t *testing.T) {
	t.Parallel()
	_, err := Encode(&Instance{App: "web", ID: "Bad.ID", Generation: 1, State: StateRunning, Weight: 0, UpdatedAt: at})
	require.Error(t, err)
	for _, want := range []string{`id: "Bad.ID" is not a valid instance id`, "address: must be set in state running", "weight: (0) must be between 1 and 1000"} {
		require.ErrorContains(t, err, want)
	}
}

func TestAppRejectsNginxInjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(*App)
		want   string
	}{
		{"host with semicolon", func(a *App) { a.Routing.Hosts = []string{"a.com; return 200"} }, "routing.hosts[0]"},
		{"host with brace", func(a *App) { a.Routing.Hosts = []string{"a.com}"} }, "routing.hosts[0]"},
		{"host with newline", func(a *App) { a.Routing.Hosts = []string{"a.com\nserver {"} }, "routing.hosts[0]"},
		{"path with quote", func(a *App) { a.Routing.Paths = []string{`/a"b`} }, "routing.paths[0]"},
		{"no paths", func(a *App) { a.Routing.Paths = nil }, "routing.paths: must list at least one path"},
		{"hash key with braces", func(a *App) { a.LB.Method, a.LB.HashKey = spec.LBHash, "${remote_addr}" }, "lb.hash_key"},
		{"cert path with semicolon", func(a *App) { a.Routing.TLS.Key = "/k;include /etc/passwd" }, "routing.tls.key"},
		{"health header value", func(a *App) { a.Health.Headers = map[string]string{"X": "a\r\nb"} }, "health.headers[X]"},
		{"bad name", func(a *App) { a.Name = "web;" }, "name"},
		// Regexes that make nginx's PCRE backtrack, published straight to
		// NATS past the API's check: lbagent refuses the record.
		{"regex rule that backtracks", func(a *App) {
			a.Routing.Rules = []spec.Rule{{Path: `^/(\w+)+$`, Match: spec.MatchRegex}}
		}, "routing.rules[0].path: \"^/(\\\\w+)+$\" can stall nginx: `(\\w+)+` repeats a repeat"},
		{"header regex that backtracks", func(a *App) {
			a.Routing.Rules = []spec.Rule{{Path: "/", Headers: map[string]string{"Cookie": "~^(a|aa)+$"}}}
		}, "routing.rules[0].headers[Cookie]: \"^(a|aa)+$\" can stall nginx: `(a|aa)+` can match \"aa\" in more than one way"},
		{"regex rule with repeats in sequence", func(a *App) {
			a.Routing.Rules = []spec.Rule{{Path: `^/.*a.*b`, Match: spec.MatchRegex}}
		}, "routing.rules[0].path: \"^/.*a.*b\" can stall nginx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := examples()[TypeApp].(*App)
			tt.mutate(a)
			b, err := json.Marshal(a)
			require.NoError(t, err)
			_, err = Decode(b)
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// nodeKey is a user public nkey.
const nodeKey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

func TestValidateOtherMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		m    Message
		want string
	}{
		{"health status", &Health{App: "web", Instance: "a1", Status: "fine", Checker: "c", CheckedAt: at}, `status: "fine" is not one of`},
		{"health failure", &Health{App: "web", Instance: "a1", Status: StatusUnhealthy, Failure: "cosmic_ray", Checker: "c", CheckedAt: at}, `failure: "cosmic_ray" is not one of`},
		{"health control chars", &Health{App: "web", Instance: "a1", Status: StatusHealthy, Message: "a\x00b", Checker: "c", CheckedAt: at}, "message: must be valid UTF-8 text"},
		{"agent node", &Agent{Node: "lb.1", UpdatedAt: at}, `node: "lb.1" is not a valid id`},
		{"agent app", &Agent{Node: "lb1", Apps: map[string]int64{"Bad": 1}, UpdatedAt: at}, `apps[Bad]: "Bad" is not a valid name`},
		{"agent mode", &Agent{Node: "lb1", Mode: "hot", UpdatedAt: at}, `mode: "hot" is not one of dynamic, reload`},
		{"agent reload time", &Agent{Node: "lb1", LastReload: &ConfigChange{DurationMS: 1}, UpdatedAt: at}, "last_reload.at: must be set"},
		{"agent push duration", &Agent{Node: "lb1", LastPush: &ConfigChange{At: at, DurationMS: -1}, UpdatedAt: at}, "last_push.duration_ms: must be a finite number, not negative"},
		{"agent push duration inf", &Agent{Node: "lb1", LastPush: &ConfigChange{At: at, DurationMS: math.Inf(1)}, UpdatedAt: at}, "last_push.duration_ms: must be a finite number"},
		{"agent reload error", &Agent{Node: "lb1", LastReload: &ConfigChange{At: at, Error: strings.Repeat("x", MaxTextLen+1)}, UpdatedAt: at}, "last_reload.error: has 1025 bytes; at most 1024"},
		{"agent reload error control", &Agent{Node: "lb1", LastReload: &ConfigChange{At: at, Error: "a\x1bb"}, UpdatedAt: at}, "last_reload.error: must be valid UTF-8 text"},
		{"checker targets", &Checker{ID: "c", Targets: -1, HeartbeatAt: at}, "targets: must not be negative"},
		{"event kind", &Event{ID: "1", App: "web", Kind: "a.b", Message: "m", At: at}, `kind: "a.b" is not a valid id`},
		{"event actor", &Event{ID: "1", App: "web", Kind: "k", Actor: "a b", Message: "m", At: at}, `actor: "a b" is not a valid id`},
		{"usage instance", &Usage{App: "web", At: at, Instances: []InstanceUsage{{Instance: "Bad!"}}}, "instances[0].instance: \"Bad!\" is not a valid instance id"},
		{"usage percent", &Usage{App: "web", At: at, Instances: []InstanceUsage{{Instance: "a1", CPUPercent: -1}}}, "instances[0]: percentages must be finite numbers from 0 to 1e6"},
		{"metrics window", &Metrics{Node: "n", App: "web", WindowStart: at}, "window: must be positive"},
		{"metrics negative", &Metrics{Node: "n", App: "web", WindowStart: at, Window: 1, Requests: -1}, "requests: counts must not be negative"},
		{"metrics histogram accuracy", &Metrics{Node: "n", App: "web", WindowStart: at, Window: 1, LatencyHistogram: &Histogram{}}, "latency_histogram.relative_accuracy: 0 must be in (0, 0.5)"},
		{"metrics histogram bin", &Metrics{Node: "n", App: "web", WindowStart: at, Window: 1, LatencyHistogram: &Histogram{RelativeAccuracy: 0.01, Bins: [][2]float64{{1.5, 2}}}}, "latency_histogram.bins[0]: index 1.5 must be an integer"},
		{"metrics histogram count", &Metrics{Node: "n", App: "web", WindowStart: at, Window: 1, LatencyHistogram: &Histogram{RelativeAccuracy: 0.01, Bins: [][2]float64{{3, -1}}}}, "latency_histogram.bins[0]: count -1 must be a finite count > 0"},
		{"reload result", &Reload{Node: "n", Result: "maybe", At: at}, `result: "maybe" is not one of applied`},
		{"missing time", &Checker{ID: "c"}, "heartbeat_at: must be set"},
		{"node id", &Node{Node: "lb.1", Keys: []string{nodeKey}, UpdatedAt: at}, `node: "lb.1" is not a valid id`},
		{"node no key", &Node{Node: "lb-1", UpdatedAt: at}, "keys: has 0 keys; want 1 to 4"},
		{"node too many keys", &Node{Node: "lb-1", Keys: []string{nodeKey, nodeKey, nodeKey, nodeKey, nodeKey}, UpdatedAt: at}, "keys: has 5 keys; want 1 to 4"},
		{"node seed for a key", &Node{Node: "lb-1", Keys: []string{"SUAM" + nodeKey[4:]}, UpdatedAt: at}, "keys[0]: \"SUAM"},
		{"node key twice", &Node{Node: "lb-1", Keys: []string{nodeKey, nodeKey}, UpdatedAt: at}, "keys[1]: " + nodeKey + " is listed twice"},
		{"health change", &HealthChange{App: "web", Instance: "a1", From: "x", To: StatusHealthy, Checker: "c", At: at}, `from: "x" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.ErrorContains(t, tt.m.Validate(), tt.want)
		})
	}
}

func TestCheckAddress(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"127.0.0.1:8080", "10.0.0.5:1", "[::1]:80", "[2001:db8::5]:65535", "0.0.0.0:80"} {
		require.NoError(t, CheckAddress(ok), ok)
	}
	for _, bad := range []string{"", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:08", "::1:80", "a b:80", "x;y:80", "*.a:80",
		"127.0.0.1:80 backup", "[::1]80", "web-1.internal:8080", "localhost:80", "[127.0.0.1]:80", "[::1]:080",
		"[fe80::1%eth0]:80", "[fe80::1%25eth0]:80", "１２７.0.0.1:80"} {
		require.Error(t, CheckAddress(bad), bad)
	}
}

// The confirmed exploit: an IPv6 zone carried anything, newlines and
// braces included, through Decode into nginx's server lines.
func TestZoneInjectionRefused(t *testing.T) {
	t.Parallel()
	for _, zone := range []string{"x", "eth0", "x;\\n}\\nserver {listen 9999;}\\n#", "a;b", "{", "}", "#c", "a b", "\\u00e9"} {
		t.Run(zone, func(t *testing.T) {
			t.Parallel()
			data := `{"type":"berth.instance.v1","app":"web","id":"a1","generation":1,"term":1,"address":"[fe80::1%` + zone +
				`]:80","state":"running","weight":1,"updated_at":"2026-01-01T00:00:00Z"}`
			_, err := Decode([]byte(data))
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, "address:")
		})
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	n, err := NewNames(DefaultPrefix)
	require.NoError(t, err)
	got := []string{n.AppsBucket(), n.InstancesBucket(), n.HealthBucket(), n.AgentsBucket(), n.CheckersBucket(),
		n.EventsSubject("web", EventInstanceStarted), n.AllEvents(), n.AppEvents("web"),
		n.HealthSubject("web", "k3x9q2"), n.AllHealth(), n.MetricsSubject("web"), n.AllMetrics(),
		n.UsageSubject("web"), n.AllUsage(), n.ReloadsSubject("lb-1"), n.AllReloads(), InstanceKey("web", "k3x9q2")}
	require.Equal(t, []string{"berth_apps", "berth_instances", "berth_health", "berth_agents", "berth_checkers",
		"berth.v1.events.web.instance_started", "berth.v1.events.>", "berth.v1.events.web.*",
		"berth.v1.health.web.k3x9q2", "berth.v1.health.>", "berth.v1.metrics.web", "berth.v1.metrics.*",
		"berth.v1.usage.web", "berth.v1.usage.*", "berth.v1.reloads.lb-1", "berth.v1.reloads.*", "web.k3x9q2"}, got)

	staging, err := NewNames("staging")
	require.NoError(t, err)
	require.Equal(t, "staging_apps", staging.AppsBucket())
	require.Equal(t, "staging.v1.metrics.api", staging.MetricsSubject("api"))
	buckets := staging.Buckets()
	require.Len(t, buckets, 8)
	require.Equal(t, []string{"staging_certificates", "staging_challenges", "staging_nodes"}, []string{buckets[5].Name, buckets[6].Name, buckets[7].Name})
	require.Equal(t, Bucket{Name: "staging_agents", Description: "Berth v1: lbagent applied state, by node", History: 1, TTL: AgentTTL,
		MaxBytes: MaxBytesAgents, MaxConsumers: MaxConsumers}, buckets[3])
	for _, b := range buckets {
		require.Positive(t, b.MaxBytes, b.Name)
	}

	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", strings.Repeat("x", 33), "ünï"} {
		_, err := NewNames(bad)
		require.ErrorContains(t, err, "must be 1-32 letters, digits, '_' or '-'", bad)
	}
}

func TestInstanceKeysAndNodes(t *testing.T) {
	t.Parallel()
	app, id, err := ParseInstanceKey("web.k3x9q2")
	require.NoError(t, err)
	require.Equal(t, "web", app)
	require.Equal(t, "k3x9q2", id)
	for _, bad := range []string{"web", "Web.k1", "web.K1", "web.a.b", ".x", "web."} {
		_, _, err := ParseInstanceKey(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "web-1-example-com", NodeID("web-1.example.com"))
	require.NoError(t, CheckToken(NodeID("a b.c*d>e")))
	require.NoError(t, CheckToken(NodeID("")))
	require.NoError(t, CheckToken(NodeID(strings.Repeat("h", 300))))
}

func TestFence(t *testing.T) {
	t.Parallel()
	var f Fence
	require.True(t, f.Accept("web.a", 3))
	require.True(t, f.Accept("web.a", 3), "the same term again is fine")
	require.False(t, f.Accept("web.a", 2), "a deposed leader's write is dropped")
	require.True(t, f.Accept("web.b", 1), "terms are per key")
	require.True(t, f.Accept("web.a", 4))
	require.True(t, f.Accept("web.a", 0), "writes without a term are not fenced")
	f.Forget("web.a")
	require.True(t, f.Accept("web.a", 1))
}

func TestTruncateKeepsValidUTF8(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", MaxTextLen)
	got := Truncate(long, MaxTextLen+1)
	require.LessOrEqual(t, len(got), MaxTextLen+1)
	require.True(t, utf8.ValidString(got), "cut on a rune boundary")
	require.Equal(t, "short", Truncate("short", 10))
}

func TestCheckKey(t *testing.T) {
	t.Parallel()
	at := time.Now()
	tests := []struct {
		name string
		key  string
		m    Message
		ok   bool
	}{
		{"app", "web", &App{Name: "web"}, true},
		{"app under another name", "shop", &App{Name: "web"}, false},
		{"instance", "web.a1", &Instance{App: "web", ID: "a1"}, true},
		{"instance under another app", "shop.a1", &Instance{App: "web", ID: "a1"}, false},
		{"health", "web.a1", &Health{App: "web", Instance: "a1"}, true},
		{"health under another instance", "web.a2", &Health{App: "web", Instance: "a1"}, false},
		{"agent", "lb-1", &Agent{Node: "lb-1"}, true},
		{"agent under another node", "lb-2", &Agent{Node: "lb-1"}, false},
		{"checker", "c1", &Checker{ID: "c1"}, true},
		{"checker under another id", "c2", &Checker{ID: "c1"}, false},
		{"not a bucket's message", "anything", &Reload{Node: "lb-1", At: at}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckKey(tt.key, tt.m)
			if tt.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrKeyMismatch)
		})
	}
}
