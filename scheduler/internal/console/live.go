package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
)

// Live updates: every replica subscribes once to the events NATS carries
// (what scheduler events --follow reads) and fans them out to its
// browsers as server-sent events. A browser that falls behind is told to
// reload what it shows rather than being waited for: one slow tab never
// holds the others, nor the NATS subscription.

// clientBuffer is how many events a browser may be behind before it is
// told it missed some.
const clientBuffer = 256

// heartbeat is how often an idle stream sends a comment, so that proxies
// and the browser know it lives.
const heartbeat = 15 * time.Second

// streamWrite bounds one write to a browser: a stalled one is cut off.
const streamWrite = 10 * time.Second

// Hub fans events out to the browsers of one replica. Publish is called
// from the NATS subscription; it is safe for concurrent use and never
// blocks.
type Hub struct {
	mu      sync.Mutex
	clients map[*client]struct{}
	missed  uint64
}

type client struct {
	app    string
	events chan *msg.Event
	// changed is set when the app's (or any app's) instances changed
	// without an event: a health the leader recorded.
	changed chan struct{}
	// lagged is set when an event was dropped for this client.
	lagged chan struct{}
}

// NewHub returns a hub with no browsers.
func NewHub() *Hub { return &Hub{clients: map[*client]struct{}{}} }

// Publish sends ev to every browser that follows its app (or every app).
func (h *Hub) Publish(ev *msg.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		if c.app != "" && c.app != ev.App {
			continue
		}
		select {
		case c.events <- ev:
		default:
			h.missed++
			select {
			case c.lagged <- struct{}{}:
			default:
			}
		}
	}
}

// Changed tells every browser that follows app (or every app) that its
// instances changed without an event (the leader recorded a health):
// pages that show it fetch themselves again. Pings of one browser
// coalesce until it takes them.
func (h *Hub) Changed(app string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		if c.app != "" && c.app != app {
			continue
		}
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

// Missed is how many events were dropped for browsers that fell behind.
func (h *Hub) Missed() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.missed
}

// Clients is how many browsers follow the hub now.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

func (h *Hub) join(app string) *client {
	c := &client{app: app, events: make(chan *msg.Event, clientBuffer), lagged: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	h.mu.Lock()
	h.clients[c] = struct{}{}
	h.mu.Unlock()
	return c
}

func (h *Hub) leave(c *client) {
	h.mu.Lock()
	delete(h.clients, c)
	h.mu.Unlock()
}

// liveEvent is an event as the browser gets it: text only, which the
// page's script sets as text, never as markup.
type liveEvent struct {
	ID       string            `json:"id"`
	App      string            `json:"app"`
	Instance string            `json:"instance,omitempty"`
	Kind     string            `json:"kind"`
	Message  string            `json:"message"`
	Actor    string            `json:"actor,omitempty"`
	At       time.Time         `json:"at"`
	Details  map[string]string `json:"details,omitempty"`
}

// live streams the events of ?app= (or of every app) as server-sent
// events. A browser that reconnects with Last-Event-ID first gets what
// it missed, from the API (Postgres), so a reconnect loses nothing.
func (c *console) live(w http.ResponseWriter, r *http.Request) {
	if c.o.Live == nil {
		http.Error(w, "live updates are off on this replica", http.StatusNotFound)
		return
	}
	app := r.URL.Query().Get("app")
	if app != "" {
		if err := spec.CheckName(app); err != nil {
			http.Error(w, "app: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	cl := c.o.Live.join(app)
	defer c.o.Live.leave(cl)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWrite))
		if _, err := fmt.Fprint(w, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// retry: how soon the browser reconnects after the stream breaks.
	if !write("retry: 1000\n: berth live events\n\n") {
		return
	}
	if last, err := strconv.ParseInt(r.Header.Get("Last-Event-ID"), 10, 64); err == nil && last >= 0 {
		if !c.replay(w, r, write, app, last) {
			return
		}
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-cl.lagged:
			// Some events were dropped: the page reloads what it shows.
			if !write("event: missed\ndata: {}\n\n") {
				return
			}
		case <-cl.changed:
			if !write("event: change\ndata: {}\n\n") {
				return
			}
		case ev := <-cl.events:
			if !write(frame(liveEvent{ID: ev.ID, App: ev.App, Instance: ev.Instance, Kind: string(ev.Kind), Message: ev.Message, Actor: ev.Actor, At: ev.At, Details: ev.Details})) {
				return
			}
		case <-tick.C:
			if !write(": ping\n\n") {
				return
			}
		}
	}
}

// replay sends the events after id from the API: up to api.MaxEvents,
// past which the browser is told it missed some.
func (c *console) replay(w http.ResponseWriter, r *http.Request, write func(string) bool, app string, id int64) bool {
	path := fmt.Sprintf("/v1/events?since=%d", id)
	if app != "" {
		path += "&app=" + app
	}
	var evs []api.EventView
	if err := c.call(r, http.MethodGet, path, nil, &evs); err != nil {
		c.logger.Info("cannot replay the events a browser missed", zap.Error(err))
		return write("event: missed\ndata: {}\n\n")
	}
	for _, ev := range evs {
		if !write(frame(liveEvent{ID: strconv.FormatInt(ev.ID, 10), App: ev.App, Instance: ev.Instance, Kind: string(ev.Kind), Message: ev.Message,
			Actor: ev.Actor, At: ev.At, Details: ev.Details})) {
			return false
		}
	}
	if len(evs) == api.MaxEvents {
		return write("event: missed\ndata: {}\n\n")
	}
	return true
}

// frame is one server-sent event: its id (for Last-Event-ID) and its
// JSON, which holds no newline.
func frame(ev liveEvent) string {
	b, _ := json.Marshal(ev)
	id := ""
	if _, err := strconv.ParseInt(ev.ID, 10, 64); err == nil {
		id = "id: " + ev.ID + "\n"
	}
	return id + "event: event\ndata: " + string(b) + "\n\n"
}
