package plan

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
)

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}

const web = "name: web\nimage: web:1\nport: 8080\nreplicas: 3\nupdate: {max_surge: 2, max_unavailable: 1}\nrouting:\n  hosts: [web.example.com]\n"

func TestDecide(t *testing.T) {
	t.Parallel()
	v1 := load(t, web)
	v2 := load(t, strings.Replace(web, "web:1", "web:2", 1))
	scaled := load(t, strings.Replace(web, "replicas: 3", "replicas: 5", 1))
	routed := load(t, strings.Replace(web, "[web.example.com]", "[web.example.com, www.example.com]", 1))
	health := load(t, web+"health: {type: tcp}\n")
	acme := load(t, strings.Replace(web, "hosts: [web.example.com]", "hosts: [web.example.com]\n  tls: {acme: true}", 1))
	acme2 := load(t, strings.Replace(web, "hosts: [web.example.com]", "hosts: [web.example.com, api.example.com]\n  tls: {acme: true}", 1))
	released := load(t, web+"release: {command: [migrate, up], timeout: 2m}\n")
	releasedV2 := load(t, strings.Replace(web, "web:1", "web:2", 1)+"release: {command: [migrate, up], timeout: 2m}\n")
	three := []string{"h1", "h1", "h1"}
	const releaseRuns = "release: run the release task (migrate up, timeout 2m0s) once, before the first new instance starts, unless this version was released before: " +
		"if it fails, nothing of the new version starts and the instances before keep serving"
	tests := []struct {
		name string
		in   Input
		want []string // kind: message
	}{
		{"no change", Input{Current: v1, Next: v1, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"no_change: no change: the spec is the current one; nothing happens"}},
		{"new app", Input{Next: v1, NextReplicas: 3, NextHash: "h1"},
			[]string{"create: create the app: start 3 instance(s) of web:1"}},
		{"new image", Input{Current: v1, Next: v2, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h2", Running: three},
			[]string{"replace: replace 3 instance(s) by a rolling update (max_surge 2, max_unavailable 1): its containers change"}},
		{"a tag pushed again", Input{Current: v1, Next: v1, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h1@new", Running: three},
			[]string{"replace: replace 3 instance(s) by a rolling update (max_surge 2, max_unavailable 1): the image's tag now names another digest (pushed again)"}},
		{"new app with a release task", Input{Next: released, NextReplicas: 3, NextHash: "h1"},
			[]string{releaseRuns, "create: create the app: start 3 instance(s) of web:1"}},
		{"new image with a release task", Input{Current: released, Next: releasedV2, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h2", Running: three},
			[]string{releaseRuns, "replace: replace 3 instance(s) by a rolling update (max_surge 2, max_unavailable 1): its containers change"}},
		{"a scale runs no release", Input{Current: released, Next: load(t, strings.Replace(web, "replicas: 3", "replicas: 5", 1)+"release: {command: [migrate, up], timeout: 2m}\n"),
			CurrentReplicas: 3, NextReplicas: 5, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"scale: scale 3→5"}},
		{"scale", Input{Current: v1, Next: scaled, CurrentReplicas: 3, NextReplicas: 5, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"scale: scale 3→5"}},
		{"routing only", Input{Current: v1, Next: routed, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"routing: routing only: lbagents push the change to nginx or reload it; no instance is replaced"}},
		{"health", Input{Current: v1, Next: health, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"health: health: healthd probes with the new check; no instance is replaced"}},
		{"rollout under way", Input{Current: v1, Next: scaled, CurrentReplicas: 3, NextReplicas: 5, CurrentHash: "h1", NextHash: "h1", Running: []string{"h0", "h1", "h1"}},
			[]string{"replace: replace 1 instance(s) by a rolling update (max_surge 2, max_unavailable 1): they run an earlier spec (a rollout under way)", "scale: scale 3→5"}},
		{"new certificate host", Input{Current: acme, Next: acme2, CurrentReplicas: 3, NextReplicas: 3, CurrentHash: "h1", NextHash: "h1", Running: three},
			[]string{"routing: routing only: lbagents push the change to nginx or reload it; no instance is replaced",
				"certificate: new certificate for api.example.com (ACME, HTTP-01): served over plain HTTP until it is issued"}},
		{"unplaceable", Input{Current: v1, Next: scaled, CurrentReplicas: 3, NextReplicas: 5, CurrentHash: "h1", NextHash: "h1", Running: three,
			Unplaceable: 2, UnplaceableReason: "no host of 1 can take it (h1: has 0.00 of 2.00 CPU left, needs 1.00)"},
			[]string{"scale: scale 3→5", "unplaceable: unplaceable: 2 instance(s) do not fit: no host of 1 can take it (h1: has 0.00 of 2.00 CPU left, needs 1.00)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			for _, a := range Decide(tt.in) {
				got = append(got, a.Kind+": "+a.Message)
			}
			require.Equal(t, tt.want, got)
		})
	}
}
