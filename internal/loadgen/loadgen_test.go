package loadgen

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// until waits until the run's counts so far satisfy ok.
func until(t *testing.T, run *Run, ok func(Result) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return ok(run.Snapshot()) }, 10*time.Second, time.Millisecond, "counts: %s", run.Snapshot())
}

func TestCountsEveryOutcome(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "app.test", r.Host)
		if n.Add(1)%10 == 0 {
			http.Error(w, "boom", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"version":"v1"}`)
	}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, Host: "app.test", Workers: 3, Rate: 300})
	until(t, run, func(r Result) bool { return r.Requests >= 100 })
	res := run.Stop()
	require.Equal(t, n.Load(), res.Requests, "every request the server saw is counted")
	require.Equal(t, res.Requests, res.OK+res.Non2xx+res.Errors)
	require.Equal(t, res.Requests/10, res.Non2xx)
	require.Equal(t, res.OK, res.Versions["v1"])
	require.Equal(t, int64(3), res.Conns, "one kept-alive connection per worker")
	// The cap is an upper bound (a busy machine only sends fewer): 300/s,
	// and each worker's first request at once.
	require.LessOrEqual(t, float64(res.Requests), 300*res.Duration.Seconds()+3, "the rate cap holds: %s", res)
	require.ErrorIs(t, Check(res), ErrFailed)
	require.Contains(t, res.String(), "503 boom")
	require.Equal(t, res, run.Stop(), "Stop is idempotent")
}

func TestRefusedConnectionsAreErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	run := Start(context.Background(), Config{URL: "http://" + addr + "/", Workers: 2, Rate: 100})
	until(t, run, func(r Result) bool { return r.Requests >= 4 })
	res := run.Stop()
	require.Positive(t, res.Errors)
	require.Equal(t, res.Requests, res.Errors)
	require.Contains(t, res.String(), "connection refused")
}

func TestCleanRunPassesCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, Workers: 2})
	until(t, run, func(r Result) bool { return r.OK >= 10 })
	res := run.Stop()
	require.Positive(t, res.OK)
	require.NoError(t, Check(res))
}

// closingServer answers the first request of every connection and closes
// the connection on the second without an answer: the race of a client
// reusing a kept-alive connection just as nginx closes it in a reload. (A
// connection closed while idle costs nothing: net/http sees the EOF and
// dials anew before sending.) It checks every request is a plain GET and
// returns how many requests it read.
func closingServer(t *testing.T) (url string, seen *atomic.Int64) {
	t.Helper()
	type connKey struct{}
	seen = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		if r.Method != http.MethodGet || r.ContentLength != 0 || len(r.TransferEncoding) > 0 || r.Header.Get("Content-Length") != "" {
			t.Errorf("not a plain GET: %s, content length %d, transfer encoding %v", r.Method, r.ContentLength, r.TransferEncoding)
		}
		if r.Context().Value(connKey{}).(*atomic.Int64).Add(1) == 1 {
			fmt.Fprint(w, "ok")
			return
		}
		c, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		c.Close()
	}))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, new(atomic.Int64))
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, seen
}

// Against a server that closes a kept-alive connection instead of answering
// its second request, net/http retries the GET on a new connection, as a
// browser does, and the run counts it as retried, not failed; with NoRetry
// nothing is sent twice and each such request is an error, as wrk counts it.
func TestClosedKeepAlive(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		noRetry bool
		check   func(t *testing.T, res Result, seen int64)
	}{
		{"retried by default", false, func(t *testing.T, res Result, seen int64) {
			require.Zero(t, res.Failed(), res.String())
			require.Positive(t, res.Retried)
			require.GreaterOrEqual(t, res.Retried, res.Requests-2, "all but the first request or so were retried")
			require.Equal(t, res.Requests+res.Retried, seen, "each retried request reached the server twice")
		}},
		{"failed with NoRetry", true, func(t *testing.T, res Result, seen int64) {
			require.Zero(t, res.Retried, res.String())
			require.Equal(t, res.Requests, seen, "no request reached the server twice")
			require.Equal(t, res.Requests, res.OK+res.Errors, res.String())
			require.GreaterOrEqual(t, res.Errors, res.Requests/2-1, "every second request was lost")
			require.Equal(t, res.Errors, res.ReusedErrors, "every one on a reused connection")
			require.Equal(t, res.OK, res.Conns, "one answer per connection")
			require.ErrorIs(t, Check(res), ErrFailed)
			require.Contains(t, res.String(), "EOF")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url, seen := closingServer(t)
			run := Start(context.Background(), Config{URL: url, Workers: 1, Rate: 50, NoRetry: tc.noRetry})
			until(t, run, func(r Result) bool { return r.Requests >= 8 })
			res := run.Stop()
			t.Log(res)
			require.GreaterOrEqual(t, res.Requests, int64(8))
			tc.check(t, res, seen.Load())
		})
	}
}

// NoRetry changes nothing for a server that keeps its connections.
func TestNoRetryCleanRun(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			t.Errorf("not a plain GET: content length %d, transfer encoding %v", r.ContentLength, r.TransferEncoding)
		}
		fmt.Fprint(w, `{"version":"v1"}`)
	}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, Workers: 2, Rate: 200, NoRetry: true})
	until(t, run, func(r Result) bool { return r.OK >= 20 })
	res := run.Stop()
	require.NoError(t, Check(res))
	require.Positive(t, res.OK)
	require.Equal(t, res.OK, res.Versions["v1"])
	require.Equal(t, int64(2), res.Conns, "one kept-alive connection per worker")
}
