package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// TestReleasesUnderTheLease: a release is begun once per generation, its
// container and end are recorded by the leader that holds the lease, its
// end once, and a deposed leader writes nothing.
func TestReleasesUnderTheLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	a, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	tx := func(l Lease, fn func(ctx context.Context, tx *Tx) error) error { return s.LeaderTx(ctx, l, fn) }

	require.NoError(t, tx(a, func(ctx context.Context, tx *Tx) error {
		return tx.BeginRelease(ctx, Release{App: "web", Generation: 2, SpecHash: "h2", Host: "h-1"})
	}))
	require.ErrorIs(t, tx(a, func(ctx context.Context, tx *Tx) error {
		return tx.BeginRelease(ctx, Release{App: "web", Generation: 2, SpecHash: "h2"})
	}), ErrReleaseExists, "a generation has one release, ever")
	require.NoError(t, tx(a, func(ctx context.Context, tx *Tx) error {
		ok, err := tx.WatchRelease(ctx, "web", 2, "c1")
		require.True(t, ok)
		return err
	}))
	key := []ReleaseKey{{App: "web", SpecHash: "h2", Generation: 2}}
	rs, err := s.Releases(ctx, key)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	r := rs[0]
	require.Equal(t, Release{App: "web", Generation: 2, SpecHash: "h2", State: ReleaseRunning, Host: "h-1", ContainerID: "c1", Term: 1, StartedAt: r.StartedAt}, r)

	// a is deposed: b takes over, adopts the release, and a writes nothing.
	require.NoError(t, s.Resign(ctx, a))
	b, ok, err := s.Acquire(ctx, "scheduler", "b", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.ErrorIs(t, tx(a, func(ctx context.Context, tx *Tx) error {
		_, err := tx.EndRelease(ctx, Release{App: "web", Generation: 2, State: ReleaseSucceeded})
		return err
	}), ErrNotLeader)
	require.NoError(t, tx(b, func(ctx context.Context, tx *Tx) error {
		ok, err := tx.WatchRelease(ctx, "web", 2, "")
		require.True(t, ok, "still running")
		return err
	}))
	code := 3
	require.NoError(t, tx(b, func(ctx context.Context, tx *Tx) error {
		ended, err := tx.EndRelease(ctx, Release{App: "web", Generation: 2, State: ReleaseFailed, ExitCode: &code, Reason: "release task exited with code 3"})
		require.True(t, ended)
		return err
	}))
	require.NoError(t, tx(b, func(ctx context.Context, tx *Tx) error {
		ended, err := tx.EndRelease(ctx, Release{App: "web", Generation: 2, State: ReleaseFailed, Reason: "release container lost"})
		require.False(t, ended, "its end is recorded once: a late 'lost' changes nothing")
		watched, err2 := tx.WatchRelease(ctx, "web", 2, "c9")
		require.False(t, watched, "an ended release is watched no more")
		require.NoError(t, err2)
		return err
	}))
	rs, err = s.Releases(ctx, key)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	r = rs[0]
	require.Equal(t, ReleaseFailed, r.State)
	require.Equal(t, &code, r.ExitCode)
	require.Equal(t, "release task exited with code 3", r.Reason)
	require.Equal(t, "c1", r.ContainerID)
	require.Equal(t, uint64(2), r.Term, "the term that adopted it")
	require.NotNil(t, r.EndedAt)
	require.Error(t, tx(b, func(ctx context.Context, tx *Tx) error {
		_, err := tx.EndRelease(ctx, Release{App: "web", Generation: 2, State: ReleaseRunning})
		return err
	}), "running is no end")
}

// TestReleasesReadsWhatThePlanNeeds: of an app's many releases, the leader
// reads its current generation's, the newest that released its spec (a
// success before a later failure of the same spec), and every running
// one; nothing of an app it does not ask for but a running release.
func TestReleasesReadsWhatThePlanNeeds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		for g := int64(1); g <= 30; g++ {
			r := Release{App: "web", Generation: g, SpecHash: fmt.Sprintf("h%d", g%10)}
			if err := tx.BeginRelease(ctx, r); err != nil {
				return err
			}
			r.State = ReleaseSucceeded
			if g == 27 || g == 30 {
				r.State = ReleaseFailed // h7 succeeded at 7 and 17, failed at 27
			}
			if _, err := tx.EndRelease(ctx, r); err != nil {
				return err
			}
		}
		for _, r := range []Release{{App: "api", Generation: 4, SpecHash: "x"}, {App: "api", Generation: 3, SpecHash: "y"}} {
			if err := tx.BeginRelease(ctx, r); err != nil {
				return err
			}
		}
		_, err := tx.EndRelease(ctx, Release{App: "api", Generation: 3, State: ReleaseSucceeded})
		return err
	}))
	rs, err := s.Releases(ctx, []ReleaseKey{{App: "web", SpecHash: "h7", Generation: 30}})
	require.NoError(t, err)
	got := map[string]string{}
	for _, r := range rs {
		got[fmt.Sprintf("%s/%d", r.App, r.Generation)] = r.State
	}
	require.Equal(t, map[string]string{"web/30": ReleaseFailed, "web/17": ReleaseSucceeded, "api/4": ReleaseRunning}, got)
}

// TestReleasesOfADeletedApp: a deleted app's ended releases go (applied
// again, it releases afresh); a running one stays for the leader to end.
func TestReleasesOfADeletedApp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	app, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\nrelease: {command: [m]}\n"))
	require.NoError(t, err)
	_, _, err = s.Apply(ctx, app, nil)
	require.NoError(t, err)
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		if err := tx.BeginRelease(ctx, Release{App: "web", Generation: 1, SpecHash: "h1"}); err != nil {
			return err
		}
		if _, err := tx.EndRelease(ctx, Release{App: "web", Generation: 1, State: ReleaseSucceeded}); err != nil {
			return err
		}
		return tx.BeginRelease(ctx, Release{App: "web", Generation: 2, SpecHash: "h2"})
	}))
	require.NoError(t, s.Delete(ctx, "web"))
	rs, err := s.Releases(ctx, nil)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	require.Equal(t, int64(2), rs[0].Generation)
	require.Equal(t, ReleaseRunning, rs[0].State)
}

// TestLastLogTailOfAFailedRelease: a rollout failed by its release task
// reads the release's log tail.
func TestLastLogTailOfAFailedRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		_, err := tx.AddEvent(ctx, Event{App: "web", Kind: msg.EventReleaseFailed, Message: "release failed",
			Details: map[string]string{"generation": "4"}, LogTail: []string{"migrating", "error: relation exists"}})
		return err
	}))
	tail, err := s.LastLogTail(ctx, "web", 4)
	require.NoError(t, err)
	require.Equal(t, []string{"migrating", "error: relation exists"}, tail)
}
