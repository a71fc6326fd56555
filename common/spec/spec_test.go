package spec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	require.NoError(t, err)
	return b
}

func TestLoadDesignExample(t *testing.T) {
	t.Parallel()
	app, err := Load(readFile(t, "web.yaml"))
	require.NoError(t, err)
	require.Equal(t, "web", app.Name)
	require.Nil(t, app.Replicas, "scaling is set, so replicas stays unset")
	require.Equal(t, 2, app.Scaling.Min)
	require.Equal(t, 0.1, app.Scaling.Tolerance)
	require.Equal(t, 60*time.Second, app.Scaling.Window.Std(), "defaults fill what the example leaves out")
	require.Equal(t, 15*time.Second, app.Scaling.ScaleUpCooldown.Std())
	require.Equal(t, 60*time.Second, app.Scaling.ScaleDownCooldown.Std())
	require.Equal(t, 100.0, app.Scaling.ScaleUpMaxPercent)
	require.Equal(t, 4, app.Scaling.ScaleUpMaxReplicas)
	require.Equal(t, 15*time.Second, app.Scaling.ScaleUpPeriod.Std())
	require.Equal(t, ByteSize(256<<20), app.Resources.Memory)
	require.Equal(t, 5*time.Second, app.Health.Interval.Std())
	require.True(t, app.Health.ExpectedStatus.Contains(302))
	require.False(t, app.Health.ExpectedStatus.Contains(404))
	require.Equal(t, ByteSize(1<<20), app.LB.ClientMaxBodySize)
	require.True(t, *app.Update.AutoRollback)
	require.Equal(t, []string{"/", "/api"}, app.Routing.Paths)
	require.True(t, app.Routing.TLS.RedirectHTTP)
}

func TestMinimalSpecGetsEveryDefault(t *testing.T) {
	t.Parallel()
	app, err := Load(readFile(t, "minimal.json"))
	require.NoError(t, err)
	want := defaultApp()
	want.Name, want.Image, want.Port = "api", "api:2", 9000
	want.Replicas = ptr(1)
	want.Routing.Paths = []string{"/"}
	require.Equal(t, want, app)
}

func TestHealthBlockDefaults(t *testing.T) {
	t.Parallel()
	app, err := Load([]byte("name: a\nimage: a:1\nport: 8080\nhealth: {}\n"))
	require.NoError(t, err)
	h := app.Health
	require.Equal(t, HealthHTTP, h.Type)
	require.Equal(t, 8080, h.Port, "health.port defaults to the app port")
	require.Equal(t, DefaultHealthPath, h.Path)
	require.Equal(t, "GET", h.Method)
	require.Equal(t, "200-399", h.ExpectedStatus.String())
	require.Equal(t, 2*time.Second, h.Timeout.Std())
	require.Equal(t, 3, h.UnhealthyThreshold)
	require.True(t, h.IsEnabled())

	tcp, err := Load([]byte("name: a\nimage: a:1\nport: 8080\nhealth: {type: tcp, port: 9000, send: \"PING\\r\\n\", expect: PONG}\n"))
	require.NoError(t, err)
	require.Empty(t, tcp.Health.Path, "http defaults do not apply to tcp checks")
	require.Equal(t, 9000, tcp.Health.Port)

	off, err := Load([]byte("name: a\nimage: a:1\nport: 8080\nhealth: {enabled: false}\n"))
	require.NoError(t, err)
	require.False(t, off.Health.IsEnabled())
	var none *Health
	require.False(t, none.IsEnabled())
}

func TestExplicitZeroKeepsItsValue(t *testing.T) {
	t.Parallel()
	app, err := Load([]byte(`name: a
image: a:1
port: 80
update: {max_surge: 0, max_unavailable: 1, min_healthy_time: 0s}
lb: {keepalive: 0, max_fails: 0, next_upstream_tries: 0}
restart: {max_attempts: 0}
stop: {drain: 0s}
scaling: {min: 1, max: 3, target_cpu_percent: 50, tolerance: 0, scale_down_stabilization: 0s}
`))
	require.NoError(t, err)
	require.Equal(t, 0, app.Update.MaxSurge)
	require.Equal(t, 1, app.Update.MaxUnavailable)
	require.Zero(t, app.Update.MinHealthyTime)
	require.Equal(t, 2*time.Minute, app.Update.HealthyDeadline.Std(), "absent siblings keep their defaults")
	require.Zero(t, app.LB.Keepalive)
	require.Zero(t, app.LB.MaxFails)
	require.Zero(t, app.LB.NextUpstreamTries)
	require.Equal(t, 2*time.Second, app.LB.ConnectTimeout.Std())
	require.Zero(t, app.Restart.MaxAttempts)
	require.Zero(t, app.Stop.Drain)
	require.Equal(t, 30*time.Second, app.Stop.Grace.Std())
	require.Zero(t, app.Scaling.Tolerance)
	require.Zero(t, app.Scaling.ScaleDownStabilization)
}

func TestYAMLAndJSONDecodeAlike(t *testing.T) {
	t.Parallel()
	fromYAML, err := Load(readFile(t, "web.yaml"))
	require.NoError(t, err)
	js, err := json.Marshal(fromYAML)
	require.NoError(t, err)
	fromJSON, err := Load(js)
	require.NoError(t, err)
	require.Equal(t, fromYAML, fromJSON, "marshal then decode must round trip")
	js2, err := json.Marshal(fromJSON)
	require.NoError(t, err)
	require.JSONEq(t, string(js), string(js2))
}

func TestDefaultIsIdempotent(t *testing.T) {
	t.Parallel()
	app, err := Load(readFile(t, "web.yaml"))
	require.NoError(t, err)
	before, _ := json.Marshal(app)
	app.Default()
	app.Default()
	after, _ := json.Marshal(app)
	require.JSONEq(t, string(before), string(after))
}

// problems returns the errors of Load as "path: message" lines.
func problems(t *testing.T, src string) []string {
	t.Helper()
	_, err := Load([]byte(src))
	require.Error(t, err)
	var es Errors
	require.ErrorAs(t, err, &es)
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Error()
	}
	return out
}

const base = "name: web\nimage: web:1\nport: 8080\n"

// problemCase is a spec and the problems Load must report, each given as a
// prefix of one problem, in order.
type problemCase struct {
	name string
	src  string
	want []string
}

func runProblems(t *testing.T, tests []problemCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := problems(t, tt.src)
			require.Len(t, got, len(tt.want), "problems: %q", got)
			for i := range tt.want {
				require.True(t, strings.HasPrefix(got[i], tt.want[i]), "problem %d:\n got %q\nwant %q…", i, got[i], tt.want[i])
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []problemCase{
		{"not a mapping", "- a\n- b\n", []string{"a spec must be a mapping of fields"}},
		{"scalar document", "42", []string{"a spec must be a mapping of fields (name, image, port, …), not the number 42"}},
		{"invalid yaml", "name: [\n", []string{"not valid YAML or JSON"}},
		{"duplicate key", base + "port: 9090\n", []string{"not valid YAML or JSON"}},
		{"unknown top-level field", base + "replica: 3\n", []string{`replica: unknown field (did you mean "replicas"?) (allowed: command, env, health, image, lb, logging, name, placement, port, release, replicas, resources, restart, routing, scaling, stop, update)`}},
		{"unknown nested field", base + "health: {intervall: 5s}\n", []string{`health.intervall: unknown field (did you mean "interval"?)`}},
		{"wrong kinds, all reported", base + "replicas: three\nenv: {DEBUG: yes}\nroutingx: 1\nlb: {keepalive: 1.5}\nhealth: {interval: 5, expected_status: 99}\n", []string{
			`env[DEBUG]: must be a string, not a boolean (in YAML, quote`,
			`health.expected_status: "99" is not a status list`,
			`health.interval: must be a duration string such as "5s", not the number 5`,
			`lb.keepalive: must be a whole number`,
			`replicas: must be a whole number, not the string "three"`,
			`routingx: unknown field`,
		}},
		{"bad scalars", base + "resources: {memory: 12XB}\nstop: {grace: soon}\nupdate: {max_surge: 99999999999}\n", []string{
			`resources.memory: "12XB" is not a size`,
			`stop.grace: "soon" is not a duration`,
			`update.max_surge: must be a whole number between`,
		}},
		{"negative duration", base + "stop: {grace: -5s}\n", []string{`stop.grace: "-5s" is negative`}},
		{"list where mapping goes", base + "routing: [a]\n", []string{"routing: must be a mapping of fields, not a list"}},
		{"mapping where list goes", base + "routing: {hosts: {a: b}}\n", []string{"routing.hosts: must be a list, not a mapping"}},
	}
	runProblems(t, tests)
}

func TestValidateErrors(t *testing.T) {
	t.Parallel()
	tests := []problemCase{
		{"bad name and image", "name: Web_1\nimage: 'Not An Image'\nport: 0\n", []string{
			`name: "Web_1" is not a valid name`, `image: "Not An Image" is not a valid image reference`, `port: (0) must be between 1 and 65535`}},
		{"missing image", "name: web\nport: 80\n", []string{"image: must be set"}},
		{"replicas and scaling", base + "replicas: 2\nscaling: {min: 1, max: 2, target_cpu_percent: 50}\n", []string{"replicas: cannot be set together with scaling"}},
		{"scaling min above max, no target", base + "scaling: {min: 5, max: 2}\n", []string{
			"scaling.min: (5) must not be more than scaling.max (2)", "scaling: needs at least one target"}},
		{"scaling knobs out of range", base + "scaling: {min: 1, max: 2, target_rps_per_replica: 5, window: 0s, scale_up_cooldown: 2h, scale_up_max_percent: 0, scale_up_max_replicas: 0}\n", []string{
			"scaling.window: (0s) must be between 1s and 1h0m0s", "scaling.scale_up_cooldown: (2h0m0s) must be between 0s and 1h0m0s",
			"scaling.scale_up_max_replicas: and scale_up_max_percent cannot both be 0: a scale-up could add nothing"}},
		{"timeout not below interval", base + "health: {interval: 2s, timeout: 5s}\n", []string{"health.timeout: (5s) must be less than health.interval (2s)"}},
		{"health type", base + "health: {type: grpc}\n", []string{`health.type: "grpc" is not a health check type (http, tcp, docker or exec)`}},
		{"tcp with http fields", base + "health: {type: tcp, path: /x, tls: true}\n", []string{"health.path: is only for type http", "health.tls: is only for type http"}},
		{"http with tcp fields", base + "health: {send: PING}\n", []string{"health.send: is only for type tcp"}},
		{"header injection", base + "health: {headers: {\"X-A\": \"v\\r\\nHost: evil\", \"Bad Name\": ok}}\n", []string{
			`health.headers["Bad Name"]: "Bad Name" is not a valid header name`, `health.headers[X-A]: "v\r\nHost: evil" is not a valid header value`}},
		{"thresholds", base + "health: {healthy_threshold: 0, unhealthy_threshold: 0, retries: 11}\n", []string{
			"health.retries: (11) must be between 0 and 10", "health.healthy_threshold: (0) must be between 1 and 100", "health.unhealthy_threshold: (0) must be between 1 and 100"}},
		{"update cannot progress", base + "update: {max_surge: 0, max_unavailable: 0}\n", []string{"update.max_surge: and update.max_unavailable cannot both be 0"}},
		{"backoff order", base + "restart: {backoff_initial: 10m, backoff_max: 1m}\n", []string{"restart.backoff_initial: (10m0s) must not be more than restart.backoff_max (1m0s)"}},
		{"signal", base + "stop: {signal: SIGSEGV}\n", []string{`stop.signal: "SIGSEGV" is not an allowed signal`}},
		{"hash without key", base + "lb: {method: hash}\n", []string{"lb.hash_key: must be set when method is hash"}},
		{"hash key injection", base + "lb: {method: hash, hash_key: \"$remote_addr; return 200\"}\n", []string{`lb.hash_key: "$remote_addr; return 200" is not an allowed hash key`}},
		{"hash key off method", base + "lb: {hash_key: $uri}\n", []string{"lb.hash_key: is only for method hash"}},
		{"lb method", base + "lb: {method: fastest}\n", []string{`lb.method: "fastest" is not a load balancing method`}},
		{"hosts", base + "routing: {hosts: [ok.example.com, \"a b\", \"x;y\", OK.example.com]}\n", []string{
			`routing.hosts[1]: "a b" is not a valid host name`, `routing.hosts[2]: "x;y" is not a valid host name`, `routing.hosts[3]: "OK.example.com" repeats routing.hosts[0]`}},
		{"paths", base + "routing: {paths: [api, \"/a b\", \"/x{\", \"/q\\\"\", /ok, /ok, \"/../etc\"]}\n", []string{
			`routing.paths[0]: "api" is not a valid path`, `routing.paths[1]: "/a b" is not a valid path`, `routing.paths[2]: "/x{" is not a valid path`,
			`routing.paths[3]: "/q\"" is not a valid path`, `routing.paths[5]: "/ok" repeats routing.paths[4]`, `routing.paths[6]: "/../etc" is not a clean path`}},
		{"tls", base + "routing: {tls: {certificate: etc/web.crt, key: \"/etc/../k\"}}\n", []string{
			"routing.tls: needs routing.hosts", `routing.tls.certificate: "etc/web.crt" is not a valid file path`, `routing.tls.key: "/etc/../k" is not a valid file path`}},
		{"env", base + "env: {\"1BAD\": x, GOOD: \"has\\u0000nul\"}\n", []string{
			`env[1BAD]: "1BAD" is not a valid environment variable name`, "env[GOOD]: value must not contain a NUL byte"}},
		{"resources", base + "resources: {cpu: 1000, memory: 1Mi}\n", []string{"resources.cpu: (1000) must be between 0.01 and 256", "resources.memory: (1Mi) must be between 6Mi and 1Ti"}},
	}
	runProblems(t, tests)
}

func TestStructuralAndValidationProblemsTogether(t *testing.T) {
	t.Parallel()
	got := problems(t, "name: web\nimage: 'Bad Image'\nport: 0\nroutng: {}\n")
	require.Len(t, got, 3, "an unknown field must not hide the other problems: %q", got)
	require.True(t, strings.HasPrefix(got[0], "routng: unknown field"))
	require.True(t, strings.HasPrefix(got[1], "image: "))
	require.True(t, strings.HasPrefix(got[2], "port: "))
	_, err := Decode([]byte("name: web\nimage: web:1\nport: 8080\nroutng: {}\n"))
	require.ErrorContains(t, err, "routng: unknown field", "Decode still refuses unknown fields")
}

func TestEnvValuesNeverInErrors(t *testing.T) {
	t.Parallel()
	_, err := Load([]byte(base + "env: {TOKEN: \"hunter2\\u0000\"}\nport: 0\n"))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}

func TestErrorsFormat(t *testing.T) {
	t.Parallel()
	require.Equal(t, "spec: a: b", Errors{{Path: "a", Message: "b"}}.Error())
	require.Equal(t, "spec: 2 problems:\n  a: b\n  c", Errors{{Path: "a", Message: "b"}, {Message: "c"}}.Error())
	require.NoError(t, Errors(nil).Err())
	require.Equal(t, `env["a b"]`, Key("env", "a b"))
	require.Equal(t, `x[1]`, Index("x", 1))
}

func TestOversizeSpec(t *testing.T) {
	t.Parallel()
	_, err := Decode(make([]byte, MaxSpecSize+1))
	require.ErrorContains(t, err, "the limit is 1048576")
}

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want ByteSize
		err  bool
	}{
		{"0", 0, false}, {"4096", 4096, false}, {"256Mi", 256 << 20, false}, {"1G", 1e9, false}, {"1m", 1 << 20, false},
		{"2k", 2048, false}, {"1.5Gi", 3 << 29, false}, {"1Ti", 1 << 40, false}, {"", 0, true}, {"Mi", 0, true},
		{"-1", 0, true}, {"1e3", 0, true}, {"12XB", 0, true}, {"99999999999999Ti", 0, true}, {"+5", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if tt.err {
			require.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
	require.Equal(t, "256Mi", ByteSize(256<<20).String())
	require.Equal(t, "1000", ByteSize(1000).String())
}

func TestParseStatusRanges(t *testing.T) {
	t.Parallel()
	r, err := ParseStatusRanges("200-399, 404")
	require.NoError(t, err)
	require.Equal(t, StatusRanges{{200, 399}, {404, 404}}, r)
	require.Equal(t, "200-399,404", r.String())
	for _, bad := range []string{"", "abc", "99", "600", "300-200", "200-", "2xx", "200-399,,"} {
		_, err := ParseStatusRanges(bad)
		require.Error(t, err, bad)
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	v, err := ParseDuration("1m30s")
	require.NoError(t, err)
	require.Equal(t, 90*time.Second, v.Std())
	for _, bad := range []string{"", "5", "five", "-1s"} {
		_, err := ParseDuration(bad)
		require.Error(t, err, bad)
	}
}

func TestGrammars(t *testing.T) {
	t.Parallel()
	ok := func(f func(string) error, s string) { t.Helper(); require.NoError(t, f(s), s) }
	bad := func(f func(string) error, s string) { t.Helper(); require.Error(t, f(s), s) }
	ok(CheckHost, "example.com")
	ok(CheckHost, "*.example.com")
	ok(CheckHost, "localhost")
	ok(CheckHost, "127.0.0.1")
	bad(CheckHost, "*.")
	bad(CheckHost, "a..b")
	bad(CheckHost, "-a.com")
	bad(CheckHost, "a*.com")
	bad(CheckHost, "exa\u0430mple.com") // Cyrillic look-alike
	bad(CheckHost, strings.Repeat("a", 64)+".com")
	ok(CheckPath, "/")
	ok(CheckPath, "/api/v1/users")
	ok(CheckPath, "/%7Euser")
	bad(CheckPath, "/a?b")
	bad(CheckPath, "/a$b")
	bad(CheckPath, "/a#b")
	bad(CheckPath, "/a\\b")
	bad(CheckPath, "//a")
	ok(CheckHashKey, "$remote_addr")
	ok(CheckHashKey, "$cookie_session")
	ok(CheckHashKey, "$host$request_uri")
	ok(CheckHashKey, "$http_x_user-$arg_id")
	bad(CheckHashKey, "remote_addr")
	bad(CheckHashKey, "${remote_addr}")
	bad(CheckHashKey, "$remote_addr x")
	bad(CheckHashKey, "$document_root")
	ok(CheckFilePath, "/etc/berth/tls/web.crt")
	bad(CheckFilePath, "/etc/berth/../shadow")
	bad(CheckFilePath, "/etc/berth/")
	bad(CheckFilePath, "/etc/a b")
	ok(CheckImage, "web:1")
	ok(CheckImage, "registry.local:5000/team/web@sha256:"+strings.Repeat("a", 64))
	ok(CheckImage, "registry.local:5000/team/web:1.4@sha256:"+strings.Repeat("a", 64))
	bad(CheckImage, "web@sha256:abc")
	bad(CheckImage, "web@sha256:"+strings.Repeat("A", 64))
	bad(CheckImage, "web@md5:"+strings.Repeat("a", 32))
	bad(CheckImage, "web@")
	require.ErrorContains(t, CheckImage("web@sha256:abc"), "registry.local/web@sha256:<64 lowercase hex digits>")
	bad(CheckImage, "Web:1")
	bad(CheckImage, "web:1;rm")
	require.True(t, NginxSafe("abc $x"))
	for _, s := range []string{"a;b", "a{", "}", "'", `"`, "\n", "\t", "\x00", "\u00e9", "`", "#", `\`} {
		require.False(t, NginxSafe(s), "%q", s)
	}
}

// Every example spec the docs point to loads and validates.
func TestExamplesAreValid(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../examples/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		_, err = Load(b) // decodes strictly, defaults and validates
		require.NoError(t, err, f)
	}
}
