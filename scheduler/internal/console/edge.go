package console

import (
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
)

// The edge page (GET /ui/edge) shows every lbagent as GET /v1/edge does:
// what its nginx serves, how far behind the instances bucket, how it
// changes nginx and how its latest changes went. The lbagents report on
// NATS, so this replica's view is what its API answers.

// EdgeRow is one lbagent on the edge page.
type EdgeRow struct {
	api.AgentView
	// Lag says how far behind: "caught up", "behind by N" or "unknown";
	// Behind is set when it is behind.
	Lag    string
	Behind bool
	Reload *EdgeChange
	Push   *EdgeChange
	// AppErrors are the apps whose newest config its nginx refused, by app.
	AppErrors []EdgeAppError
	// Reported is how long ago it last reported.
	Reported string
	// Trouble: stale, failing, its latest reload or push failed, or an app
	// refused: such rows come first.
	Trouble bool
}

// EdgeChange is an lbagent's latest reload or push.
type EdgeChange struct {
	At       time.Time
	Ago      string
	Took     string
	Revision uint64
	Error    string
}

// EdgeAppError is one app's config that an lbagent's nginx refused; Link
// is set when App is an app name (the page links it).
type EdgeAppError struct {
	App   string
	Link  bool
	Error string
}

type edgePage struct {
	Base
	// Revision is the instances bucket's newest revision; RevisionError
	// why it is unknown.
	Revision      uint64
	RevisionError string
	Read          bool
	Agents        []EdgeRow
}

// edge lists the lbagents, those in trouble first.
func (c *console) edge(w http.ResponseWriter, r *http.Request) {
	page := edgePage{Base: base(r, "edge")}
	page.Live = "refresh"
	var v api.EdgeView
	if err := c.call(r, http.MethodGet, "/v1/edge", nil, &v); err != nil {
		code, text := c.apiMessage(err)
		page.Error = "cannot read the lbagents: " + text
		c.render(w, code, "edge.html", page)
		return
	}
	page.Read, page.Revision, page.RevisionError = true, v.InstancesRevision, v.RevisionError
	now := c.o.Now()
	for _, a := range v.Agents {
		page.Agents = append(page.Agents, edgeRow(a, now))
	}
	slices.SortStableFunc(page.Agents, func(x, y EdgeRow) int {
		if x.Trouble != y.Trouble {
			if x.Trouble {
				return -1
			}
			return 1
		}
		return strings.Compare(x.Node, y.Node)
	})
	c.render(w, http.StatusOK, "edge.html", page)
}

func edgeRow(a api.AgentView, now time.Time) EdgeRow {
	row := EdgeRow{AgentView: a, Reload: edgeChange(a.LastReload, now), Push: edgeChange(a.LastPush, now), Reported: edgeAgo(now, a.UpdatedAt)}
	switch {
	case a.Lag == nil:
		row.Lag = "unknown"
	case *a.Lag == 0:
		row.Lag = "caught up"
	default:
		row.Lag, row.Behind = "behind by "+strconv.FormatUint(*a.Lag, 10), true
	}
	for _, app := range slices.Sorted(maps.Keys(a.Errors)) {
		row.AppErrors = append(row.AppErrors, EdgeAppError{App: app, Link: spec.CheckName(app) == nil, Error: a.Errors[app]})
	}
	row.Trouble = a.Stale || a.LastError != "" || len(a.Errors) > 0 ||
		(row.Reload != nil && row.Reload.Error != "") || (row.Push != nil && row.Push.Error != "")
	return row
}

// edgeChange views a reload or push at now; nil when there was none.
func edgeChange(ch *msg.ConfigChange, now time.Time) *EdgeChange {
	if ch == nil {
		return nil
	}
	return &EdgeChange{At: ch.At.UTC(), Ago: edgeAgo(now, ch.At), Took: edgeMillis(ch.DurationMS), Revision: ch.Revision, Error: ch.Error}
}

// edgeMillis is a duration in milliseconds, to 0.1 ms below 10 ms.
func edgeMillis(ms float64) string {
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
}

// edgeAgo is how long before now t was ("never" when t is zero).
func edgeAgo(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return appAge(now, t) + " ago"
}
