package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
)

func TestLineWriter(t *testing.T) {
	t.Parallel()
	var got []LogLine
	w := &lineWriter{emit: func(l LogLine) error { got = append(got, l); return nil }, stderr: true}
	stamp := "2026-12-06T09:00:00.123456789Z "
	long := strings.Repeat("y", MaxLogLine+10)
	for _, chunk := range []string{stamp + "one\n" + stamp + "tw", "o\n", stamp + long + "\n", "no stamp\n", stamp + "last"} {
		_, err := w.Write([]byte(chunk))
		require.NoError(t, err)
	}
	require.NoError(t, w.flush())
	when := time.Date(2026, 12, 6, 9, 0, 0, 123456789, time.UTC)
	require.Len(t, got, 5)
	require.Equal(t, LogLine{Time: when, Stderr: true, Text: "one"}, got[0])
	require.Equal(t, LogLine{Time: when, Stderr: true, Text: "two"}, got[1], "a line split across writes is one line")
	require.Equal(t, when, got[2].Time)
	require.Len(t, got[2].Text, MaxLogLine, "a long line is cut at MaxLogLine")
	require.Equal(t, LogLine{Stderr: true, Text: "no stamp"}, got[3])
	require.Equal(t, LogLine{Time: when, Stderr: true, Text: "last"}, got[4], "the last line needs no newline")

	// Docker's pieces of a long line each carry its timestamp.
	got = nil
	piece := strings.Repeat("p", 16384)
	for _, frame := range []string{stamp + piece, stamp + piece, stamp + "end\n", stamp + "2026 is a year\n"} {
		_, err := w.Write([]byte(frame))
		require.NoError(t, err)
	}
	require.Len(t, got, 2)
	require.Equal(t, piece+piece+"end", got[0].Text, "the pieces joined, without their timestamps")
	require.Equal(t, "2026 is a year", got[1].Text, "a new line keeps what looks like a time")
}

// logImage is the demo image these tests use: its own tag, since the demo
// app's log modes are newer than some berth-demo:v1 another checkout of
// the repository may build on the same engine meanwhile.
const logImage = "logs"

// createLogging makes a container of the demo image logImage and removes
// it at cleanup.
func createLogging(t *testing.T, c *Client, instance string, env map[string]string) string {
	t.Helper()
	id, err := c.Create(context.Background(), CreateOptions{App: "dockertest", Instance: instance, Generation: 1, Term: 1,
		Image: testrig.DemoImage(t, logImage), Env: env, Port: testrig.DemoPort, Memory: 64 << 20, StopSignal: "SIGTERM", StopGrace: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
	return id
}

// logsOf reads a container's whole log.
func logsOf(t *testing.T, c *Client, id string, o LogOptions) []LogLine {
	t.Helper()
	var out []LogLine
	require.NoError(t, c.Logs(context.Background(), id, o, func(l LogLine) error { out = append(out, l); return nil }))
	return out
}

func TestLogsOfARealContainer(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	inst := fmt.Sprintf("g%d", time.Now().UnixNano()%1e9)
	id := createLogging(t, c, inst, map[string]string{"DEMO_LOG_LINES": "50", "DEMO_ACCESS_LOG": "1"})
	require.NoError(t, c.Start(ctx, id))
	ct, err := c.Inspect(ctx, id)
	require.NoError(t, err)
	testrig.WaitHTTP(t, "http://"+ct.Address+"/", 20*time.Second)

	var all []LogLine
	require.Eventually(t, func() bool {
		var ls []LogLine
		err := c.Logs(ctx, id, LogOptions{Tail: -1}, func(l LogLine) error { ls = append(ls, l); return nil })
		if err != nil || len(ls) == 0 || ls[len(ls)-1].Text != "GET / 200 instance="+inst {
			return false
		}
		all = ls
		return true
	}, 20*time.Second, 20*time.Millisecond, "the access log line of the request")
	require.Len(t, all, 52)
	var stdout, stderr []LogLine
	for _, l := range all[:51] { // stdout and stderr are two pipes: Docker may read either first
		if l.Stderr {
			stderr = append(stderr, l)
		} else {
			stdout = append(stdout, l)
		}
	}
	require.Len(t, stderr, 1)
	require.Contains(t, stderr[0].Text, "start instance="+inst, "the start line is stderr")
	for i, l := range stdout {
		require.True(t, strings.HasPrefix(l.Text, fmt.Sprintf("line %d of 50 from %s ", i+1, inst)), l.Text)
		require.Len(t, l.Text, 99)
	}
	// Docker stamps each line as it reads it from its pipe, one reader per
	// stream: the lines of one stream are in time order, but a stderr line
	// may be stored after a stdout line stamped later (CI once).
	last := map[bool]time.Time{}
	for _, l := range all {
		require.False(t, l.Time.IsZero())
		require.False(t, l.Time.Before(last[l.Stderr]), "each stream in the order Docker received it")
		last[l.Stderr] = l.Time
	}

	tail := logsOf(t, c, id, LogOptions{Tail: 1})
	require.Equal(t, all[51:], tail)
	since := logsOf(t, c, id, LogOptions{Tail: -1, Since: all[40].Time})
	atOrAfter := 0
	for _, l := range all {
		if !l.Time.Before(all[40].Time) {
			atOrAfter++
		}
	}
	require.Equal(t, atOrAfter, len(since), "since keeps the lines at and after it")
	require.Less(t, len(since), len(all), "and skips those before")
	for _, l := range since {
		require.False(t, l.Time.Before(all[40].Time))
	}

	// A follow sees a line written after it started, and ends with ctx.
	fctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var followed []string
	done := make(chan error, 1)
	go func() {
		done <- c.Logs(fctx, id, LogOptions{Tail: 0, Follow: true}, func(l LogLine) error {
			mu.Lock()
			followed = append(followed, l.Text)
			mu.Unlock()
			return nil
		})
	}()
	seen := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(followed) > 0
	}
	// The follow may attach after a request: each try makes another.
	for deadline := time.Now().Add(20 * time.Second); !seen(); time.Sleep(50 * time.Millisecond) { // the poll interval
		require.True(t, time.Now().Before(deadline), "the follow never saw a request's line")
		testrig.WaitHTTP(t, "http://"+ct.Address+"/", 20*time.Second)
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	mu.Lock()
	require.Equal(t, "GET / 200 instance="+inst, followed[0])
	mu.Unlock()

	require.NoError(t, c.Remove(ctx, id))
	require.ErrorIs(t, c.Logs(ctx, id, LogOptions{Tail: -1}, func(LogLine) error { return nil }), ErrNotFound)
}

// TestLogsJoinsLongLines: Docker splits a line longer than 16 KiB into
// messages with a timestamp each; Logs joins them, and cuts a line at
// MaxLogLine.
func TestLogsJoinsLongLines(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	inst := fmt.Sprintf("j%d", time.Now().UnixNano()%1e9)
	id := createLogging(t, c, inst, map[string]string{"DEMO_MODE": "log", "DEMO_LOG_LINES": "3", "DEMO_LOG_LINE_BYTES": "40000"})
	require.NoError(t, c.Start(ctx, id))
	require.Eventually(t, func() bool {
		ct, err := c.Inspect(ctx, id)
		return err == nil && !ct.Running
	}, time.Minute, 20*time.Millisecond)
	var stdout []LogLine
	for _, l := range logsOf(t, c, id, LogOptions{Tail: -1}) {
		if !l.Stderr {
			stdout = append(stdout, l)
		}
	}
	require.Len(t, stdout, 3)
	for i, l := range stdout {
		head := fmt.Sprintf("line %d of 3 from %s ", i+1, inst)
		require.True(t, strings.HasPrefix(l.Text, head), l.Text[:80])
		require.Len(t, l.Text, 39999)
		require.Equal(t, len(l.Text)-len(head), strings.Count(l.Text, "x"), "no timestamp inside")
	}

	id = createLogging(t, c, inst+"c", map[string]string{"DEMO_MODE": "log", "DEMO_LOG_LINES": "1", "DEMO_LOG_LINE_BYTES": "100000"})
	require.NoError(t, c.Start(ctx, id))
	require.Eventually(t, func() bool {
		ct, err := c.Inspect(ctx, id)
		return err == nil && !ct.Running
	}, time.Minute, 20*time.Millisecond)
	stdout = nil
	for _, l := range logsOf(t, c, id, LogOptions{Tail: -1}) {
		if !l.Stderr {
			stdout = append(stdout, l)
		}
	}
	require.Len(t, stdout, 1)
	require.Len(t, stdout[0].Text, MaxLogLine, "cut at MaxLogLine")
	require.True(t, strings.HasPrefix(stdout[0].Text, "line 1 of 1 from "))
	// Docker's tail counts its messages, not lines: a tail of 1 is the
	// last of the long line's pieces (or the stderr start line, which
	// Docker may read after them: two pipes), never the whole line.
	last := logsOf(t, c, id, LogOptions{Tail: 1})
	require.Len(t, last, 1)
	require.Less(t, len(last[0].Text), 16384)
}

// TestLogLimitsHoldAFloodedLog: a container that writes 200 MB to stdout
// keeps at most max-files x max-size of log on the host (the defaults:
// 3 x 10m), one line over per file at most (json-file rotates after the
// write that crosses max-size).
func TestLogLimitsHoldAFloodedLog(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	id := createLogging(t, c, fmt.Sprintf("f%d", time.Now().UnixNano()%1e9), map[string]string{"DEMO_MODE": "log", "DEMO_LOG_LINES": "2000000"})
	require.NoError(t, c.Start(ctx, id))
	require.Eventually(t, func() bool {
		ct, err := c.Inspect(ctx, id)
		return err == nil && !ct.Running
	}, 3*time.Minute, 100*time.Millisecond, "the flood (2,000,000 lines of 100 bytes) ends")
	ct, err := c.Inspect(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 0, ct.ExitCode)

	out, err := exec.Command("docker", "inspect", "--format", "{{.LogPath}}|{{json .HostConfig.LogConfig}}", id).CombinedOutput()
	require.NoError(t, err, "%s", out)
	path, cfg, _ := strings.Cut(strings.TrimSpace(string(out)), "|")
	require.JSONEq(t, `{"Type":"json-file","Config":{"max-file":"3","max-size":"10485760"}}`, cfg)
	files, err := filepath.Glob(path + "*")
	require.NoError(t, err)
	var total int64
	for _, f := range files {
		st, err := os.Stat(f)
		require.NoError(t, err)
		total += st.Size()
	}
	t.Logf("200 MB written, %d bytes kept in %d files", total, len(files))
	require.Len(t, files, 3, "the current file and two rotations: %v", files)
	require.LessOrEqual(t, total, int64(30<<20+3*1024), "at most 3 x 10m (one line over per file)")
	require.Greater(t, total, int64(20<<20), "the log filled its files: the cap, not a short write, bounded it")
	last := logsOf(t, c, id, LogOptions{Tail: 1})
	require.Len(t, last, 1)
	require.True(t, strings.HasPrefix(last[0].Text, "line 2000000 of 2000000 "), "the newest lines are the ones kept: %s", last[0].Text)
}

func TestCreateSetsTheSpecsLogLimits(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	c.o.LogMaxSize, c.o.LogMaxFiles = 5<<20, 4 // --log-max-size 5m --log-max-files 4
	for _, tt := range []struct {
		name    string
		logging *spec.Logging
		want    string
	}{
		{"the scheduler's defaults", nil, `{"max-file":"4","max-size":"5242880"}`},
		{"the spec's size, the default count", &spec.Logging{MaxSize: 2 << 20}, `{"max-file":"4","max-size":"2097152"}`},
		{"the spec's", &spec.Logging{MaxSize: 1 << 30, MaxFiles: 1}, `{"max-file":"1","max-size":"1073741824"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id, err := c.Create(context.Background(), CreateOptions{App: "dockertest", Instance: fmt.Sprintf("s%d", time.Now().UnixNano()%1e9),
				Image: testrig.DemoImage(t, logImage), Port: testrig.DemoPort, Logging: tt.logging})
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
			out, err := exec.Command("docker", "inspect", "--format", "{{json .HostConfig.LogConfig}}", id).CombinedOutput()
			require.NoError(t, err, "%s", out)
			var lc struct {
				Type   string
				Config json.RawMessage
			}
			require.NoError(t, json.Unmarshal(out, &lc))
			require.Equal(t, "json-file", lc.Type, "whatever the engine's default driver")
			require.JSONEq(t, tt.want, string(lc.Config))
		})
	}
}
