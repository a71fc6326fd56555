package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// TestLatestAndLastEvents: LatestEvents is an app's newest events of the
// given kinds, newest first by time and then id, whichever kind they are
// and however its limit cuts across kinds; LastEvents its newest, oldest
// first. Both are checked against the app's whole history read by id.
func TestLatestAndLastEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	kinds := []msg.EventKind{msg.EventInstanceFailed, msg.EventInstanceExited, msg.EventRolloutFailed, msg.EventInstanceStarted}
	// Events of one transaction share their time: the id orders them.
	for i := range 12 {
		require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
			for j := range 1 + i%3 {
				for _, app := range []string{"web", "api"} {
					if _, err := tx.AddEvent(ctx, Event{App: app, Kind: kinds[(i+j)%len(kinds)], Message: "m"}); err != nil {
						return err
					}
				}
			}
			return nil
		}))
	}
	// Rows written later with an earlier time (a slow transaction's): time
	// orders them, not id.
	_, err = s.pool.Exec(ctx, `INSERT INTO events (app, kind, message, at) VALUES
		('web', 'instance_failed', 'late', now() - interval '1 hour'),
		('web', 'rollout_failed', 'late', now() - interval '2 hours'),
		('web', 'app_failed', 'late', now() + interval '1 hour')`)
	require.NoError(t, err)

	all, err := s.Events(ctx, "web", 0, 1000)
	require.NoError(t, err)
	newest := func(of []msg.EventKind, limit int) []int64 {
		evs := slices.Clone(all)
		slices.SortFunc(evs, func(a, b Event) int {
			if c := b.At.Compare(a.At); c != 0 {
				return c
			}
			return int(b.ID - a.ID)
		})
		var ids []int64
		for _, e := range evs {
			if len(ids) < limit && (of == nil || slices.Contains(of, e.Kind)) {
				ids = append(ids, e.ID)
			}
		}
		return ids
	}
	idsOf := func(evs []Event) []int64 {
		ids := []int64{}
		for _, e := range evs {
			require.Equal(t, "web", e.App)
			ids = append(ids, e.ID)
		}
		return ids
	}
	for _, c := range []struct {
		kinds []msg.EventKind
		limit int
	}{
		{[]msg.EventKind{msg.EventInstanceFailed, msg.EventRolloutFailed}, 100},
		{[]msg.EventKind{msg.EventInstanceFailed, msg.EventRolloutFailed}, 3},
		{[]msg.EventKind{msg.EventInstanceFailed, msg.EventInstanceFailed, msg.EventInstanceExited}, 5},
		{kinds, 7},
		{append(slices.Clone(kinds), msg.EventAppFailed), 1},
		{[]msg.EventKind{msg.EventCertificateFailed}, 10},
		{nil, 10},
	} {
		got, err := s.LatestEvents(ctx, "web", c.kinds, c.limit)
		require.NoError(t, err)
		want := newest(c.kinds, c.limit)
		if c.kinds == nil {
			want = []int64{}
		}
		if want == nil {
			want = []int64{}
		}
		require.Equal(t, want, idsOf(got), "kinds %v, limit %d", c.kinds, c.limit)
	}

	last, err := s.LastEvents(ctx, "web", 5)
	require.NoError(t, err)
	want := newest(nil, 5)
	slices.Sort(want)
	require.Equal(t, want, idsOf(last), "the newest 5 by time, oldest first")
}
