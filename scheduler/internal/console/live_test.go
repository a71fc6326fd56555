package console

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// stream opens /ui/live as c (signed in), with lastID as Last-Event-ID
// unless empty, and returns its frames as they come.
func (r *rig) stream(ctx context.Context, c *http.Client, query, lastID string) <-chan string {
	r.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/ui/live"+query, nil)
	require.NoError(r.t, err)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.Do(req)
	require.NoError(r.t, err)
	require.Equal(r.t, http.StatusOK, resp.StatusCode)
	require.Equal(r.t, "text/event-stream", resp.Header.Get("Content-Type"))
	frames := make(chan string, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(frames)
		sc := bufio.NewScanner(resp.Body)
		var b strings.Builder
		for sc.Scan() {
			if sc.Text() == "" {
				frames <- b.String()
				b.Reset()
				continue
			}
			b.WriteString(sc.Text() + "\n")
		}
	}()
	return frames
}

// next returns the next frame that carries an event (not a comment).
func next(t *testing.T, frames <-chan string) string {
	t.Helper()
	for f := range frames {
		if strings.Contains(f, "event: ") {
			return f
		}
	}
	t.Fatal("the stream ended")
	return ""
}

// waitClients waits until the hub has n browsers.
func waitClients(t *testing.T, h *Hub, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return h.Clients() == n }, 10*time.Second, time.Millisecond)
}

func TestLiveStreamsEventsAsText(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	r.login(c, r.token("viewer", auth.Read))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	all := r.stream(ctx, c, "", "")
	onlyWeb := r.stream(ctx, c, "?app=web", "")
	waitClients(t, r.live, 2)

	r.live.Publish(&msg.Event{ID: "7", App: "api", Kind: msg.EventInstanceStarted, Message: `<script>alert(1)</script>`, At: time.Now()})
	r.live.Publish(&msg.Event{ID: "8", App: "web", Kind: msg.EventInstanceStopped, Message: "stopped", At: time.Now()})
	f := next(t, all)
	require.Contains(t, f, "id: 7\nevent: event\ndata: ")
	require.Contains(t, f, `"message":"\u003cscript\u003ealert(1)\u003c/script\u003e"`, "JSON escapes markup; the script sets it as text")
	require.Contains(t, next(t, all), `"app":"web"`)
	f = next(t, onlyWeb)
	require.Contains(t, f, "id: 8\n", "?app= gets that app's events alone")

	// Without a session there is no stream.
	resp, err := r.browser().Get(r.url + "/ui/live")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	// A hostile app filter is refused.
	resp, err = c.Get(r.url + "/ui/live?app=%3Cx%3E")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// A browser that falls behind is told it missed events, and the others
// are not held up by it.
func TestLiveSlowBrowserIsToldItMissedEvents(t *testing.T) {
	t.Parallel()
	h := NewHub()
	slow, fast := h.join(""), h.join("")
	for range clientBuffer + 10 {
		h.Publish(&msg.Event{ID: "x", App: "web", Kind: msg.EventInstanceStarted, Message: "m"})
		<-fast.events
	}
	require.Len(t, slow.events, clientBuffer)
	select {
	case <-slow.lagged:
	default:
		t.Fatal("the slow browser is told it lagged")
	}
	require.Empty(t, fast.lagged)
	h.leave(slow)
	h.leave(fast)
	require.Zero(t, h.Clients())
}

// A browser that reconnects with Last-Event-ID gets what it missed from
// Postgres first.
func TestLiveReplaysWhatAReconnectMissed(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	l, _, err := r.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	var ids []int64
	require.NoError(t, r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, m := range []string{"one", "two", "three"} {
			id, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: msg.EventInstanceStarted, Message: m})
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	}))
	c := r.browser()
	r.login(c, admin)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	frames := r.stream(sctx, c, "", strconv.FormatInt(ids[0], 10))
	require.Contains(t, next(t, frames), `"message":"two"`)
	require.Contains(t, next(t, frames), `"message":"three"`)
}

// A health the leader recorded reaches the browsers that follow its app,
// or every app, as one "change" however many came meanwhile.
func TestLiveChangePings(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	r.login(c, admin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	all := r.stream(ctx, c, "", "")
	web := r.stream(ctx, c, "?app=web", "")
	api := r.stream(ctx, c, "?app=api", "")
	waitClients(t, r.live, 3)
	r.live.Changed("web")
	require.Equal(t, "event: change\ndata: {}\n", next(t, all))
	require.Equal(t, "event: change\ndata: {}\n", next(t, web))
	r.live.Publish(&msg.Event{ID: "9", App: "api", Kind: msg.EventInstanceStarted, Message: "m"})
	require.Contains(t, next(t, api), "id: 9\n", "api's stream got no change of web's")

	h := NewHub()
	cl := h.join("")
	h.Changed("web")
	h.Changed("api")
	require.Len(t, cl.changed, 1, "pings coalesce")
}
