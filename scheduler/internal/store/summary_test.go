package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// TestEventsByApp: RolloutEventsByApp reads, of every app that is not
// deleted, its events of the kinds asked at its current generation,
// newest first, and skips earlier generations', other kinds and deleted
// apps; LastEventByApp each app's newest event, by time and then id, as
// LastEvents orders one app's.
func TestEventsByApp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	for _, src := range []string{
		"name: web\nimage: web:1\nport: 8080\nreplicas: 3\n",
		"name: web\nimage: web:2\nport: 8080\nreplicas: 3\n",
		"name: web\nimage: web:3\nport: 8080\nreplicas: 3\n", // generation 3
		"name: api\nimage: api:1\nport: 8080\n",
		"name: idle\nimage: idle:1\nport: 8080\n",
		"name: gone\nimage: gone:1\nport: 8080\n",
	} {
		_, _, err := s.Apply(ctx, load(t, src), nil)
		require.NoError(t, err)
	}
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	ev := func(app string, kind msg.EventKind, gen int) Event {
		return Event{App: app, Kind: kind, Message: fmt.Sprintf("%s %s %d", app, kind, gen), Details: map[string]string{"generation": fmt.Sprint(gen)}}
	}
	ids := map[string]int64{}
	// One transaction each, so that time orders them as id does.
	for _, e := range []Event{
		ev("web", msg.EventRolloutFailed, 2),
		ev("web", msg.EventAppFailed, 2),
		ev("web", msg.EventReleaseStarted, 3),
		ev("web", msg.EventRolloutRolledBack, 3),
		ev("web", msg.EventAppFailed, 2), // an earlier generation's, newer
		ev("web", msg.EventInstanceExited, 3),
		ev("api", msg.EventReleaseStarted, 1),
		ev("api", msg.EventInstanceStarted, 1),
		ev("gone", msg.EventRolloutFailed, 1),
	} {
		require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
			id, err := tx.AddEvent(ctx, e)
			ids[e.Message] = id
			return err
		}))
	}
	require.NoError(t, s.Delete(ctx, "gone"))
	// Written later with an earlier time (a slow transaction's): time
	// orders it before web's newest, not its id.
	_, err = s.pool.Exec(ctx, `INSERT INTO events (app, kind, message, details, at) VALUES
		('web', 'rollout_failed', 'late', '{"generation": "3"}', now() - interval '1 hour')`)
	require.NoError(t, err)

	kinds := []msg.EventKind{msg.EventRolloutRolledBack, msg.EventRolloutFailed, msg.EventAppFailed, msg.EventReleaseStarted}
	messages := func(evs []Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Message)
		}
		return out
	}
	all, err := s.RolloutEventsByApp(ctx, "", kinds, 4)
	require.NoError(t, err)
	require.Len(t, all, 2, "idle has none, gone is deleted")
	require.Equal(t, []string{"web rollout_rolled_back 3", "web release_started 3", "late"}, messages(all["web"]))
	require.Equal(t, "3", all["web"][0].Details["generation"])
	require.Equal(t, ids["web rollout_rolled_back 3"], all["web"][0].ID)
	require.Equal(t, []string{"api release_started 1"}, messages(all["api"]))

	one, err := s.RolloutEventsByApp(ctx, "api", kinds, 4)
	require.NoError(t, err)
	require.Equal(t, map[string][]Event{"api": all["api"]}, one)

	// Only the newest perKind of each kind are read: web's newest
	// rollout_failed is "late", at generation 3.
	capped, err := s.RolloutEventsByApp(ctx, "web", []msg.EventKind{msg.EventAppFailed}, 1)
	require.NoError(t, err)
	require.Empty(t, capped, "web's newest app_failed is generation 2's")

	last, err := s.LastEventByApp(ctx, "")
	require.NoError(t, err)
	require.Len(t, last, 2)
	require.Equal(t, "web instance_exited 3", last["web"].Message)
	require.Equal(t, ids["web instance_exited 3"], last["web"].ID)
	require.Equal(t, msg.EventInstanceExited, last["web"].Kind)
	require.Equal(t, "api instance_started 1", last["api"].Message)
	newest, err := s.LastEvents(ctx, "web", 1)
	require.NoError(t, err)
	require.Equal(t, newest[0].ID, last["web"].ID, "the same newest as LastEvents")
	one2, err := s.LastEventByApp(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, map[string]Event{"web": last["web"]}, one2)
}
