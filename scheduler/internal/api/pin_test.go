package api

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/scheduler/internal/image"
)

// fakeResolver pins each image to what the test set last.
type fakeResolver struct {
	mu   sync.Mutex
	pins map[string]image.Pin
	err  error
}

func (f *fakeResolver) set(img string, p image.Pin, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pins[img], f.err = p, err
}

func (f *fakeResolver) resolve(_ context.Context, img string) (image.Pin, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pins[img], f.err
}

const (
	digestV1 = "r.test/web@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestV2 = "r.test/web@sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// An apply pins the image and shows it; a redeploy resolves it again and
// makes a generation only for a new digest; one that cannot be resolved
// changes nothing and says why.
func TestApplyPinsAndRedeploy(t *testing.T) {
	t.Parallel()
	res := &fakeResolver{pins: map[string]image.Pin{"r.test/web:latest": {Ref: digestV1, Source: image.FromRegistry}}}
	c := newAPIWith(t, Options{Resolve: res.resolve})
	const body = "name: web\nimage: r.test/web:latest\nport: 8080\n"
	code, obj, raw := c.do("PUT", "/v1/apps/web", body)
	require.Equal(t, 200, code, "%s", raw)
	require.Equal(t, digestV1, obj["image_ref"])
	require.Equal(t, "image r.test/web:latest pinned to "+digestV1, obj["image_note"])
	code, obj, _ = c.do("PUT", "/v1/apps/web", body)
	require.Equal(t, 200, code)
	require.Equal(t, false, obj["changed"], "same spec, same digest")

	code, obj, raw = c.do("POST", "/v1/apps/web/redeploy", "")
	require.Equal(t, 200, code, "%s", raw)
	require.Equal(t, false, obj["changed"], "unchanged")
	require.EqualValues(t, 1, obj["generation"])

	res.set("r.test/web:latest", image.Pin{Ref: digestV2, Source: image.FromRegistry}, nil)
	code, obj, raw = c.do("POST", "/v1/apps/web/redeploy", "")
	require.Equal(t, 200, code, "%s", raw)
	require.Equal(t, true, obj["changed"])
	require.EqualValues(t, 2, obj["generation"])
	require.Equal(t, digestV2, obj["image_ref"])
	require.Equal(t, digestV1, obj["previous_image_ref"])

	code, obj, _ = c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	require.Equal(t, digestV2, obj["image_ref"], "status shows the digest")
	code, _, raw = c.do("GET", "/v1/apps/web/history", "")
	require.Equal(t, 200, code)
	var revs []RevisionView
	require.NoError(t, json.Unmarshal(raw, &revs))
	require.Len(t, revs, 2)
	require.Equal(t, digestV2, revs[0].ImageRef)
	require.Equal(t, digestV1, revs[1].ImageRef)
	require.Equal(t, "r.test/web:latest", revs[0].Image)

	// The registry down: a redeploy changes nothing and says why (502);
	// an apply of the same spec keeps the pin.
	res.set("r.test/web:latest", image.Pin{Reason: "registry r.test: connection refused"}, nil)
	code, obj, _ = c.do("POST", "/v1/apps/web/redeploy", "")
	require.Equal(t, 502, code)
	require.Contains(t, obj["error"], "registry r.test: connection refused; nothing changed")
	code, obj, _ = c.do("PUT", "/v1/apps/web", body)
	require.Equal(t, 200, code)
	require.Equal(t, false, obj["changed"])
	require.Contains(t, obj["image_note"], "the generation keeps its pin "+digestV2)

	// Hosts that disagree: refused, naming why.
	res.set("r.test/web:latest", image.Pin{}, fmt.Errorf("%w: r.test/web:latest: h1 has …", image.ErrAmbiguous))
	code, _, _ = c.do("PUT", "/v1/apps/web", "name: web\nimage: r.test/web:latest\nport: 8080\nreplicas: 2\n")
	require.Equal(t, 409, code)
	code, _, _ = c.do("POST", "/v1/apps/nope/redeploy", "")
	require.Equal(t, 404, code)
}

// Without a resolver nothing is pinned, and redeploy is unavailable.
func TestRedeployWithoutResolver(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, obj, _ := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\n")
	require.Equal(t, 200, code)
	require.Nil(t, obj["image_ref"])
	code, _, _ = c.do("POST", "/v1/apps/web/redeploy", "")
	require.Equal(t, 503, code)
}

// TestApplyRefusesDockerHealthWithoutHealthcheck: health.type docker on an
// image that the engines hold without a HEALTHCHECK, and no
// health.docker.test, is refused at apply and at plan, naming the field;
// a test of its own, an image with one, or an image no engine holds yet
// (nothing is known) pass.
func TestApplyRefusesDockerHealthWithoutHealthcheck(t *testing.T) {
	t.Parallel()
	res := &fakeResolver{pins: map[string]image.Pin{
		"r.test/bare:1":    {Ref: digestV1, Source: image.FromRegistry, NoHealthcheck: true},
		"r.test/checked:1": {Ref: digestV2, Source: image.FromRegistry},
	}}
	c := newAPIWith(t, Options{Resolve: res.resolve})
	spec := func(name, img, health string) string {
		return "name: " + name + "\nimage: " + img + "\nport: 8080\nrouting: {hosts: [" + name + ".test]}\nhealth: " + health + "\n"
	}
	for _, path := range []string{"/v1/apps/bare", "/v1/apps/bare/plan"} {
		method := "PUT"
		if path != "/v1/apps/bare" {
			method = "POST"
		}
		code, obj, raw := c.do(method, path, spec("bare", "r.test/bare:1", "{type: docker}"))
		require.Equal(t, 400, code, "%s %s", path, raw)
		require.Contains(t, fmt.Sprint(obj["fields"]), "health.docker.test", "%s", raw)
		require.Contains(t, string(raw), "declares no HEALTHCHECK")
	}
	for _, tc := range []struct{ name, img, health string }{
		{"bare", "r.test/bare:1", "{type: docker, docker: {test: [/app/check]}}"},
		{"bare", "r.test/bare:1", "{type: exec, exec: {command: [/app/check]}}"},
		{"checked", "r.test/checked:1", "{type: docker}"},
		{"unknown", "r.test/unknown:1", "{type: docker}"},
	} {
		code, _, raw := c.do("PUT", "/v1/apps/"+tc.name, spec(tc.name, tc.img, tc.health))
		require.Equal(t, 200, code, "%s %s: %s", tc.img, tc.health, raw)
	}
}
