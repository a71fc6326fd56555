package console

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
)

// eventsShown is how many events the events page shows: the newest of
// the app (or of every app), before the kind filter. With a kind, it
// asks the API for as many as one call gives (api.MaxEvents), so that a
// rare kind still shows among the frequent ones.
const eventsShown = 200

// EventRow is one event on the events page.
type EventRow struct {
	ID       int64
	At       time.Time
	App      string
	Instance string
	Kind     string
	Actor    string
	Message  string
	// LogTail is the last lines of a failed instance's container, when
	// the API gives them to this token.
	LogTail string
}

// kindOption is an entry of the kind filter.
type kindOption struct {
	Kind     string
	Selected bool
}

type eventsPage struct {
	Base
	App    string
	Kind   string
	Kinds  []kindOption
	Events []EventRow
}

// events shows the newest events, newest first, filtered by ?app= (the
// API's) and ?kind= (here); the page's script adds the live ones that
// pass the same filter.
func (c *console) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page := eventsPage{Base: base(r, "events"), App: strings.TrimSpace(q.Get("app")), Kind: strings.TrimSpace(q.Get("kind"))}
	page.Live = "events"
	kinds := msg.EventKinds()
	for _, k := range kinds {
		page.Kinds = append(page.Kinds, kindOption{Kind: string(k), Selected: string(k) == page.Kind})
	}
	if page.App != "" {
		if err := spec.CheckName(page.App); err != nil {
			page.Error = "app: " + err.Error()
			page.App = ""
			c.render(w, http.StatusBadRequest, "events.html", page)
			return
		}
	}
	if page.Kind != "" && !slices.Contains(kinds, msg.EventKind(page.Kind)) {
		page.Error = fmt.Sprintf("kind: %q is not an event kind: pick one of the list", msg.Truncate(page.Kind, 64))
		page.Kind = ""
		c.render(w, http.StatusBadRequest, "events.html", page)
		return
	}
	page.LiveApp = page.App
	last := eventsShown
	if page.Kind != "" {
		last = api.MaxEvents
	}
	path := "/v1/events?last=" + strconv.Itoa(last)
	if page.App != "" {
		path += "&app=" + page.App
	}
	var evs []api.EventView
	if err := c.call(r, http.MethodGet, path, nil, &evs); err != nil {
		code, text := c.apiMessage(err)
		page.Error = "cannot read the events: " + text
		c.render(w, code, "events.html", page)
		return
	}
	// The API gives the newest oldest first.
	for i := len(evs) - 1; i >= 0 && len(page.Events) < eventsShown; i-- {
		e := evs[i]
		if page.Kind != "" && string(e.Kind) != page.Kind {
			continue
		}
		page.Events = append(page.Events, EventRow{ID: e.ID, At: e.At.UTC(), App: e.App, Instance: e.Instance, Kind: string(e.Kind),
			Actor: e.Actor, Message: e.Message, LogTail: strings.Join(e.LogTail, "\n")})
	}
	c.render(w, http.StatusOK, "events.html", page)
}
