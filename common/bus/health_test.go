package bus

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
