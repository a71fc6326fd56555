package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// TestDryRunChangesNothing: `scheduler apply --dry-run` of a new image
// on a running app says that a rolling update would replace its
// instances, and changes nothing: the app's row and history in Postgres
// are as they were, and Docker runs the same containers once the leader
// has handled a later change (a scale to the same count, whose
// app_updated event shows the leader got past the dry run).
func TestDryRunChangesNothing(t *testing.T) {
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	s := newStack(t)
	s.startScheduler("sched-a", "--history-keep", "5")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.apply(demoSpec(t, v1, 2, ""))
	var before []string
	require.Eventually(t, func() bool {
		ins := s.instances("demo")
		healthy := 0
		for _, in := range ins {
			if in.State == msg.StateRunning && in.Health == msg.StatusHealthy {
				healthy++
			}
		}
		before = s.containers("demo")
		return healthy == 2 && len(ins) == 2 && len(before) == 2
	}, 60*time.Second, 100*time.Millisecond, "two healthy instances of v1")
	row := func() string {
		return testrig.PSQL(t, s.db, `SELECT a.generation || ' ' || a.updated_at || ' ' || md5(a.spec::text) || ' ' ||
			(SELECT count(*) || ' ' || max(generation) FROM app_history h WHERE h.app = a.name) FROM apps a WHERE a.name = 'demo'`)
	}
	inPostgres := row()

	f := filepath.Join(s.dir, "v2.yaml")
	require.NoError(t, os.WriteFile(f, []byte(demoSpec(t, v2, 2, "")), 0o644))
	out := s.cli("apply", "--dry-run", "-f", f)
	t.Logf("apply --dry-run:\n%s", out)
	require.Contains(t, out, "(dry run, nothing changed): generation 1 → 2: image "+v1+"→"+v2)
	require.Contains(t, out, "-image: "+v1+"\n+image: "+v2+"\n")
	require.Contains(t, out, "  - replace 2 instance(s) by a rolling update (max_surge 1, max_unavailable 0): its containers change\n")
	require.Equal(t, inPostgres, row(), "the dry run wrote nothing to Postgres")

	// A change the leader must handle after anything the dry run could
	// have set off: once it is published, the containers are the same.
	s.cli("scale", "demo", "2")
	require.Eventually(t, func() bool {
		return strings.Contains(s.cli("events", "--app", "demo"), "app demo is at generation 2")
	}, 30*time.Second, 100*time.Millisecond, "the leader handled generation 2")
	after := s.containers("demo")
	slices.Sort(before)
	slices.Sort(after)
	require.Equal(t, before, after, "the dry run replaced no container")
	for _, in := range s.instances("demo") {
		require.EqualValues(t, 1, in.Generation, "instance %s of generation 1 runs on", in.ID)
	}
	history := s.cli("history", "demo")
	require.Regexp(t, `(?m)^2\s+`+v1+`\s+sha256:\S+\s+\S+\s+\S+\s+restart \(same spec\)$`, history, "a scale to the same count reads as the same spec")
	require.NotContains(t, history, v2, "the planned image is nowhere")
}
