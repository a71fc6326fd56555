package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/logs"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// fakeFleet reads logs as a fleet of two hosts would, h2 down; a follow
// streams one more line, then waits for the client to go away and says
// so on gone.
type fakeFleet struct {
	gone chan struct{}
}

func (f *fakeFleet) Logs(ctx context.Context, host, id string, o docker.LogOptions, emit func(docker.LogLine) error) error {
	if host == "h2" {
		return fmt.Errorf("%w: host %s is down", fleet.ErrHostDown, host)
	}
	t0 := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	for i := range 3 {
		if err := emit(docker.LogLine{Time: t0.Add(time.Duration(i) * time.Second), Text: fmt.Sprintf("%s says %d", id, i)}); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	if err := emit(docker.LogLine{Time: t0.Add(time.Minute), Text: "following"}); err != nil {
		return err
	}
	<-ctx.Done()
	close(f.gone)
	return ctx.Err()
}

type fixedInstances []store.Instance

func (f fixedInstances) Instances(context.Context, string) ([]store.Instance, error) { return f, nil }

func TestLogsEndpoint(t *testing.T) {
	t.Parallel()
	ff := &fakeFleet{gone: make(chan struct{})}
	insts := fixedInstances{{ID: "aaaa1111", App: "web", Host: "h1", ContainerID: "ca", State: msg.StateRunning},
		{ID: "bbbb2222", App: "web", Host: "h2", ContainerID: "cb", State: msg.StateRunning}}
	c := newAPIWith(t, Options{Logs: &logs.Reader{Instances: insts, Engines: ff}})
	code, _, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)

	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(c.url + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}
	resp, body := get("/v1/apps/web/logs")
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "h1/aaaa1111 | ca says 0\nh1/aaaa1111 | ca says 1\nh1/aaaa1111 | ca says 2\nh2/bbbb2222 | (host h2 is down: no logs)\n", body)

	_, body = get("/v1/apps/web/logs?tail=1&timestamps=true&instance=aaaa1111")
	require.Equal(t, "2026-12-06T09:00:00Z h1/aaaa1111 | ca says 0\n2026-12-06T09:00:01Z h1/aaaa1111 | ca says 1\n2026-12-06T09:00:02Z h1/aaaa1111 | ca says 2\n", body,
		"the fake ignores tail: what reaches it is checked in package logs")

	code, obj, _ := c.do("GET", "/v1/apps/web/logs?tail=1000000&since=soon", "")
	require.Equal(t, 400, code)
	require.Equal(t, "invalid logs request", obj["error"])
	fields := obj["fields"].([]any)
	require.Len(t, fields, 2)
	require.Equal(t, "since", fields[0].(map[string]any)["path"])
	require.Equal(t, "tail", fields[1].(map[string]any)["path"])
	require.Contains(t, fields[1].(map[string]any)["message"], "from 0 to 100000")

	code, obj, _ = c.do("GET", "/v1/apps/web/logs?instance=zzzz", "")
	require.Equal(t, 400, code, "%v", obj)
	require.Equal(t, "instance", obj["fields"].([]any)[0].(map[string]any)["path"])

	code, _, _ = c.do("GET", "/v1/apps/nosuch/logs", "")
	require.Equal(t, 404, code)

	// A follow streams as lines come, and ends when the client goes away.
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", c.url+"/v1/apps/web/logs?follow=true&instance=aaaa1111", nil)
	require.NoError(t, err)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for len(got) < 4 && sc.Scan() {
		got = append(got, sc.Text())
	}
	require.Equal(t, []string{"h1/aaaa1111 | ca says 0", "h1/aaaa1111 | ca says 1", "h1/aaaa1111 | ca says 2", "h1/aaaa1111 | following"}, got,
		"flushed before the stream ends")
	cancel()
	select {
	case <-ff.gone:
	case <-time.After(30 * time.Second):
		t.Fatal("the follow did not end when its client went away")
	}
}

// tickingFleet writes a line with the wall time every 20 ms until the
// client goes away.
type tickingFleet struct{}

func (tickingFleet) Logs(ctx context.Context, _, _ string, _ docker.LogOptions, emit func(docker.LogLine) error) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if err := emit(docker.LogLine{Time: now, Text: now.UTC().Format(time.RFC3339Nano)}); err != nil {
				return err
			}
		}
	}
}

// TestLogsFollowOutlivesTheServerTimeouts: a follow goes on past the
// server's ReadTimeout and WriteTimeout (the scheduler's are 30 s).
func TestLogsFollowOutlivesTheServerTimeouts(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insts := fixedInstances{{ID: "aaaa1111", App: "web", ContainerID: "ca", State: msg.StateRunning}}
	srv := httptest.NewUnstartedServer(New(deps(st), Options{Open: true, Logs: &logs.Reader{Instances: insts, Engines: tickingFleet{}}}, zaptest.NewLogger(t)))
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	c := &client{t: t, url: srv.URL, st: st}
	code, _, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)

	resp, err := http.Get(srv.URL + "/v1/apps/web/logs?follow=true")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var first time.Time
	for sc.Scan() {
		_, stamp, _ := strings.Cut(sc.Text(), " | ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		require.NoError(t, err)
		if first.IsZero() {
			first = at
		}
		if at.Sub(first) > time.Second { // five times the timeouts
			return
		}
	}
	t.Fatalf("the follow ended %s after its first line: %v", time.Since(first), sc.Err())
}
