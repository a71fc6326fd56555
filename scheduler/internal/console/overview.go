package console

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// MaxOverviewRows caps the apps the overview renders: those in trouble
// first, then by name. Past it, the page says how many more there are
// and the filter (?q=, by name) narrows the list on the server. At 1,000
// apps the page is about 250 KB; the cap keeps 10,000 from being 2.5 MB.
const MaxOverviewRows = 2000

// maxEventText bounds the last event's message on the overview (the
// app's page has the whole of it).
const maxEventText = 120

// Row is one app on the overview.
type Row struct {
	Name    string
	Desired int
	Ready   int
	Running int
	// Health is the tally ("2 healthy, 1 unhealthy"), Unhealthy > 0 marks
	// it.
	Health    string
	Unhealthy bool
	Rollout   string
	Cause     string
	// RPS, Errors (5xx %) and P95 are the traffic of the lbagents' last
	// windows; "" when none reported the app lately.
	RPS, Errors, P95 string
	// ErrorsHigh marks a 5xx share of 5 % or more.
	ErrorsHigh bool
	// Event is the last event: its kind, how long ago and its message.
	EventKind, EventAgo, EventText string
	Trouble                        bool
}

type overviewPage struct {
	Base
	Query string
	Apps  []Row
	// Total is how many apps there are; Shown how many match the query,
	// of which Apps holds the first MaxOverviewRows.
	Total, Shown int
}

// overview lists every app from one API call (GET /v1/apps?summary=true:
// the same few queries for 10 apps as for 10,000), those in trouble
// first.
func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	page := overviewPage{Base: base(r, "overview"), Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	page.Live = "refresh"
	if len(page.Query) > 64 {
		page.Query = page.Query[:64]
	}
	var apps []api.AppView
	if err := c.call(r, http.MethodGet, "/v1/apps?summary=true", nil, &apps); err != nil {
		code, m := c.apiMessage(err)
		page.Error = "cannot list the apps: " + m
		c.render(w, code, "overview.html", page)
		return
	}
	page.Total = len(apps)
	now := c.o.Now()
	rows := make([]Row, 0, len(apps))
	for _, a := range apps {
		if page.Query != "" && !strings.Contains(a.Name, strings.ToLower(page.Query)) {
			continue
		}
		rows = append(rows, overviewRow(a, now))
	}
	slices.SortStableFunc(rows, func(a, b Row) int {
		if a.Trouble != b.Trouble {
			if a.Trouble {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	page.Shown = len(rows)
	page.Apps = rows[:min(len(rows), MaxOverviewRows)]
	c.render(w, http.StatusOK, "overview.html", page)
}

// overviewRow is a's line: in trouble when fewer of the desired spec's
// instances are ready than desired, an instance is unhealthy, its
// restart breaker is open, or its rollout failed or was rolled back.
func overviewRow(a api.AppView, now time.Time) Row {
	row := Row{Name: a.Name, Desired: a.DesiredReplicas, Running: a.ObservedReplicas}
	if s := a.Summary; s != nil {
		row.Ready = s.ReadyReplicas
		row.Health = s.Health.String()
		row.Unhealthy = s.Health.Unhealthy > 0
		if e := s.LastEvent; e != nil {
			row.EventKind, row.EventAgo = string(e.Kind), appAge(now, e.At)
			row.EventText = clip(e.Message, maxEventText)
		}
	}
	if a.Rollout != nil {
		row.Rollout, row.Cause = a.Rollout.State, clip(a.Rollout.Cause, maxEventText)
	}
	if t := a.Traffic; t != nil {
		row.RPS = fmt.Sprintf("%.1f", t.RPS)
		row.Errors = fmt.Sprintf("%.1f%%", 100*t.ErrorRate)
		row.ErrorsHigh = t.ErrorRate >= 0.05
		if t.P95MS > 0 {
			row.P95 = fmt.Sprintf("%.0f ms", t.P95MS)
		}
	}
	row.Trouble = row.Ready < row.Desired || row.Unhealthy || a.Breaker != nil ||
		row.Rollout == api.RolloutFailed || row.Rollout == api.RolloutRolledBack
	return row
}

// clip cuts s to n bytes on a character boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
