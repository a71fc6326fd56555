package controller

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
)

const (
	pinV1 = "127.0.0.1:5000/web@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	pinV2 = "127.0.0.1:5000/web@sha256:2222222222222222222222222222222222222222222222222222222222222222"
	pinID = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
)

// pin makes a new generation of web's spec pinned to ref, as an apply or
// a redeploy does.
func pin(f *fake, ref string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.apps["web"]
	a.Generation++
	a.ImageRef = ref
	f.history["web"][a.Generation] = a.Spec
	f.apps["web"] = a
}

// Every container is created from the pinned ref, and a new digest under
// the same tag (a redeploy) replaces every instance by a rolling update;
// an app never pinned keeps its hash.
func TestPinnedDigestRollsOut(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, true)
	f.mu.Lock()
	unpinned := f.apps["web"]
	f.mu.Unlock()
	s := *unpinned.Spec
	s.Default()
	require.Equal(t, reconcile.SpecHash(&s, h.c.cfg.Env.Env(nil, h.c.cfg.Environ)), h.c.SpecHash(unpinned), "no pin: the hash as before pinning")

	for _, ref := range []string{pinV1, pinV2} {
		pin(f, ref)
		h.c.Wake()
		require.Eventually(t, func() bool { return h.converged(ref, 3, true) }, 10*time.Second, 10*time.Millisecond, "every instance runs %s", ref)
	}
	f.mu.Lock()
	for _, o := range f.created[3:] {
		require.Contains(t, []string{pinV1, pinV2}, o.Image, "created from the pinned ref, never the tag")
	}
	f.mu.Unlock()
	require.Empty(t, eventsOf(f, msg.EventRolloutRolledBack))
}

// An app pinned to an image ID (an image only the engines held) on a host
// that lacks it: reported with the host and the ID, never pulled by its
// tag nor created from another image.
func TestMissingImageIDIsReported(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.missing[pinID] = errors.New("an image ID cannot be pulled")
	f.apply(load(t, rolloutSpec(t, "v1", true)), 2)
	f.mu.Lock()
	a := f.apps["web"]
	a.ImageRef = pinID
	f.apps["web"] = a
	f.mu.Unlock()
	start(t, f, Config{})
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventImagePullFailed)) >= 2 }, 5*time.Second, 10*time.Millisecond)
	e := eventsOf(f, msg.EventImagePullFailed)[0]
	require.Equal(t, pinID, e.Details["image_id"])
	require.Contains(t, e.Message, "image web:v1 is pinned to the image ID "+pinID+", which the local engine lacks")
	require.Contains(t, e.Details, "host")
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Empty(t, f.created, "no container from another image")
	for _, r := range f.records {
		require.NotEqual(t, msg.StateRunning, r.State)
	}
}
