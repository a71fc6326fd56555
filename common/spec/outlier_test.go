package spec

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOutlierRefusesHostileInput is health.outlier's share of the
// hostile-spec corpus: each problem is refused naming its field.
func TestOutlierRefusesHostileInput(t *testing.T) {
	t.Parallel()
	h := base + "health: {type: http, path: /healthz, outlier: "
	runProblems(t, []problemCase{
		{"consecutive_5xx negative", h + "{consecutive_5xx: -1}}\n", []string{"health.outlier.consecutive_5xx: (-1) must be between 0 and 10000"}},
		{"consecutive_5xx huge", h + "{consecutive_5xx: 99999999999}}\n", []string{"health.outlier.consecutive_5xx: must be a whole number", "health.outlier.consecutive_5xx: (99999999999) must be between 0 and 10000"}},
		{"consecutive_5xx a string", h + "{consecutive_5xx: five}}\n", []string{"health.outlier.consecutive_5xx"}},
		{"error_percent over 100", h + "{error_percent: 101}}\n", []string{"health.outlier.error_percent: (101) must be between 0 and 100"}},
		{"error_percent negative", h + "{error_percent: -5}}\n", []string{"health.outlier.error_percent: (-5) must be between 0 and 100"}},
		{"error_percent a fraction", h + "{error_percent: 0.5}}\n", []string{"health.outlier.error_percent"}},
		{"both detectors off", h + "{consecutive_5xx: 0, error_percent: 0}}\n", []string{"health.outlier.error_percent: and health.outlier.consecutive_5xx are both 0"}},
		{"min_requests zero", h + "{min_requests: 0}}\n", []string{"health.outlier.min_requests: (0) must be between 1 and 1000000"}},
		{"min_requests huge", h + "{min_requests: 1000001}}\n", []string{"health.outlier.min_requests: (1000001) must be between 1 and 1000000"}},
		{"interval too short", h + "{interval: 10ms}}\n", []string{"health.outlier.interval: (10ms) must be between 1s and 10m0s"}},
		{"interval too long", h + "{interval: 1h}}\n", []string{"health.outlier.interval: (1h0m0s) must be between 1s and 10m0s"}},
		{"interval negative", h + "{interval: -10s}}\n", []string{`health.outlier.interval: "-10s" is negative`}},
		{"interval a number", h + "{interval: 10}}\n", []string{`health.outlier.interval: must be a duration string such as "5s", not the number 10`}},
		{"base_ejection zero", h + "{base_ejection: 0s}}\n", []string{"health.outlier.base_ejection: (0s) must be between 1s and 1h0m0s"}},
		{"base_ejection a day", h + "{base_ejection: 24h}}\n", []string{"health.outlier.base_ejection: (24h0m0s) must be between 1s and 1h0m0s"}},
		{"max_ejected_percent zero", h + "{max_ejected_percent: 0}}\n", []string{"health.outlier.max_ejected_percent: (0) must be between 1 and 100"}},
		{"max_ejected_percent over 100", h + "{max_ejected_percent: 200}}\n", []string{"health.outlier.max_ejected_percent: (200) must be between 1 and 100"}},
		{"unknown field", h + "{consecutive_gateway_failure: 5}}\n", []string{"health.outlier.consecutive_gateway_failure: unknown field"}},
		{"not a mapping", h + "[5, 50]}\n", []string{"health.outlier: must be a mapping of fields, not a list"}},
		{"a boolean", h + "true}\n", []string{"health.outlier"}},
	})
}

func TestOutlierLoads(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(base + "health: {type: http, path: /healthz, outlier: {}}\n"))
	require.NoError(t, err)
	require.Equal(t, &Outlier{Consecutive5xx: 5, ErrorPercent: 50, MinRequests: 20, Interval: Duration(10 * time.Second),
		BaseEjection: Duration(30 * time.Second), MaxEjectedPercent: 50}, a.Health.Outlier, "an empty block takes the defaults")
	a, err = Load([]byte(base + "health: {type: http, path: /healthz, outlier: {consecutive_5xx: 0, error_percent: 30, interval: 2s}}\n"))
	require.NoError(t, err)
	require.Equal(t, 0, a.Health.Outlier.Consecutive5xx)
	require.Equal(t, 30, a.Health.Outlier.ErrorPercent)
	require.Equal(t, 2*time.Second, a.Health.Outlier.Interval.Std())
	back, err := Load(mustJSON(t, a))
	require.NoError(t, err)
	require.Equal(t, a.Health.Outlier, back.Health.Outlier, "a stored spec loads again")
	a, err = Load([]byte(base + "health: {type: http, path: /healthz}\n"))
	require.NoError(t, err)
	require.Nil(t, a.Health.Outlier, "absent: off")
}
