package publish

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// app_updated names the pinned ref, and the one before when it changed:
// who redeployed is its actor, old → new its details.
func TestUpdatedEventNamesThePin(t *testing.T) {
	t.Parallel()
	s := &spec.App{Name: "web", Image: "r/web:latest"}
	e := updated(store.App{Name: "web", Generation: 1, Spec: s})
	require.Equal(t, "app web is at generation 1 (image r/web:latest)", e.Message)
	require.Equal(t, map[string]string{"generation": "1", "image": "r/web:latest"}, e.Details)

	e = updated(store.App{Name: "web", Generation: 3, Spec: s, ImageRef: "r/web@sha256:2", PreviousImageRef: "r/web@sha256:1"})
	require.Equal(t, "app web is at generation 3 (image r/web:latest pinned to r/web@sha256:2); image was r/web@sha256:1", e.Message)
	require.Equal(t, map[string]string{"generation": "3", "image": "r/web:latest", "image_ref": "r/web@sha256:2", "previous_image_ref": "r/web@sha256:1"}, e.Details)

	e = updated(store.App{Name: "web", Generation: 4, Spec: s, ImageRef: "r/web@sha256:2", PreviousImageRef: "r/web@sha256:2"})
	require.NotContains(t, e.Details, "previous_image_ref", "a scale keeps the pin: nothing moved")
}
