package bus

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// TestHealthCoWriters: the health bucket takes the seals of healthd (its
// owner) and of the scheduler (which runs docker and exec checks), says
// which sealed a value, and no other role's; and a reader's rule
// (HealthTrusted) takes each only for the apps whose check that role runs,
// so each takeover attempt, both ways, is no verdict.
func TestHealthCoWriters(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("acme")
	require.NoError(t, err)
	s := testSealers(t, n)
	body := []byte(`{"app":"web","instance":"x","status":"healthy"}`)
	for _, tc := range []struct {
		writer string
		ok     bool
	}{{RoleHealthd, true}, {RoleScheduler, true}, {RoleLBAgent, false}} {
		sealed, err := s[tc.writer].seal(kindKV, n.HealthBucket(), "web.x", opPut, body)
		require.NoError(t, err)
		for _, reader := range Roles() {
			got, _, role, err := s[reader].openBy(kindKV, n.HealthBucket(), "web.x", opPut, sealed, time.Now())
			if !tc.ok {
				require.ErrorIs(t, err, ErrBadSeal, "%s's seal on health, read by %s", tc.writer, reader)
				require.ErrorContains(t, err, "not signed by the healthd or scheduler role")
				continue
			}
			require.NoError(t, err, "%s's seal on health, read by %s", tc.writer, reader)
			require.Equal(t, tc.writer, role)
			require.Equal(t, string(body), string(got))
		}
	}
	// Co-writing is for the health bucket only: the scheduler's seal on a
	// checkers record, or healthd's on an instance, is still a forgery.
	sealed, err := s[RoleScheduler].seal(kindKV, n.CheckersBucket(), "c1", opPut, []byte(`{}`))
	require.NoError(t, err)
	_, _, _, err = s[RoleLBAgent].openBy(kindKV, n.CheckersBucket(), "c1", opPut, sealed, time.Now())
	require.ErrorIs(t, err, ErrBadSeal)
	sealed, err = s[RoleHealthd].seal(kindKV, n.InstancesBucket(), "web.x", opPut, []byte(`{}`))
	require.NoError(t, err)
	_, _, _, err = s[RoleLBAgent].openBy(kindKV, n.InstancesBucket(), "web.x", opPut, sealed, time.Now())
	require.ErrorIs(t, err, ErrBadSeal)

	probed := &msg.App{Name: "web", Health: &spec.Health{Type: spec.HealthHTTP}}
	docker := &msg.App{Name: "web", Health: &spec.Health{Type: spec.HealthDocker}}
	exec := &msg.App{Name: "web", Health: &spec.Health{Type: spec.HealthExec}}
	for _, tc := range []struct {
		name   string
		app    *msg.App
		sealer string
		want   bool
	}{
		{"healthd on an http app", probed, RoleHealthd, true},
		{"the scheduler takes over an http app's health", probed, RoleScheduler, false},
		{"the scheduler on a docker app", docker, RoleScheduler, true},
		{"healthd takes over a docker app's health", docker, RoleHealthd, false},
		{"the scheduler on an exec app", exec, RoleScheduler, true},
		{"healthd takes over an exec app's health", exec, RoleHealthd, false},
		{"no app record: healthd's", nil, RoleHealthd, true},
		{"no app record: not the scheduler's", nil, RoleScheduler, false},
		{"seals not checked", docker, "", true},
	} {
		var h *spec.Health
		if tc.app != nil {
			h = tc.app.Health
		}
		require.Equal(t, tc.want, HealthTrusted(h, tc.sealer), tc.name)
	}
}

// TestCoWriterSealsAboveTheBucket: a writer that shares a bucket seals
// above the highest at it saw there from either role, so a key that
// changes writers is taken at once even when the other's clock is ahead.
func TestCoWriterSealsAboveTheBucket(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("acme")
	require.NoError(t, err)
	s := testSealers(t, n)
	ahead := s[RoleHealthd]
	ahead.now = func() time.Time { return time.Now().Add(time.Minute) }
	v, err := ahead.seal(kindKV, n.HealthBucket(), "web.x", opPut, []byte(`{}`))
	require.NoError(t, err)
	_, seen, role, err := s[RoleScheduler].openBy(kindKV, n.HealthBucket(), "web.x", opPut, v, time.Now())
	require.NoError(t, err)
	require.Equal(t, RoleHealthd, role)
	next, err := s[RoleScheduler].seal(kindKV, n.HealthBucket(), "web.x", opPut, []byte(`{}`))
	require.NoError(t, err)
	_, at, _, err := s[RoleLBAgent].openBy(kindKV, n.HealthBucket(), "web.x", opPut, next, time.Now())
	require.NoError(t, err)
	require.Greater(t, at, seen, "the scheduler seals above healthd's at in the bucket they share")
}

// TestHealthSealersOverNATS: on a server with the roles, healthd and the
// scheduler both write health keys, and a watcher (lbagent's) and a Get
// learn which role sealed each; lbagent's own key cannot write there, and
// a value of healthd's copied onto another key is still refused.
func TestHealthSealersOverNATS(t *testing.T) {
	t.Parallel()
	a := newSealAttack(t)
	n := a.env.n
	ctx := ctxT(t)
	put := func(c *Conn, key, v string) {
		kv, err := c.KV(ctx, n.HealthBucket())
		require.NoError(t, err)
		_, err = kv.Put(ctx, key, []byte(`{"v":"`+v+`"}`))
		require.NoError(t, err)
	}
	put(a.health, "web.a", "probed")
	put(a.sched, "dock.b", "docker")

	var mu sync.Mutex
	sealers := map[string]string{}
	record := func(e Event[string]) {
		mu.Lock()
		defer mu.Unlock()
		sealers[e.Key] = e.Sealer
	}
	w := NewWatcher(a.lb, n.HealthBucket(), decodeString, HandlerFuncs[string]{
		OnSnapshot: func(evs []Event[string], _ uint64) {
			for _, e := range evs {
				record(e)
			}
		},
		OnUpdate: record,
	}, zaptest.NewLogger(t))
	startWatcher(t, w)
	seen := func(key, want string) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return sealers[key] == want }
	}
	require.Eventually(t, seen("web.a", RoleHealthd), 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, seen("dock.b", RoleScheduler), 5*time.Second, 5*time.Millisecond)

	// A takeover attempt writes through, sealed by its writer: the reader's
	// rule (HealthTrusted) is what refuses it, so the sealer must be right.
	put(a.sched, "web.a", "taken")
	require.Eventually(t, seen("web.a", RoleScheduler), 5*time.Second, 5*time.Millisecond)
	require.False(t, HealthTrusted(&spec.Health{Type: spec.HealthHTTP}, RoleScheduler))
	kv, err := a.lb.KV(ctx, n.HealthBucket())
	require.NoError(t, err)
	e, err := kv.Get(ctx, "dock.b")
	require.NoError(t, err)
	require.Equal(t, RoleScheduler, e.Sealer)

	// lbagent's key writes no health at all.
	_, err = kv.Put(ctx, "dock.b", []byte(`{"v":"lb"}`))
	require.ErrorIs(t, err, ErrPermissionDenied)
	// healthd's value copied onto another key is refused (the seal covers
	// the key), whoever's key the reader would take there.
	a.copyKey(t, n.HealthBucket(), "web.a", n.HealthBucket(), "dock.c")
	_, err = kv.Get(ctx, "dock.c")
	require.ErrorIs(t, err, ErrBadSeal)
	require.Eventually(t, func() bool { return w.Dropped() > 0 }, 5*time.Second, 5*time.Millisecond, "the watcher drops the copy")
}
