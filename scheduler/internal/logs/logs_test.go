package logs

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/store"
)

var t0 = time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// fakeEngines holds each container's lines; a follow waits for more on
// the container's channel until ctx ends.
type fakeEngines struct {
	mu    sync.Mutex
	lines map[string][]docker.LogLine
	more  map[string]chan docker.LogLine
	down  map[string]bool
	calls []docker.LogOptions
}

func newEngines() *fakeEngines {
	return &fakeEngines{lines: map[string][]docker.LogLine{}, more: map[string]chan docker.LogLine{}, down: map[string]bool{}}
}

func (e *fakeEngines) add(id string, ls ...docker.LogLine) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lines[id] = append(e.lines[id], ls...)
	if e.more[id] == nil {
		e.more[id] = make(chan docker.LogLine, 16)
	}
}

func (e *fakeEngines) setDown(host string, down bool) {
	e.mu.Lock()
	e.down[host] = down
	e.mu.Unlock()
}

func (e *fakeEngines) Logs(ctx context.Context, host, id string, o docker.LogOptions, emit func(docker.LogLine) error) error {
	e.mu.Lock()
	e.calls = append(e.calls, o)
	if e.down[host] {
		e.mu.Unlock()
		return fmt.Errorf("%w: host %s is down", fleet.ErrHostDown, host)
	}
	ls, ok := e.lines[id]
	more := e.more[id]
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("docker logs %s: %w", id, docker.ErrNotFound)
	}
	var kept []docker.LogLine
	for _, l := range ls {
		if o.Since.IsZero() || !l.Time.Before(o.Since) {
			kept = append(kept, l)
		}
	}
	if o.Tail >= 0 && len(kept) > o.Tail {
		kept = kept[len(kept)-o.Tail:]
	}
	for _, l := range kept {
		if err := emit(l); err != nil {
			return err
		}
	}
	for o.Follow {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case l := <-more:
			if err := emit(l); err != nil {
				return err
			}
		}
	}
	return nil
}

type fakeInstances struct {
	mu    sync.Mutex
	list  []store.Instance
	polls int
}

func (f *fakeInstances) Instances(context.Context, string) ([]store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	return append([]store.Instance(nil), f.list...), nil
}

func (f *fakeInstances) add(i store.Instance) {
	f.mu.Lock()
	f.list = append(f.list, i)
	f.mu.Unlock()
}

func (f *fakeInstances) pollCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.polls
}

func inst(id, host string) store.Instance {
	return store.Instance{ID: id, App: "web", Host: host, ContainerID: "c-" + id, State: msg.StateRunning}
}

func line(s int, text string) docker.LogLine { return docker.LogLine{Time: at(s), Text: text} }

// syncBuffer is what a stream writes to, read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func stream(t *testing.T, r *Reader, req Request) string {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, r.Stream(context.Background(), "web", req, &out, func() error { return nil }))
	return out.String()
}

func TestParseQuery(t *testing.T) {
	t.Parallel()
	now := t0
	for _, tt := range []struct {
		name, query string
		want        Request
		errs        []string
	}{
		{"defaults", "", Request{Tail: -1}, nil},
		{"everything", "instance=ab12cd34&follow=true&since=10m&tail=50&timestamps=1", Request{Instance: "ab12cd34", Follow: true, Since: now.Add(-10 * time.Minute), Tail: 50, Timestamps: true}, nil},
		{"bare flags", "follow&timestamps", Request{Follow: true, Timestamps: true, Tail: -1}, nil},
		{"rfc3339 since, tail all", "since=2026-12-06T08:00:00Z&tail=all", Request{Since: time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC), Tail: -1}, nil},
		{"bad tail", "tail=100001", Request{}, []string{`tail: "100001" must be a whole number of lines from 0 to 100000, or all`}},
		{"negative tail", "tail=-3", Request{}, []string{`tail: "-3" must be a whole number of lines from 0 to 100000, or all`}},
		{"bad since", "since=yesterday", Request{}, []string{`since: "yesterday" must be a Go duration back from now (such as 10m or 1h30m) or an RFC 3339 time`}},
		{"negative since", "since=-5m", Request{}, []string{`since: "-5m" must be a duration back from now`}},
		{"bad flag", "follow=maybe", Request{}, []string{`follow: "maybe" must be true or false`}},
		{"bad instance", "instance=../etc", Request{}, []string{`instance: "../etc" is not an instance id`}},
		{"unknown and repeated", "lines=5&tail=1&tail=2", Request{}, []string{`lines: is not a parameter of logs (allowed: follow, instance, since, tail, timestamps)`, `tail: is given 2 times`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q, err := url.ParseQuery(tt.query)
			require.NoError(t, err)
			got, err := ParseQuery(q, now)
			if tt.errs == nil {
				require.NoError(t, err)
				require.Equal(t, tt.want, got)
				back, err := ParseQuery(got.Query(), now)
				require.NoError(t, err)
				require.Equal(t, got, back, "Query is what ParseQuery reads")
				return
			}
			require.Error(t, err)
			var es spec.Errors
			require.ErrorAs(t, err, &es)
			for _, want := range tt.errs {
				require.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestMergeInTimeOrder(t *testing.T) {
	t.Parallel()
	src := func(ls ...Line) <-chan Line {
		ch := make(chan Line, len(ls))
		for _, l := range ls {
			ch <- l
		}
		close(ch)
		return ch
	}
	l := func(s int, text string) Line { return Line{Time: at(s), Text: text} }
	var got []string
	err := Merge([]<-chan Line{
		src(l(1, "a1"), l(4, "a4"), l(4, "a4b")),
		src(),
		src(l(0, "b0"), l(4, "b4"), l(9, "b9")),
		src(l(2, "c2")),
	}, func(l Line) error { got = append(got, l.Text); return nil })
	require.NoError(t, err)
	require.Equal(t, []string{"b0", "a1", "c2", "a4", "a4b", "b4", "b9"}, got, "by time; a tie goes to the earlier source")
}

func TestStreamMergesPrefixesAndStamps(t *testing.T) {
	t.Parallel()
	e := newEngines()
	e.add("c-aaaa", line(1, "GET / 200"), line(3, "GET /x 404"))
	e.add("c-bbbb", line(2, "started"), line(4, "GET / 200"))
	one := &fakeInstances{list: []store.Instance{inst("aaaa", "h1"), inst("bbbb", "h1")}}
	r := &Reader{Instances: one, Engines: e}
	require.Equal(t, "aaaa | GET / 200\nbbbb | started\naaaa | GET /x 404\nbbbb | GET / 200\n", stream(t, r, Request{Tail: -1}),
		"one host: instance ids, timestamps stripped")
	require.Equal(t, "2026-12-06T09:00:03Z aaaa | GET /x 404\n2026-12-06T09:00:04Z bbbb | GET / 200\n",
		stream(t, r, Request{Tail: 1, Timestamps: true}), "tail is per instance, merged; --timestamps keeps them")
	require.Equal(t, "bbbb | started\nbbbb | GET / 200\n", stream(t, r, Request{Instance: "bbbb", Tail: -1}))
	require.Equal(t, "aaaa | GET /x 404\nbbbb | GET / 200\n", stream(t, r, Request{Since: at(3), Tail: -1}))

	two := &fakeInstances{list: []store.Instance{inst("aaaa", "h1"), inst("bbbb", "h2")}}
	r = &Reader{Instances: two, Engines: e}
	require.Equal(t, "h1/aaaa | GET / 200\nh2/bbbb | started\nh1/aaaa | GET /x 404\nh2/bbbb | GET / 200\n", stream(t, r, Request{Tail: -1}),
		"several hosts: host/instance")
}

func TestStreamHostDownIsOneLine(t *testing.T) {
	t.Parallel()
	e := newEngines()
	e.add("c-aaaa", line(1, "one"), line(2, "two"))
	e.add("c-bbbb", line(1, "unseen"))
	e.setDown("h2", true)
	r := &Reader{Instances: &fakeInstances{list: []store.Instance{inst("aaaa", "h1"), inst("bbbb", "h2"), inst("gone", "h1")}}, Engines: e,
		Now: func() time.Time { return at(100) }}
	require.Equal(t, "h1/aaaa | one\nh1/aaaa | two\nh2/bbbb | (host h2 is down: no logs)\nh1/gone | (its container is gone: no logs)\n",
		stream(t, r, Request{Tail: -1}))
}

func TestStreamCaps(t *testing.T) {
	t.Parallel()
	e := newEngines()
	for i := range 20 {
		e.add("c-aaaa", line(i, fmt.Sprintf("line %02d", i)))
	}
	ins := &fakeInstances{list: []store.Instance{inst("aaaa", "")}}
	out := stream(t, &Reader{Instances: ins, Engines: e, MaxLines: 5}, Request{Tail: -1})
	require.Equal(t, "aaaa | line 00\naaaa | line 01\naaaa | line 02\naaaa | line 03\naaaa | line 04\n"+
		"(stopped after 5 lines, 75 bytes: the cap of a read without --follow; narrow it with --since, --tail or --instance)\n", out)
	out = stream(t, &Reader{Instances: ins, Engines: e, MaxBytes: 40}, Request{Tail: -1})
	require.True(t, strings.HasPrefix(out, "aaaa | line 00\naaaa | line 01\n(stopped after 2 lines, 30 bytes"), out)
}

func TestStreamUnknownInstance(t *testing.T) {
	t.Parallel()
	r := &Reader{Instances: &fakeInstances{list: []store.Instance{inst("aaaa", "")}}, Engines: newEngines()}
	err := r.Stream(context.Background(), "web", Request{Instance: "zzzz"}, &bytes.Buffer{}, func() error { return nil })
	var es spec.Errors
	require.ErrorAs(t, err, &es)
	require.Equal(t, "instance", es[0].Path)
	require.Contains(t, es[0].Message, `"zzzz" is not an instance of web`)
}

func TestFollowAttachesNewInstancesAndNotesOnce(t *testing.T) {
	t.Parallel()
	e := newEngines()
	e.add("c-aaaa", line(1, "old"), line(2, "recent"))
	e.add("c-bbbb", line(3, "b started"))
	e.add("c-cccc", line(3, "never read"))
	e.setDown("h2", true)
	ins := &fakeInstances{list: []store.Instance{inst("aaaa", "h1"), inst("cccc", "h2")}}
	r := &Reader{Instances: ins, Engines: e, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- r.Stream(ctx, "web", Request{Follow: true, Tail: 1}, &out, func() error { return nil })
	}()
	has := func(s string) func() bool { return func() bool { return strings.Contains(out.String(), s) } }

	require.Eventually(t, has("h1/aaaa | recent\n"), 10*time.Second, time.Millisecond, "the tail of a running instance")
	require.Eventually(t, has("h2/cccc | (host h2 is down: no logs)\n"), 10*time.Second, time.Millisecond)
	e.more["c-aaaa"] <- line(5, "new line")
	require.Eventually(t, has("h1/aaaa | new line\n"), 10*time.Second, time.Millisecond, "followed")

	ins.add(inst("bbbb", "h1")) // a rollout starts it
	require.Eventually(t, has("h1/bbbb | b started\n"), 10*time.Second, time.Millisecond, "a new instance is attached at the next poll")
	polls := ins.pollCount()
	require.Eventually(t, func() bool { return ins.pollCount() >= polls+5 }, 10*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done, "the stream ends when the client goes away")
	got := out.String()
	require.NotContains(t, got, "old", "--tail 1 of the instances there at the start")
	require.Equal(t, 1, strings.Count(got, "(host h2 is down: no logs)"), "a down host is said once, not at every poll:\n%s", got)
	require.NotContains(t, got, "never read")
}

func TestFollowReattachesWhenTheHostIsBack(t *testing.T) {
	t.Parallel()
	e := newEngines()
	e.add("c-cccc", line(3, "back again"))
	e.setDown("h2", true)
	ins := &fakeInstances{list: []store.Instance{inst("cccc", "h2")}}
	r := &Reader{Instances: ins, Engines: e, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	go func() { _ = r.Stream(ctx, "web", Request{Follow: true, Tail: -1}, &out, func() error { return nil }) }()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "(host h2 is down: no logs)") }, 10*time.Second, time.Millisecond)
	e.setDown("h2", false)
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "cccc | back again\n") }, 10*time.Second, time.Millisecond)
}
