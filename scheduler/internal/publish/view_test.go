package publish

import (
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/stretchr/testify/require"
)

// TestViewRedactsHealthSecrets: berth_apps carries no literal value of a
// secret health header; references and other headers pass unchanged, and
// the stored spec is not touched.
func TestViewRedactsHealthSecrets(t *testing.T) {
	t.Parallel()
	headers := map[string]string{
		"Authorization": "Bearer s3cret",
		"X-Api-Key":     "s3cret",
		"Cookie":        "sid=s3cret",
		"X-Auth-Token":  "$env:BERTH_PROBE_WEB__TOKEN",
		"Host":          "web.internal",
		"Accept":        "application/json",
	}
	a := &spec.App{Name: "web", Image: "web:1", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Path: "/healthz", Headers: headers}}
	v := View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3)
	require.Equal(t, map[string]string{
		"Authorization": spec.RedactedValue,
		"X-Api-Key":     spec.RedactedValue,
		"Cookie":        spec.RedactedValue,
		"X-Auth-Token":  "$env:BERTH_PROBE_WEB__TOKEN",
		"Host":          "web.internal",
		"Accept":        "application/json",
	}, v.Health.Headers)
	require.Equal(t, "Bearer s3cret", a.Health.Headers["Authorization"], "the stored spec keeps its value")
	require.Equal(t, "/healthz", v.Health.Path)

	none := View(store.App{Name: "web", Spec: &spec.App{Name: "web", Image: "web:1", Port: 8080}}, 3)
	require.NotPanics(t, func() { _ = none.Health })
}
