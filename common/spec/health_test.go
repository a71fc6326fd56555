package spec

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// natsForgery is the confirmed attack: raw NATS protocol that writes an
// instance record with term 2^62 into berth_instances.
const natsForgery = "CONNECT {\"verbose\":false}\r\n" +
	"PUB $KV.berth_instances.web.a 136\r\n" +
	`{"app":"web","id":"a","generation":1,"term":4611686018427387904,"address":"169.254.169.254:80","state":"running","weight":1}` + "\r\n"

func TestHealthReachesOnlyTheInstance(t *testing.T) {
	t.Parallel()
	const base = "name: web\nimage: web:1\nport: 8080\n"
	tests := []struct {
		name   string
		health string
		fields []string // the refused fields; none means valid
	}{
		{"confirmed exploit: NATS protocol to 4222", "{type: tcp, port: 4222, send: " + strconv.Quote(natsForgery) + "}", []string{"health.port"}},
		{"NATS monitoring port over http", "{port: 8222, path: /varz}", []string{"health.port"}},
		{"Postgres port", "{type: tcp, port: 5432}", []string{"health.port"}},
		{"scheduler API port", "{port: 7070, path: /v1/apps}", []string{"health.port"}},
		{"send over 1 KiB", `{type: tcp, send: "` + strings.Repeat("x", MaxTCPSend+1) + `"}`, []string{"health.send"}},
		{"expect over 1 KiB", `{type: tcp, expect: "` + strings.Repeat("x", MaxTCPExpect+1) + `"}`, []string{"health.expect"}},
		{"send and expect at 1 KiB", `{type: tcp, send: "` + strings.Repeat("x", MaxTCPSend) + `", expect: "` + strings.Repeat("y", MaxTCPExpect) + `"}`, nil},
		{"a separate app port", "{type: tcp, port: 9000, send: \"PING\\r\\n\", expect: PONG}", nil},
		{"an app whose own port is 4222", "{type: tcp, port: 4222}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := base + "health: " + tt.health + "\n"
			if tt.name == "an app whose own port is 4222" {
				src = strings.Replace(src, "port: 8080", "port: 4222", 1)
			}
			_, err := Load([]byte(src))
			if tt.fields == nil {
				require.NoError(t, err)
				return
			}
			var es Errors
			require.True(t, errors.As(err, &es), "a field error, got %v", err)
			var got []string
			for _, e := range es {
				got = append(got, e.Path)
			}
			require.Equal(t, tt.fields, got, "%v", err)
		})
	}
}

// TestMaxResponseTimeRefusesHostileInput is health.max_response_time's
// share of the hostile-spec corpus: each problem is refused naming the
// field.
func TestMaxResponseTimeRefusesHostileInput(t *testing.T) {
	t.Parallel()
	runProblems(t, []problemCase{
		{"equal to the timeout", base + "health: {timeout: 2s, max_response_time: 2s}\n", []string{"health.max_response_time: (2s) must be less than health.timeout (2s)"}},
		{"above the timeout", base + "health: {timeout: 2s, max_response_time: 1h}\n", []string{"health.max_response_time: (1h0m0s) must be less than health.timeout (2s)"}},
		{"far above an hour", base + "health: {interval: 2h, timeout: 1h, max_response_time: 9000h}\n", []string{
			"health.interval: (2h0m0s) must be between 100ms and 1h0m0s",
			"health.max_response_time: (9000h0m0s) must be between 1ms and 1h0m0s",
			"health.max_response_time: (9000h0m0s) must be less than health.timeout (1h0m0s)"}},
		{"below a millisecond", base + "health: {max_response_time: 10us}\n", []string{"health.max_response_time: (10µs) must be between 1ms and 1h0m0s"}},
		{"negative", base + "health: {max_response_time: -1s}\n", []string{`health.max_response_time: "-1s" is negative`}},
		{"a number", base + "health: {max_response_time: 500}\n", []string{`health.max_response_time: must be a duration string such as "5s", not the number 500`}},
		{"not a duration", base + "health: {max_response_time: fast}\n", []string{`health.max_response_time:`}},
		{"a list", base + "health: {max_response_time: [1s]}\n", []string{`health.max_response_time:`}},
		{"overflow", base + "health: {max_response_time: 99999999999h}\n", []string{`health.max_response_time:`}},
		{"misspelt", base + "health: {max_response_tme: 1s}\n", []string{`health.max_response_tme: unknown field (did you mean "max_response_time"?)`}},
		{"tcp too", base + "health: {type: tcp, timeout: 1s, max_response_time: 1s}\n", []string{"health.max_response_time: (1s) must be less than health.timeout (1s)"}},
	})
}

func TestMaxResponseTimeIsUnsetByDefault(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(base + "health: {path: /healthz}\n"))
	require.NoError(t, err)
	require.Zero(t, a.Health.MaxResponseTime)
	b, err := json.Marshal(a.Health)
	require.NoError(t, err)
	require.NotContains(t, string(b), "max_response_time", "unset stays out of the app view, so readers that predate it see nothing new")
	a, err = Load([]byte(base + "health: {type: tcp, timeout: 1s, max_response_time: 250ms}\n"))
	require.NoError(t, err)
	require.Equal(t, 250*time.Millisecond, a.Health.MaxResponseTime.Std())
	b, err = json.Marshal(a.Health)
	require.NoError(t, err)
	require.Contains(t, string(b), `"max_response_time":"250ms"`)
}
